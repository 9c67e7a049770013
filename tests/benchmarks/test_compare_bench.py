import json
import shutil

import pytest

from evaluation.compare import CompareConfig, run_compare
from evaluation.data import load_texts
from evaluation.report import write_report
from benchmarks.throughput import BenchConfig, bench_markdown, run_bench
from runtimes.errors import UsageError


def test_compare_passes_for_a_faithful_export(tiny_bert, tiny_onnx):
    outcome = run_compare(tiny_bert, [tiny_onnx], load_texts(None), config=CompareConfig(batch_size=8), progress=False)
    assert outcome.passed, outcome.markdown()
    cand = outcome.report["candidates"][0]
    assert cand["runtime"] == "onnxruntime:cpu" and cand["padded_positions_excluded"] > 0
    assert outcome.report["schema_version"] == 1 and outcome.report["data"]["rows"] == len(load_texts(None))


def test_compare_reports_the_task_metric_for_labelled_data(tiny_classifier, tiny_classifier_onnx, labelled_jsonl):
    outcome = run_compare(tiny_classifier, [tiny_classifier_onnx], load_texts(labelled_jsonl), progress=False)
    ref = outcome.report["reference"]["task_metric"]
    cand = outcome.report["candidates"][0]["task_metric"]
    assert ref["rows"] == 12 and ref == cand
    assert outcome.report["candidates"][0]["outputs"][0]["top1"] == 1.0
    assert "## Task metric" in outcome.markdown() and "accuracy" in outcome.markdown()


def test_compare_fails_for_a_different_model(tiny_bert, tiny_onnx, tmp_path):
    from tests.conftest import make_tiny_bert

    other = make_tiny_bert(tmp_path / "other", seed=1)
    outcome = run_compare(tiny_bert, [other, tiny_onnx], load_texts(None), progress=False)
    assert not outcome.passed
    assert [bool(r) for r in outcome.results] == [False, True]


def test_labels_unknown_to_the_model_are_a_usage_error(tiny_classifier, tiny_classifier_onnx, tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"text": "hello", "label": "sports"}) + "\n")
    with pytest.raises(UsageError, match="label 'sports' is not one of the model's labels"):
        run_compare(tiny_classifier, [tiny_classifier_onnx], load_texts(p), progress=False)


def test_bench_fixed_shapes_interleaves_and_records(tiny_bert, tiny_onnx, tmp_path):
    cfg = BenchConfig(batches=(1, 2), seqs=(16,), iters=4, rounds=2, warmup=1, threads=1)
    report = run_bench([tiny_bert, tiny_onnx], load_texts(None), config=cfg, progress=False)
    rows = report["results"]
    assert [(r["runtime"], r["batch"]) for r in rows] == [("torch:cpu", 1), ("onnxruntime:cpu", 1),
                                                          ("torch:cpu", 2), ("onnxruntime:cpu", 2)]
    for r in rows:
        assert r["iters"] == 4 and r["p50_ms"] > 0 and r["p50_ms"] <= r["p99_ms"]
        assert r["tokens_per_s"] == pytest.approx(r["samples_per_s"] * 16)
    assert rows[0]["speedup_vs_baseline"] == 1.0
    order = report["execution_order"][0]["rounds"]
    assert order[0] == list(reversed(order[1])) and len(order[0]) == 2
    assert report["machine"]["logical_cores"] >= 1 and report["peak_rss_mb"] > 0
    assert all(x["settings"]["threads"] == 1 for x in report["runners"])
    out = write_report(tmp_path / "bench", report, bench_markdown(report))
    assert json.loads((out / "report.json").read_text())["kind"] == "bench"
    assert "| runner" in (out / "report.md").read_text()


def test_bench_natural_lengths_and_several_runtimes(tiny_onnx):
    cfg = BenchConfig(batches=(4,), seqs=(32,), iters=3, rounds=1, warmup=0, natural=True)
    report = run_bench([tiny_onnx], load_texts(None), runtimes=["onnxruntime:cpu"], config=cfg, progress=False)
    (row,) = report["results"]
    assert row["seq"] == "natural" and row["real_tokens_per_s"] <= row["tokens_per_s"]


