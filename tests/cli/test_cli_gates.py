"""Regression gates and JUnit output for CI."""

import json
import xml.etree.ElementTree as ET

from tests.cli.test_cli import one_line_error, run

BENCH = ["--batch", "1", "--seq", "8", "--iters", "3", "--rounds", "1", "--warmup", "0", "-q"]


def test_bench_against_a_baseline(capsys, tiny_onnx, tmp_path):
    assert run(capsys, "bench", str(tiny_onnx), *BENCH, "-o", str(tmp_path / "base"))[0] == 0
    base = json.loads((tmp_path / "base" / "report.json").read_text())

    code, out, _ = run(capsys, "bench", str(tiny_onnx), *BENCH, "--baseline", str(tmp_path / "base"),
                       "--max-regression", "99%", "--junit", str(tmp_path / "ok.xml"))
    assert code == 0 and "1 passed, 0 failed" in out
    case = ET.parse(tmp_path / "ok.xml").getroot().find("testsuite/testcase")
    assert case.get("classname") == "enginewright.throughput" and case.find("failure") is None

    faster = json.loads(json.dumps(base))
    for r in faster["results"]:
        r["samples_per_s"] *= 100  # a baseline far faster than anything this run can do
    (tmp_path / "fast.json").write_text(json.dumps(faster))
    code, out, _ = run(capsys, "bench", str(tiny_onnx), *BENCH, "--baseline", str(tmp_path / "fast.json"),
                       "--junit", str(tmp_path / "bad.xml"))
    assert code == 1 and "FAIL throughput" in out
    assert ET.parse(tmp_path / "bad.xml").getroot().find("testsuite").get("failures") == "1"

    other = json.loads(json.dumps(faster))
    other["machine"]["cpu"] = "Some Other CPU"
    (tmp_path / "other.json").write_text(json.dumps(other))
    code, out, _ = run(capsys, "bench", str(tiny_onnx), *BENCH, "--baseline", str(tmp_path / "other.json"))
    assert code == 0 and "another machine" in out

    old = dict(base, schema_version=0)
    (tmp_path / "old.json").write_text(json.dumps(old))
    code, _, err = run(capsys, "bench", str(tiny_onnx), *BENCH, "--baseline", str(tmp_path / "old.json"))
    assert code == 2
    one_line_error(err, "schema_version 0")


def test_compare_writes_junit(capsys, tiny_bert, tiny_onnx, tmp_path):
    code, _, _ = run(capsys, "compare", str(tiny_bert), str(tiny_onnx), "-q", "--junit", str(tmp_path / "p.xml"))
    assert code == 0
    suite = ET.parse(tmp_path / "p.xml").getroot().find("testsuite")
    assert suite.get("tests") == "1" and suite.get("failures") == "0"
    assert suite.find("testcase").get("name").endswith("last_hidden_state")


def test_compare_fail_on_chooses_the_gating_checks(capsys, tiny_classifier, tmp_path, labelled_jsonl):
    from tests.conftest import make_tiny_bert

    other = make_tiny_bert(tmp_path / "other", task="text-classification", seed=5)
    argv = ["compare", str(tiny_classifier), str(other), "--data", str(labelled_jsonl), "-q"]
    code, out, err = run(capsys, *argv)  # different weights: parity fails
    assert code == 1 and "FAIL parity" in err
    assert run(capsys, *argv, "--fail-on", "none")[0] == 0
    code, out, _ = run(capsys, *argv, "--fail-on", "accuracy", "--max-accuracy-drop", "100", "--junit", str(tmp_path / "j.xml"))
    assert code == 0 and "accuracy gate" in out
    classes = {c.get("classname") for c in ET.parse(tmp_path / "j.xml").getroot().iter("testcase")}
    assert classes == {"enginewright.parity", "enginewright.accuracy"}
    code, _, err = run(capsys, *argv, "--fail-on", "speed")
    assert code == 2
    one_line_error(err, "--fail-on 'speed'")
    # a pooled-cosine gate where no output has tokens to pool would gate nothing: refused
    code, _, err = run(capsys, *argv, "--min-pooled-cosine", "0.9")
    assert code == 2
    one_line_error(err, "--min-pooled-cosine applies to token-level outputs", "has none (outputs: logits)")
    code, _, err = run(capsys, *argv, "--min-pooled-cosine", "logits=0.9")
    assert code == 2
    one_line_error(err, "logits is not a token-level output")


def test_a_baseline_that_matches_nothing_fails(capsys, tiny_onnx, tmp_path):
    assert run(capsys, "bench", str(tiny_onnx), *BENCH, "-o", str(tmp_path / "base"))[0] == 0
    code, out, _ = run(capsys, "bench", str(tiny_onnx), *BENCH[:1], "2", *BENCH[2:], "--baseline", str(tmp_path / "base"))
    assert code == 1 and "0 passed, 1 failed" in out and "nothing was compared" in out
