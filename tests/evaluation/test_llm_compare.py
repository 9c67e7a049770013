"""compare for causal LMs on a tiny Llama and its ONNX export: the numbers, the gates, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from enginewright.cli import main
from evaluation.data import TextDataset
from evaluation.llm_compare import LlmCompareConfig, load_prompts, parse_share, run_llm_compare
from evaluation.llm_metrics import greedy_prefix
from runtimes.errors import UsageError

DATA = TextDataset(source="inline", texts=("the quick brown fox jumps over the lazy dog", "a small test",
                                           "numbers like 42 and words", "hello there, how are you"))


@pytest.fixture(scope="module")
def llama_onnx(tiny_llama, tmp_path_factory):
    from exporter import export_hf

    return export_hf(tiny_llama, tmp_path_factory.mktemp("llm_cmp") / "onnx", progress=False).path


def test_an_exact_export_agrees_everywhere(tiny_llama, llama_onnx):
    cfg = LlmCompareConfig(batch_size=2, max_new_tokens=6, max_ppl_increase=0.02, min_top1_agreement=0.99,
                           min_greedy_prefix=6)
    out = run_llm_compare(tiny_llama, [llama_onnx], DATA, config=cfg)
    c = out.report["candidates"][0]
    assert out.passed and c["top1_agreement"] == 1.0 and abs(c["ppl_change"]) < 1e-4 and c["kl_mean"] < 1e-8
    assert c["greedy_prefix_min"] == 6 and c["positions"] > 10
    assert out.report["reference"]["perplexity"] > 1 and "LLM comparison" in out.markdown()


def test_a_different_model_fails_the_gates_and_says_why(tiny_llama, tmp_path):
    from tests.conftest import make_tiny_lm

    other = make_tiny_lm(tmp_path / "other", "llama", seed=1)
    cfg = LlmCompareConfig(batch_size=4, max_new_tokens=6, max_ppl_increase=0.02, min_top1_agreement=0.99,
                           min_greedy_prefix=6)
    out = run_llm_compare(tiny_llama, [other], DATA, config=cfg)
    reasons = " ".join(out.report["candidates"][0]["reasons"])
    assert not out.passed and "top-1 agreement" in reasons and "greedy prefix" in reasons


def test_the_command_gates_with_exit_1_and_writes_junit(tiny_llama, llama_onnx, tmp_path, capsys):
    data = tmp_path / "d.txt"
    data.write_text("\n".join(DATA.texts) + "\n")
    argv = ["compare", str(tiny_llama), str(llama_onnx), "--data", str(data), "--max-new-tokens", "4", "-q",
            "--junit", str(tmp_path / "j.xml"), "-o", str(tmp_path / "rep")]
    assert main(argv + ["--max-ppl-increase", "2%"]) == 0
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["kind"] == "llm"
    assert "llm" in (tmp_path / "j.xml").read_text()
    from tests.conftest import make_tiny_lm

    other = make_tiny_lm(tmp_path / "other", "llama", seed=1)
    argv[2] = str(other)
    assert main(argv + ["--force", "--min-greedy-prefix", "4"]) == 1
    assert "compare FAILED" in capsys.readouterr().err
    assert 'failures="1"' in (tmp_path / "j.xml").read_text()


def test_bad_llm_input_is_one_line(tiny_llama, llama_onnx, tmp_path):
    empty = tmp_path / "p.txt"
    empty.write_text("\n\n")
    with pytest.raises(UsageError):
        load_prompts(empty)
    with pytest.raises(UsageError, match="--max-new-tokens 0"):
        LlmCompareConfig(max_new_tokens=0)
    with pytest.raises(UsageError, match="--min-greedy-prefix 9"):
        LlmCompareConfig(max_new_tokens=8, min_greedy_prefix=9)
    with pytest.raises(UsageError, match="KV cache"):
        run_llm_compare(tiny_llama, [llama_onnx], DATA, prompts=TextDataset(source="x", texts=("word " * 100,)),
                        config=LlmCompareConfig(max_new_tokens=60))
    assert parse_share("2%") == pytest.approx(0.02) and parse_share("0.5") == 0.5


def test_greedy_prefix_counts_leading_matches():
    ref = np.array([[1, 2, 3, 4], [1, 2, 3, 4]])
    assert greedy_prefix(ref, np.array([[1, 2, 9, 4], [1, 2, 3, 4]])).tolist() == [2, 4]
