"""inspect --verify and the pipeline's step cache read the recorded sha256 of every listed file."""

import json
import shutil

from tests.cli.test_cli import run
from tests.cli.test_pipeline import _lines


def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def test_inspect_verify_reports_each_file_and_exits_1_on_a_change(capsys, tiny_onnx, tmp_path):
    d = tmp_path / "onnx"
    shutil.copytree(tiny_onnx, d)
    code, out, _ = run(capsys, "inspect", str(d), "--verify")
    assert code == 0 and "model.onnx: ok" in out and "verify: ok" in out
    _flip(d / "model.onnx")
    (d / "vocab.txt").unlink()
    code, out, err = run(capsys, "inspect", str(d), "--verify")
    assert code == 1 and not err.strip()
    assert "model.onnx: changed (sha256" in out and "vocab.txt: missing" in out and "tokenizer.json: ok" in out
    assert "FAILED, 2 of" in out
    code, out, _ = run(capsys, "inspect", str(d), "--verify", "--json")
    status = {f["file"]: f["status"] for f in json.loads(out)["verify"]}
    assert code == 1 and status["model.onnx"] == "changed" and status["vocab.txt"] == "missing"
    code, _, err = run(capsys, "inspect", str(d))  # without --verify the missing file is a load error
    assert code == 2 and "vocab.txt is missing" in err


def test_inspect_verify_without_a_file_table_says_there_is_nothing_to_verify(capsys, tiny_bert):
    code, out, _ = run(capsys, "inspect", str(tiny_bert), "--verify")
    assert code == 0 and "nothing to verify" in out


def test_the_step_cache_reruns_a_step_whose_output_changed(capsys, tiny_bert, tmp_path):
    pipe = tmp_path / "pipe.yaml"
    pipe.write_text(f"model: {tiny_bert}\nrun_dir: runs\nstages:\n  - export: {{task: feature-extraction}}\n")
    code, out, _ = run(capsys, "run", str(pipe), "-q")
    assert code == 0 and "running" in _lines(out)[0]
    (step,) = [d for d in (tmp_path / "runs").iterdir() if d.is_dir()]
    _flip(step / "model.onnx")  # same size: only the sha256 tells
    code, out, _ = run(capsys, "run", str(pipe), "-q")
    (line,) = _lines(out)
    assert code == 0 and "running" in line and "model.onnx: changed" in line
    code, out, _ = run(capsys, "run", str(pipe), "-q")
    assert code == 0 and "reused" in _lines(out)[0]
