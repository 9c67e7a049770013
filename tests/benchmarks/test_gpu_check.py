"""benchmarks/gpu_check.sh, the first thing to run on a GPU machine: its CPU half (the artifacts, the
TensorRT readiness check, and parity under the engines' tolerances) runs here with --preflight, so
the script cannot drift from the command line unnoticed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
SAMPLES = ROOT / "evaluation" / "samples" / "sentences.txt"


def _run(*args, **env):
    env = {**os.environ, "ENGINEWRIGHT": str(Path(sys.executable).parent / "enginewright"), **env}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env)


def test_refuses_in_one_line_without_a_gpu(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the script would run")
    r = _run(str(tmp_path / "run"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--preflight" in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()
    r = _run("--bogus")
    assert r.returncode == 2 and "usage" in r.stderr
    r = _run("--preflight", str(tmp_path / "run"), ENGINEWRIGHT=str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "run make install first" in r.stderr and r.stderr.strip().count("\n") == 0


@pytest.mark.real_model
def test_preflight_makes_checks_and_compares_what_the_gpu_run_builds(tmp_path):
    run = tmp_path / "run"
    r = _run("--preflight", str(run), CALIB=str(SAMPLES), EVAL=str(SAMPLES))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "ready (0 errors" in r.stdout and "NOT ready" not in r.stdout
    for name, gate in (("fp16", "min_cosine"), ("int8", "min_pooled_cosine")):
        report = json.loads((run / f"compare-{name}" / "report.json").read_text())
        (out,) = report["candidates"][0]["outputs"]
        assert report["passed"] and out["tolerance"][gate] is not None
    q = json.loads((run / "onnx-int8" / "manifest.json").read_text())["quantization"]
    assert q["float_nodes"] and q["cosine_loss"] <= 0.01  # the searched recipe, as the engines get it
