"""Interruptions and races, on real processes: SIGTERM and SIGKILL during export and quantize, and two
runs to one output. The previous output always survives; SIGTERM leaves nothing behind and says one
line; what SIGKILL leaves is swept by the next run of the same output."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from enginewright.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _hashes(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def _start(argv: list[str], tmpdir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmpdir)}
    return subprocess.Popen([sys.executable, "-m", "enginewright", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(proc: subprocess.Popen, parent: Path, prefix: str, timeout: float = 120) -> None:
    """Until an entry named ``prefix*`` appears in ``parent`` (the run is inside its writing step)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(p.name.startswith(prefix) for p in parent.iterdir()):
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {prefix}* appeared: {proc.communicate()}")
        time.sleep(0.005)
    proc.kill()
    pytest.fail(f"{prefix}* never appeared")


# command -> (argv with {src} and {out}, the source fixture, the entry to wait for beside the output)
RUNS = {
    "export": (["export", "{src}", "-o", "{out}", "--force", "-q"], "tiny_bert", ".out.tmp-"),
    "quantize": (["quantize", "{src}", "-o", "{out}", "--mode", "dynamic", "--force", "-q"], "tiny_onnx", ".out.work-"),
}


@pytest.fixture
def setup(request, tmp_path, tiny_onnx):
    """A run directory holding ``out`` (a previous output: a copy of the tiny ONNX export) and a private TMPDIR."""
    argv, source, _ = RUNS[request.param]
    runs, tmpdir = tmp_path / "runs", tmp_path / "tmp"
    runs.mkdir()
    tmpdir.mkdir()
    shutil.copytree(tiny_onnx, runs / "out")
    src = request.getfixturevalue(source)
    return request.param, [a.format(src=src, out=runs / "out") for a in argv], runs, tmpdir


@pytest.mark.parametrize("setup", list(RUNS), indirect=True)
def test_sigterm_keeps_the_previous_output_and_leaves_nothing(setup):
    name, argv, runs, tmpdir = setup
    before = _hashes(runs / "out")
    proc = _start(argv, tmpdir)
    _wait_for(proc, runs, RUNS[name][2])
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith("warning:")]
    assert proc.returncode == 143 and lines == [f"enginewright {name}: terminated"], err
    assert _hashes(runs / "out") == before
    assert sorted(p.name for p in runs.iterdir()) == ["out"]  # no staging, old, scratch or lock entries
    # and nothing in the temporary folder (.ses: onnxruntime's session-id file, which every run that loads it writes)
    assert [p.name for p in tmpdir.iterdir() if p.name != ".ses"] == []


@pytest.mark.parametrize("setup", list(RUNS), indirect=True)
def test_after_sigkill_the_next_run_sweeps_the_debris(setup, capsys):
    name, argv, runs, tmpdir = setup
    before = _hashes(runs / "out")
    proc = _start(argv, tmpdir)
    _wait_for(proc, runs, RUNS[name][2])
    proc.kill()
    proc.communicate(timeout=60)
    assert _hashes(runs / "out") == before
    assert len(list(runs.iterdir())) > 1  # what the killed run left
    assert main(argv) == 0, capsys.readouterr().err
    assert sorted(p.name for p in runs.iterdir()) == ["out"]
    assert (runs / "out" / "manifest.json").is_file()


def test_two_runs_to_one_output_one_wins(tiny_bert, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["export", str(tiny_bert), "-o", str(out), "-q"]
    first = _start(argv, tmp_path)
    _wait_for(first, tmp_path, ".out.tmp-")
    first.send_signal(signal.SIGSTOP)  # hold it inside its writing step while the second run starts
    try:
        code = main(argv)
    finally:
        first.send_signal(signal.SIGCONT)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith("warning:")]
    assert code == 2 and len(lines) == 1 and "another enginewright run" in lines[0] and str(out) in lines[0], err
    _, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err
    assert (out / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []
