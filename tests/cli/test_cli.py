"""The command line as a user meets it: exit codes and one-line errors."""

import json
import shutil
import subprocess
import sys

import pytest

from enginewright.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, *words: str) -> None:
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], lines[0]


def test_help_lists_the_subcommands():
    out = subprocess.run([sys.executable, "-m", "enginewright", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("export", "compare", "bench"):
        assert cmd in out


def test_export_compare_bench_end_to_end(capsys, tiny_bert, tmp_path):
    code, out, _ = run(capsys, "export", str(tiny_bert), "-o", str(tmp_path / "onnx"), "-q")
    assert code == 0 and "parity last_hidden_state" in out
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert manifest["command"].startswith("enginewright export")
    code, out, _ = run(capsys, "compare", str(tiny_bert), str(tmp_path / "onnx"), "-o", str(tmp_path / "cmp"), "-q",
                       "--atol", "1e-4", "--atol", "last_hidden_state=2e-4")
    assert code == 0 and "PASS" in out
    report = json.loads((tmp_path / "cmp" / "report.json").read_text())
    assert report["candidates"][0]["outputs"][0]["tolerance"]["atol"] == 2e-4
    code, _, err = run(capsys, "compare", str(tiny_bert), str(tmp_path / "onnx"), "-q", "--min-pooled-cosine",
                       "last_hidden_states=0.999")  # misspelt: must not drop the gate silently
    assert code == 2
    one_line_error(err, "'last_hidden_states'", "does not produce", "last_hidden_state")
    code, out, _ = run(capsys, "bench", str(tiny_bert), str(tmp_path / "onnx"), "--batch", "1,2", "--seq", "8",
                       "--iters", "2", "--rounds", "1", "--warmup", "0", "-o", str(tmp_path / "bench"), "-q")
    assert code == 0 and (tmp_path / "bench" / "report.md").is_file() and "samples/s" in out


def test_parity_failure_exits_1(capsys, tiny_bert, tmp_path):
    from tests.conftest import make_tiny_bert

    other = make_tiny_bert(tmp_path / "other", seed=7)
    code, out, err = run(capsys, "compare", str(tiny_bert), str(other), "-q", "-o", str(tmp_path / "r"))
    assert code == 1 and "FAIL" in out and "compare FAILED" in err and "FAIL parity" in err
    assert json.loads((tmp_path / "r" / "report.json").read_text())["passed"] is False
    loose = ["compare", str(tiny_bert), str(other), "-q", "--atol", "1e9", "--min-cosine", "-1"]
    assert run(capsys, *loose)[0] == 0
    code, out, _ = run(capsys, *loose, "--min-pooled-cosine", "0.999")
    assert code == 1 and "mean pooled cosine" in out and "pooled cos 0.999" in out


def test_bad_inputs_exit_2_with_one_line(capsys, tiny_bert, tiny_onnx, tmp_path):
    cases = [
        (["export", str(tmp_path / "nope"), "-o", str(tmp_path / "o")], ["nope: no such directory"]),
        (["export", str(tmp_path), "-o", str(tmp_path / "o")], ["not a model directory"]),
        (["export", str(tiny_bert), "-o", str(tiny_onnx)], ["output already exists; pass --force"]),
        (["compare", str(tiny_bert), str(tiny_onnx), "--data", str(tmp_path / "missing.jsonl")], ["data file not found"]),
        (["bench", str(tiny_onnx), "--threads", "0"], ["--threads must be at least 1"]),
        (["bench", str(tiny_onnx), "--on", "tflite"], ["unknown runtime 'tflite'"]),
    ]
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "cols.jsonl").write_text('{"sentence": "hi"}\n')
    cases += [
        (["compare", str(tiny_bert), str(tiny_onnx), "--data", str(tmp_path / "empty.txt")], ["data file is empty"]),
        (["compare", str(tiny_bert), str(tiny_onnx), "--data", str(tmp_path / "cols.jsonl")], ["no column 'text'"]),
    ]
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_onnx, corrupt)
    (corrupt / "model.onnx").write_bytes(b"\x00garbage" * 100)
    cases.append((["compare", str(tiny_bert), str(corrupt), "-q"], ["corrupt", "cannot load this model"]))
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_bert, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    cases.append((["export", str(truncated), "-o", str(tmp_path / "o")], ["truncated", "transformers cannot load this model"]))
    cases.append((["compare", str(truncated), str(tiny_onnx), "-q"], ["transformers cannot load this model"]))
    for argv, words in cases:
        code, _, err = run(capsys, *argv)
        assert code == 2, (argv, err)
        one_line_error(err, *words)
    assert not (tmp_path / "o").exists()


def test_argparse_errors_exit_2_in_one_line(capsys, tiny_bert, tmp_path):
    for argv, words in ((["export", str(tiny_bert), "-o", str(tmp_path / "o"), "--task", "translation"], "invalid choice: 'translation'"),
                        (["bench", str(tiny_bert), "--batch", "1,x"], "--batch takes comma-separated integers"),
                        (["bench", str(tiny_bert), "--provider-option", "device_id=1"], "DEVICE:KEY=VALUE"),
                        (["frobnicate"], "invalid choice: 'frobnicate'")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        one_line_error(capsys.readouterr().err, words)


def test_provider_options_reach_the_onnxruntime_runner(capsys, tiny_bert, tiny_onnx, tmp_path):
    code, _, _ = run(capsys, "bench", str(tiny_bert), str(tiny_onnx), "--iters", "1", "--rounds", "1", "--warmup", "0",
                     "--batch", "1", "--seq", "8", "-q", "-o", str(tmp_path / "b"),
                     "--provider-option", "cpu:arena_extend_strategy=kSameAsRequested", "--provider-option", "cuda:device_id=1")
    assert code == 0
    runners = {r["runtime"]: r["settings"] for r in json.loads((tmp_path / "b" / "report.json").read_text())["runners"]}
    assert runners["onnxruntime:cpu"]["provider_options"] == {"arena_extend_strategy": "kSameAsRequested"}
    assert "provider_options" not in runners["torch:cpu"]


def test_existing_report_needs_force(capsys, tiny_bert, tiny_onnx, tmp_path):
    (tmp_path / "r").mkdir()
    code, _, err = run(capsys, "compare", str(tiny_bert), str(tiny_onnx), "-o", str(tmp_path / "r"), "-q")
    assert code == 2
    one_line_error(err, "output already exists")


def test_a_crash_exits_3_not_1(capsys, monkeypatch, tiny_onnx):
    """1 means a check failed and 2 bad input; a bug must not read as either in a CI job."""
    from enginewright import cli

    def crash(args, command):
        raise RuntimeError("boom")

    monkeypatch.setitem(cli.COMMANDS, "inspect", crash)
    code, _, err = run(capsys, "inspect", str(tiny_onnx))
    assert code == cli.INTERNAL_ERROR == 3
    assert "RuntimeError: boom" in err and "unexpected error" in err.strip().splitlines()[-1]

    def full(args, command):
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(cli.COMMANDS, "inspect", full)  # the machine, not a bug: one line, exit 2
    code, _, err = run(capsys, "inspect", str(tiny_onnx))
    assert code == 2
    one_line_error(err, "No space left on device")


def test_without_onnxruntime_commands_that_need_it_say_what_to_install(capsys, monkeypatch, tiny_onnx):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    code, _, err = run(capsys, "quantize", str(tiny_onnx), "-o", str(tiny_onnx.parent / "q"), "--mode", "dynamic", "-q")
    assert code == 2
    one_line_error(err, "onnxruntime is not installed", "make install", "EXTRAS=gpu,dev")
    assert run(capsys, "check", str(tiny_onnx))[0] == 0  # the TensorRT check needs no onnxruntime
    import builtins

    real_import = builtins.__import__

    def no_ort(name, *a, **k):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ort)  # compare needs it only to run the ONNX artifact
    code, _, err = run(capsys, "compare", str(tiny_onnx), str(tiny_onnx), "-q")
    assert code == 2
    one_line_error(err, "onnxruntime is not installed")
