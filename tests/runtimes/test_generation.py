"""The text-generation task and the generation loop, on tiny random Llama and GPT-2 models with PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

from runtimes import load_artifact, open_runner
from runtimes.errors import UsageError
from runtimes.generation import GenerationConfig, generate, pick
from runtimes.tasks import get_task, task_for_architectures
from runtimes.tasks.generation import PAST_DIM, positions

TASK = get_task("text-generation")


class Batch:
    def __init__(self, *texts):
        self.texts = texts


def test_causal_lm_architectures_mean_text_generation():
    assert task_for_architectures(["LlamaForCausalLM"]) == "text-generation"
    assert task_for_architectures(["GPT2LMHeadModel"]) == "text-generation"
    assert TASK.optimum_task == "text-generation-with-past" and TASK.auto_class == "AutoModelForCausalLM"
    # one profile over both phases: the past from empty to twice the longest prompt, less one
    assert TASK.profile_dims(None, (1, 2, 4), (1, 32, 64))[PAST_DIM] == (0, 32, 127)


def test_positions_count_real_tokens_of_a_left_padded_batch():
    mask = np.array([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert positions(mask).tolist() == [[1, 1, 0, 1], [0, 1, 2, 3]]
    assert positions(np.concatenate([mask, [[1], [1]]], 1), past=4).tolist() == [[2], [4]]


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_tokenizer_pads_left_and_the_torch_runner_speaks_the_kv_contract(fixture, request):
    path = request.getfixturevalue(fixture)
    tok = TASK.load_processor(path)
    enc = TASK.encode(tok, Batch("the quick brown fox", "a"))
    assert enc["attention_mask"][1, 0] == 0 and enc["attention_mask"][1, -1] == 1
    with open_runner(load_artifact(path), "torch:cpu") as runner:
        names = [s.name for s in runner.input_specs()]
        assert names[:3] == ["input_ids", "attention_mask", "position_ids"] and "past_key_values.1.value" in names
        out = runner.infer(TASK.feeds_for(enc, runner.input_specs(), "test"))
    assert out["logits"].shape[:2] == enc["input_ids"].shape
    assert out["present.0.key"].shape[2] == enc["input_ids"].shape[1]


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_a_left_padded_batch_generates_what_each_prompt_does_alone(fixture, request):
    path = request.getfixturevalue(fixture)
    tok = TASK.load_processor(path)
    with open_runner(load_artifact(path), "torch:cpu") as runner:
        both = generate(runner, TASK.encode(tok, Batch("the quick brown fox jumps", "hello")), GenerationConfig(max_new_tokens=6))
        alone = generate(runner, TASK.encode(tok, Batch("hello")), GenerationConfig(max_new_tokens=6))
        sampled = [generate(runner, TASK.encode(tok, Batch("hello")), GenerationConfig(
            max_new_tokens=4, do_sample=True, top_k=10, top_p=0.9, seed=3)).tokens.tolist() for _ in range(2)]
    assert both.tokens.shape == (2, 6) and both.tokens[1].tolist() == alone.tokens[0].tolist()
    assert sampled[0] == sampled[1]
    assert both.first_token_s > 0 and len(both.step_s) == 5


def test_generation_stops_on_eos_and_pads_after_it(tiny_gpt2):
    tok = TASK.load_processor(tiny_gpt2)
    with open_runner(load_artifact(tiny_gpt2), "torch:cpu") as runner:
        free = generate(runner, TASK.encode(tok, Batch("hello")), GenerationConfig(max_new_tokens=6))
        eos = int(free.tokens[0, 1])
        stopped = generate(runner, TASK.encode(tok, Batch("hello")),
                           GenerationConfig(max_new_tokens=6, eos_token_ids=(eos,)))
    assert stopped.lengths.tolist() == [list(free.tokens[0]).index(eos) + 1]
    assert stopped.tokens.shape[1] == stopped.lengths[0]


def test_bad_generation_settings_are_one_line_errors(tiny_gpt2):
    with pytest.raises(UsageError, match="--max-new-tokens 0"):
        GenerationConfig(max_new_tokens=0)
    tok = TASK.load_processor(tiny_gpt2)
    with open_runner(load_artifact(tiny_gpt2), "torch:cpu") as runner, pytest.raises(UsageError, match="KV cache of"):
        generate(runner, TASK.encode(tok, Batch("hello")), GenerationConfig(max_new_tokens=200), max_positions=128)


def test_pick_is_greedy_by_default_and_top_k_one_is_greedy():
    logits = np.array([[0.1, 3.0, 0.2], [2.0, 0.0, 1.0]], dtype=np.float32)
    rng = np.random.default_rng(0)
    assert pick(logits, GenerationConfig(), rng).tolist() == [1, 0]
    assert pick(logits, GenerationConfig(do_sample=True, top_k=1), rng).tolist() == [1, 0]
    assert pick(logits, GenerationConfig(do_sample=True, top_p=0.01), rng).tolist() == [1, 0]