def test_bench_refuses_a_runtime_that_cannot_run_the_artifact(tiny_onnx):
    with pytest.raises(UsageError, match="none of the runtimes \\['torch'\\]"):
        run_bench([tiny_onnx], load_texts(None), runtimes=["torch"], config=BenchConfig(iters=1), progress=False)


def test_onnx_without_tokenizer_borrows_the_references(tiny_bert, tiny_onnx, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tiny_onnx / "model.onnx", bare / "model.onnx")
    outcome = run_compare(tiny_bert, [bare], load_texts(None), progress=False)
    assert outcome.passed
    with pytest.raises(UsageError, match="holds tokenizer files"):
        run_bench([bare], load_texts(None), config=BenchConfig(iters=1), progress=False)


def test_bench_report_has_a_latency_plot_and_html(tiny_onnx, tmp_path):
    cfg = BenchConfig(batches=(1, 2), seqs=(8,), iters=2, rounds=1, warmup=0)
    report = run_bench([tiny_onnx], load_texts(None), config=cfg, progress=False)
    out = write_report(tmp_path / "b", report, bench_markdown(report))
    assert (out / "latency.png").stat().st_size > 1000
    assert "![latency against batch size](latency.png)" in (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert "<table>" in page and '<img alt="latency against batch size" src="latency.png">' in page


def test_head_to_head_pairs_rounds_and_respects_cosine():
    from benchmarks.quantization import head_to_head

    def row(name, rate, cos, rounds):
        return {"variant": name, "samples_per_s": rate, "cosine": cos, "by_round": rounds}

    rows = [row("PyTorch eager FP32 (baseline)", 40, 1.0, [40] * 6),
            row("fast but loose (ours)", 200, 0.95, [200] * 6),
            row("steady (ours)", 105, 0.992, [104, 108, 103, 99, 106, 105]),
            row("optimum a", 100, 0.991, [100, 101, 102, 100, 101, 100]),
            row("optimum b", 90, 0.999, [90] * 6),
            row("optimum fast but loose", 150, 0.95, [150] * 6)]
    h = head_to_head(rows)
    # loose artifacts win nothing on speed: Optimum's below the 0.99 goal, ours below Optimum's cosine
    assert h["ours"] == "steady (ours)" and h["peer"] == "optimum a"
    # 5 of 6 rounds ahead: p = 7/64 by the sign test, not enough to call it
    assert h["rounds_ahead"] == 5 and h["rounds"] == 6 and abs(h["sign_test_p_ahead"] - 7 / 64) < 1e-12
    assert h["verdict"] == "not separable"
    rows[2]["by_round"] = [110] * 6
    assert head_to_head(rows)["verdict"] == "ahead"  # p = 1/64
    rows[2]["by_round"] = [90] * 6
    assert head_to_head(rows)["verdict"] == "behind"
    rows[2]["cosine"] = 0.98
    assert head_to_head(rows)["ours"] is None


def test_duel_times_the_two_artifacts_in_paired_rounds(tiny_onnx, tmp_path):
    import shutil
    import types

    from evaluation.data import load_texts
    from benchmarks.quantization import duel

    other = tmp_path / "same-graph"
    shutil.copytree(tiny_onnx, other)
    h2h = {"ours": "a (ours)", "peer": "optimum b"}
    d = duel(h2h, {"a (ours)": tiny_onnx, "optimum b": other}, load_texts(None),
             types.SimpleNamespace(duel_rounds=4, duel_time=0.2))
    assert d["ours"] == "a (ours)" and d["rounds"] == 4 and len(d["round_ratios"]) == 4
    assert d["verdict"] in ("ahead", "behind", "not separable") and d["ratio"] > 0
    assert duel(h2h, {}, load_texts(None), types.SimpleNamespace(duel_rounds=0, duel_time=1)) is None


@pytest.mark.parametrize("kwargs, words", [
    ({"time_budget": float("nan")}, "--time must be a finite number"),
    ({"time_budget": float("inf")}, "--time must be a finite number"),
    ({"time_budget": 0.0}, "--time must be a finite number"),
    ({"rounds": 0}, "--rounds must be >= 1"),
])
def test_bench_settings_are_checked(kwargs, words):
    with pytest.raises(UsageError, match=words):
        BenchConfig(**kwargs)
