"""The output machinery on its own: the swap that never hides the previous output, the sweep of what a
killed run left, and the lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtimes import outputs
from runtimes.errors import UsageError
from runtimes.outputs import MARKER, atomic_output_dir, claim_output, release_output, scratch_dir, sweep_stale

ROOT = Path(__file__).resolve().parents[2]


def _ours(out: Path, content: str) -> None:
    out.mkdir()
    (out / MARKER).write_text("")
    (out / "f").write_text(content)


def test_a_failed_second_rename_puts_the_previous_output_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _ours(out, "old")
    real = os.replace

    def replace(src, dst):
        if Path(dst) == out:
            if Path(src).name.startswith(".out.tmp-"):
                raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(outputs.os, "replace", replace)
    with pytest.raises(OSError, match="No space"):
        with atomic_output_dir(out, force=True) as tmp:
            (tmp / "f").write_text("new")
    assert (out / "f").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_sweep_restores_an_output_a_kill_left_between_the_renames(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that is gone
    out = tmp_path / "out"
    old = tmp_path / f".out.old-{pid}-abc"
    old.mkdir()
    _ours(old / "x", "previous")
    (tmp_path / f".out.tmp-{pid}-def").mkdir()
    (tmp_path / f".out.work-{pid}-ghi").mkdir()
    live = tmp_path / f".out.work-{os.getpid()}-jkl"  # a running process's: left alone
    live.mkdir()
    sweep_stale(out)
    assert (out / "f").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "out"]


def test_a_second_process_is_refused_while_the_first_holds_the_output(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from runtimes.outputs import claim_output; claim_output(sys.argv[1], False); "
         "print('held', flush=True); sys.stdin.read()", str(out)],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match=rf"another enginewright run \(pid {holder.pid}\)"):
            claim_output(out, False)
    finally:
        holder.communicate("")
    claim_output(out, False)  # the lock died with its process
    release_output(out)
    assert list(tmp_path.iterdir()) == []


def test_scratch_sits_beside_the_output_and_goes(tmp_path):
    with scratch_dir(tmp_path / "out") as work:
        assert work.parent == tmp_path and work.name.startswith(f".out.work-{os.getpid()}-")
        (work / "big.onnx").write_bytes(b"x")
    assert list(tmp_path.iterdir()) == []
