"""bench for causal LMs on the tiny Llama/GPT-2 fixtures: the report's fields, interleaving, IO binding, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.llm_bench import LlmBenchConfig, run_llm_bench
from enginewright.cli import main
from evaluation.data import TextDataset
from runtimes.errors import UsageError

PROMPTS = """the quick brown fox jumps over the lazy dog
a small test
numbers like 42 and words and more words
hello there, how are you"""
DATA = TextDataset(source="inline", texts=tuple(PROMPTS.splitlines()))


def test_the_report_counts_and_times_every_runner(tiny_llama, tiny_llama_onnx):
    cfg = LlmBenchConfig(batches=(1, 3), max_new_tokens=5, rounds=2, hf_generate=True, io_binding=True)
    report = run_llm_bench([tiny_llama, tiny_llama_onnx], DATA, config=cfg, progress=False)
    labels = [r["label"] for r in report["runners"]]
    assert len(labels) == 3 and labels[1].endswith("generate()") and "IO binding" in report["runners"][2]["loop"]
    assert report["execution_order"] == [labels, labels[1:] + labels[:1]]
    assert report["kind"] == "llm" and report["instruction_set"]
    for r in report["results"]:
        batches = -(-len(DATA.texts) // r["batch"])  # 4 prompts: 4 batches of 1, 2 of up to 3
        assert r["generations"] == 2 * batches
        assert r["new_tokens"] == 2 * len(DATA.texts) * 5 and r["decode_tokens"] == 2 * len(DATA.texts) * 4
        assert r["ttft_p50_ms"] > 0 and r["ttft_p90_ms"] >= r["ttft_p50_ms"] and r["itl_p99_ms"] >= r["itl_p50_ms"] > 0
        assert r["decode_tokens_per_s"] > 0 and r["prefill_tokens_per_s"] > 0 and r["peak_rss_mb"] > 0 and r["run_rss_growth_mb"] >= 0
        assert r["prompt_tokens"] > 0
    ref = [r for r in report["results"] if r["label"] == labels[0]]
    assert all(r["decode_speedup"] == 1.0 for r in ref)
    # per round: each round's own rate, which bracket the whole run's (paired comparisons use them)
    for r in report["results"]:
        rounds = r["decode_tokens_per_s_by_round"]
        assert len(rounds) == 2 and min(rounds) <= r["decode_tokens_per_s"] * (1 + 1e-9) and \
            max(rounds) >= r["decode_tokens_per_s"] * (1 - 1e-9)


def test_io_binding_generates_the_same_tokens_as_numpy_feeds(tiny_llama_onnx, tiny_llama):
    from runtimes import load_artifact
    from runtimes.generation import GenerationConfig, generate
    from runtimes.onnxrt.runner import OnnxRuntimeRunner
    from runtimes.tasks import get_task

    task = get_task("text-generation")
    enc = task.encode(task.load_processor(tiny_llama), DATA)  # left padding: rows of different lengths
    assert (enc["attention_mask"] == 0).any()
    with OnnxRuntimeRunner(load_artifact(tiny_llama_onnx)) as r:
        fast = generate(r, enc, GenerationConfig(max_new_tokens=6), io_binding=True)
        assert not r.prefers_kv_step  # on the CPU
        plain = generate(r, enc, GenerationConfig(max_new_tokens=6), io_binding=False)
    np.testing.assert_array_equal(fast.tokens, plain.tokens)


def test_the_command_routes_llms_and_writes_the_report(tiny_gpt2, tmp_path, capsys):
    data = tmp_path / "d.txt"
    data.write_text("\n".join(DATA.texts) + "\n")
    argv = ["bench", str(tiny_gpt2), "--data", str(data), "--batch", "1,2", "--max-new-tokens", "3", "--rounds", "1",
            "--no-hf-generate", "-q", "-o", str(tmp_path / "rep")]
    assert main(argv) == 0
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["kind"] == "llm" and {r["batch"] for r in report["results"]} == {1, 2}
    assert "TTFT p50 ms" in (tmp_path / "rep" / "report.md").read_text() and "instruction set" in capsys.readouterr().out


def test_limit_takes_the_first_prompts(tiny_gpt2, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(DATA.texts) + "\n")
    argv = ["bench", str(tiny_gpt2), "--prompts", str(prompts), "--limit", "2", "--batch", "1", "--max-new-tokens", "2",
            "--rounds", "1", "--warmup", "0", "--no-hf-generate", "-q", "-o", str(tmp_path / "rep")]
    assert main(argv) == 0
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert len(DATA.texts) > 2 and all(r["generations"] == 2 for r in report["results"])


@pytest.mark.parametrize("extra, message", [(["--max-new-tokens", "0"], "--max-new-tokens 0"),
                                            (["--max-new-tokens", "500"], "1 of them for the prompt); pass --max-new-tokens 127 or less"),
                                            (["--prompts", "EMPTY"], "empty"), (["--data", "EMPTY"], "empty"),
                                            (["--iters", "3"], "--iters"), (["--baseline", "x.json"], "x.json: baseline report not found")])
def test_bad_input_is_one_line_exit_2(tiny_gpt2, tmp_path, capsys, extra, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    extra = [str(empty) if x == "EMPTY" else x for x in extra]
    try:
        code = main(["bench", str(tiny_gpt2), "-q", *extra])
    except SystemExit as e:  # refused by the option's type, as argparse does
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_config_refuses_bad_settings():
    with pytest.raises(UsageError, match="--batch"):
        LlmBenchConfig(batches=(0,))
    with pytest.raises(UsageError, match="--rounds"):
        LlmBenchConfig(rounds=0)


def test_a_peer_loop_is_timed_beside_ours_and_makes_the_same_tokens(tiny_llama, tiny_llama_onnx):
    """benchmarks/llm_speed.py's peer: optimum's ORTModelForCausalLM.generate() on the same FP32
    export, interleaved with our loop; greedy tokens equal, so both did the same work."""
    from benchmarks.llm_bench import Peer, timed_hf_generate
    from benchmarks.llm_speed import optimum_peer
    from runtimes import load_artifact, open_runner
    from runtimes.generation import GenerationConfig, generate
    from runtimes.tasks import get_task

    peer = optimum_peer("optimum fp32", tiny_llama_onnx, 1)
    assert isinstance(peer, Peer)
    cfg = LlmBenchConfig(batches=(1,), max_new_tokens=4, rounds=2)
    report = run_llm_bench([tiny_llama_onnx], DATA, config=cfg, progress=False, peers=[peer])
    loops = {r["label"]: r["loop"] for r in report["runners"]}
    assert loops["optimum fp32"] == "optimum ORTModelForCausalLM.generate()"
    row = next(r for r in report["results"] if r["label"] == "optimum fp32")
    assert row["generations"] == 2 * len(DATA.texts) and row["decode_tokens_per_s"] > 0 and "decode_speedup" in row
    task = get_task("text-generation")
    enc = task.encode(task.load_processor(tiny_llama), type("B", (), {"texts": DATA.texts[:1]})())
    gen = GenerationConfig(max_new_tokens=6)
    with open_runner(load_artifact(tiny_llama_onnx), "onnxruntime:cpu") as runner:
        ours = generate(runner, enc, gen).tokens
    from optimum.onnxruntime import ORTModelForCausalLM

    model = ORTModelForCausalLM.from_pretrained(tiny_llama_onnx, use_cache=True, use_io_binding=False, local_files_only=True)
    assert np.array_equal(timed_hf_generate(model, enc, gen).tokens, ours)


def test_llm_speed_force_replaces_only_its_own_output(tmp_path, capsys):
    """--force on a directory the benchmark did not write, or on the --reuse run it reads, is one line
    and exit 2, before anything is built; the files stay."""
    from benchmarks.compression import run_main
    from benchmarks.llm_speed import main as speed_main

    data = tmp_path / "data"
    data.mkdir()
    (data / "quotes_topics_test.jsonl").write_text('{"text": "a", "label": "b"}\n')
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    earlier = tmp_path / "earlier"
    (earlier / "artifacts").mkdir(parents=True)
    for argv, words in [(["-o", str(mine), "--force"], "did not write"),
                        (["--reuse", str(earlier), "-o", str(earlier), "--force"], "is the input"),
                        (["--reuse", str(mine), "-o", str(tmp_path / "new")], "no artifacts/")]:
        assert run_main(speed_main, ["--data-dir", str(data), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert (mine / "notes.txt").read_text() == "keep" and (earlier / "artifacts").is_dir()
    assert not (tmp_path / "new").exists()


def test_llm_speed_verdict_names_the_fastest_accurate_artifact():
    from benchmarks.llm_speed import verdict

    assert "no artifact of ours is within the accuracy part" in verdict([])
    assert "met by `fast` at 5.50x" in verdict([(4.2, "slow"), (5.5, "fast")])
    assert "not met; the fastest of ours within the accuracy part is `b` at 4.90x" in verdict([(4.9, "b"), (3.1, "a")])
    assert "Fastest peer within the accuracy part: `p` at 6.10x" in verdict([(4.9, "b")], [(6.1, "p")])


def test_llm_speed_duel_takes_the_fastest_artifact_within_the_bar():
    from pathlib import Path

    from benchmarks.llm_speed import best_ours, duel_line

    arts = {n: Path(f"/a/{n}") for n in ("cpu", "gguf-int4", "gguf-int4-lm4", "gguf-int4-a4")}
    bench = {"runners": [{"artifact": str(p)} for p in arts.values()],
             "results": [{"decode_tokens_per_s": v} for v in (40.0, 70.0, 72.0, 90.0)]}
    row = {"ppl_change": 0.001, "continuation_top1": 0.99}
    cmp = {"candidates": [{"artifact": str(p), **row} for p in arts.values()]}
    assert best_ours(bench, cmp, arts) == "gguf-int4-a4"
    cmp["candidates"][3]["continuation_top1"] = 0.94  # the fastest misses the agreement bar
    assert best_ours(bench, cmp, arts) == "gguf-int4-lm4"
    cmp["candidates"] = [{**c, "ppl_change": 0.05} for c in cmp["candidates"]]
    assert best_ours(bench, cmp, arts) is None
    from benchmarks.quantization import paired_verdict

    line = duel_line({"ours": "a4", "peer": "llama.cpp", **paired_verdict([110.0] * 10 + [90.0] * 2, [100.0] * 12)})
    assert "ahead in 10 of 12 rounds" in line and line.endswith("ahead.")
    assert duel_line(None) == ""


def test_decode_duel_times_each_artifact_in_every_round(tiny_llama_onnx, tmp_path, capsys):
    from benchmarks.decode_duel import main as duel

    out = tmp_path / "duel.json"
    assert duel([str(tiny_llama_onnx), str(tiny_llama_onnx), "--rounds", "3", "--past", "5", "--steps", "4",
                 "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [len(r) for r in report["step_ms_by_round"]] == [3, 3] and min(map(min, report["step_ms_by_round"])) > 0
    (v,) = report["versus_first"]
    assert v["rounds"] == 3 and len(v["round_ratios"]) == 3 and v["verdict"] in ("ahead", "behind", "not separable")
    assert "faster in" in capsys.readouterr().out
    with pytest.raises(UsageError, match="not an LLM ONNX artifact"):
        duel([str(tiny_llama_onnx), str(tmp_path)])
    before = out.read_text()  # an existing report is kept unless --force
    with pytest.raises(UsageError, match="already exists; pass --force"):
        duel([str(tiny_llama_onnx), str(tiny_llama_onnx), "--rounds", "1", "-o", str(out)])
    assert out.read_text() == before
