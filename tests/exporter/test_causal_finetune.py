"""``finetune --task text-generation``: response-only loss, LoRA merged into plain weights, resume, export."""

import functools
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import exporter.causal_finetune as cf
from enginewright.cli import main
from exporter.causal_finetune import IGNORE, Pairs, encode_pair, encode_pairs, load_pairs, prompt_text, token_nll
from exporter.finetune import LoraSettings, finetune
from exporter.training import TrainConfig, collate
from runtimes.errors import UsageError
from runtimes.tasks import get_task
from tests.conftest import SAMPLES

TASK = get_task("text-generation")
CFG = TrainConfig(epochs=3, batch_size=8, lr=1e-2, max_length=64, patience=None, checkpoint_every=2)
ANSWER = "yes it is"  # the learnable pattern: every prompt gets the same answer


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    d = tmp_path_factory.mktemp("pairs")
    lines = SAMPLES.read_text().splitlines()
    for name, rows in (("train.jsonl", lines[:30]), ("eval.jsonl", lines[30:])):
        (d / name).write_text("".join(json.dumps({"prompt": t[:40], "response": ANSWER}) + "\n" for t in rows))
    return d


def _run(model, out, pairs, **kw):
    return finetune(model, out, train_data=pairs / "train.jsonl", eval_data=pairs / "eval.jsonl", task="text-generation",
                    **{"config": CFG, "lora": LoraSettings(r=4), "progress": False, **kw})


def test_only_response_tokens_are_scored(tiny_llama):
    import transformers

    tok = TASK.load_processor(tiny_llama)
    data = Pairs("mem", ("the cat sat on", "a longer prompt than the first one"), ("the mat", "ok"))
    enc = encode_pairs(tok, data, max_length=64)
    for i in range(2):
        head, tail = encode_pair(tok, data.prompts[i], data.responses[i])
        assert tail[-1] == tok.eos_token_id  # no chat template: response then EOS
        assert enc.features["input_ids"][i] == head + tail
        assert enc.labels[i] == [IGNORE] * len(head) + tail
    batch = collate(enc, [0, 1], tok.pad_token_id)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        total, count = token_nll(logits, batch["labels"])
        assert int(count) == sum(len(encode_pair(tok, p, r)[1]) for p, r in zip(data.prompts, data.responses))
        # transformers' own loss over the same labels: the same mean
        hf = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        assert float(total / count) == pytest.approx(float(hf), rel=1e-5)
        # what the model predicts for prompt (and padding) positions contributes nothing
        scored_from = batch["labels"][:, 1:] != IGNORE
        noisy = logits.clone()
        noisy[:, :-1][~scored_from] = torch.randn_like(noisy[:, :-1][~scored_from]) * 100
        assert torch.equal(token_nll(noisy, batch["labels"])[0], total)
        # the label of a prompt token is never read: putting a real id there changes nothing only while masked
        changed = batch["labels"].clone()
        changed[0, 2] = IGNORE
        assert torch.equal(token_nll(logits, changed)[0], total)
        changed[0, 2] = batch["input_ids"][0, 2]
        assert not torch.equal(token_nll(logits, changed)[0], total)


def test_the_chat_template_frames_prompt_and_response(tiny_llama, tmp_path):
    model = tmp_path / "chat"
    shutil.copytree(tiny_llama, model)
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    cfg["chat_template"] = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}{% endfor %}"
                            "{% if add_generation_prompt %}<assistant>{% endif %}")
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = TASK.load_processor(model)
    assert prompt_text(tok, "hi there") == "<user>hi there<|endoftext|><assistant>"
    head, tail = encode_pair(tok, "hi there", "fine")
    assert head == tok(prompt_text(tok, "hi there"))["input_ids"]  # as generation will encode it
    assert tok.decode(tail) == "fine<|endoftext|>" and tail[-1] == tok.eos_token_id


def test_lora_training_lowers_the_loss_and_merges_into_a_plain_model(tiny_llama, pairs, tmp_path, monkeypatch):
    import transformers

    probe = torch.tensor([encode_pair(TASK.load_processor(tiny_llama), "the cat", ANSWER)[0]])
    seen = {}

    cf_train = cf.train

    def wrapper(model, *args, **kw):  # the peft model's logits after training, before the merge
        result = cf_train(model, *args, **kw)
        with torch.no_grad():
            seen["logits"] = model.eval()(input_ids=probe).logits
        seen["type"] = type(model).__name__
        return result

    monkeypatch.setattr(cf, "train", wrapper)
    art = _run(tiny_llama, tmp_path / "ft", pairs)
    report = art.manifest["eval"]
    assert (art.kind, art.task, report["metric"]) == ("hf", "text-generation", "perplexity")
    assert report["after"]["loss"] < report["before"]["loss"] - 0.5, report
    assert report["after"]["perplexity"] == pytest.approx(np.exp(report["after"]["loss"]))
    assert report["tokens"] == 13 * len(TASK.load_processor(tiny_llama)(ANSWER)["input_ids"] + [0])
    assert [h["epoch"] for h in art.manifest["training"]["history"]] == [0, 1, 2, 3]
    assert not (tmp_path / "ft.ckpt").exists()

    weights = load_file(str(art.path / "model.safetensors"))
    assert not any("lora" in k for k in weights)
    base = load_file(str(tiny_llama / "model.safetensors"))
    assert set(weights) == set(base)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(weights[q], base[q])  # every linear layer of the blocks was adapted ...
    assert torch.equal(weights["model.embed_tokens.weight"], base["model.embed_tokens.weight"])  # ... not the embeddings
    merged = transformers.AutoModelForCausalLM.from_pretrained(str(art.path), local_files_only=True).eval()
    assert type(merged).__name__ == "LlamaForCausalLM" and seen["type"] == "PeftModelForCausalLM"
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=probe).logits, seen["logits"], atol=1e-4, rtol=1e-4)

    from exporter import export_hf

    onnx = export_hf(art.path, tmp_path / "onnx", progress=False)
    parity = onnx.manifest["parity"]
    assert onnx.task == "text-generation" and onnx.manifest["options"]["kv_cache"] is True
    assert parity["prefill_max_abs"] <= 1e-3 and parity["decode_max_abs"] <= 1e-3 and parity["top1_agreement"] >= 0.99


def test_resume_after_an_interrupt_gives_the_same_weights(tiny_llama, pairs, tmp_path, monkeypatch):
    full = _run(tiny_llama, tmp_path / "full", pairs, config=TrainConfig(**{**CFG.__dict__, "epochs": 2}))
    kw = {"config": TrainConfig(**{**CFG.__dict__, "epochs": 2})}
    calls = {"n": 0}

    def interrupt_at_step_5(model):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt

    original = cf.train
    monkeypatch.setattr(cf, "train", functools.partial(original, after_step=[interrupt_at_step_5]))
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_llama, tmp_path / "cut", pairs, **kw)
    assert not (tmp_path / "cut").exists()
    assert json.loads((tmp_path / "cut.ckpt" / "state.json").read_text())["global_step"] == 4
    with pytest.raises(UsageError, match="pass --resume"):
        _run(tiny_llama, tmp_path / "cut", pairs, **kw)
    monkeypatch.setattr(cf, "train", original)
    resumed = _run(tiny_llama, tmp_path / "cut", pairs, resume=True, **kw)
    assert resumed.manifest["training"]["resumed_from_step"] == 4
    assert resumed.manifest["eval"] == full.manifest["eval"]  # the before figures survive the interruption
    a, b = load_file(str(full.path / "model.safetensors")), load_file(str(resumed.path / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gpt2_trains_from_the_command_line(tiny_gpt2, pairs, tmp_path, capsys):
    code = main(["finetune", str(tiny_gpt2), "--task", "text-generation", "--lora", "--lora-r", "4",
                 "--train", str(pairs / "train.jsonl"), "--eval", str(pairs / "eval.jsonl"), "--epochs", "1",
                 "--batch-size", "8", "--lr", "1e-2", "--max-length", "64", "-o", str(tmp_path / "out"), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "response tokens" in out
    assert main(["inspect", str(tmp_path / "out")]) == 0
    assert "eval: perplexity" in capsys.readouterr().out
    weights = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert not any("lora" in k for k in weights)


@pytest.mark.parametrize("text, words", [
    ('{"prompt": "a"}\n', ("d.jsonl:1", "'response'")),
    ('{"prompt": "a", "response": "  "}\n', ("d.jsonl:1", "'response'")),
    ('{"question": "a", "answer": "b"}\n', ("d.jsonl:1", "'prompt'", "question")),
    ("\n\n", ("d.jsonl", "empty")),
    ('["a", "b"]\n', ("d.jsonl:1", "JSON object")),
])
def test_bad_pairs_name_the_file_and_field(tmp_path, text, words):
    (tmp_path / "d.jsonl").write_text(text)
    with pytest.raises(UsageError) as e:
        load_pairs(tmp_path / "d.jsonl")
    assert all(w in str(e.value) for w in words), str(e.value)


def test_a_response_cut_away_is_refused(tiny_llama):
    tok = TASK.load_processor(tiny_llama)
    with pytest.raises(UsageError, match=r"row 2's prompt takes \d+ tokens, so --max-length 8"):
        encode_pairs(tok, Pairs("d.jsonl", ("hi", "a prompt far longer than eight tokens"), ("ok", "ok")), 8)
