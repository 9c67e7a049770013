"""The training loop over several processes: ``accelerate launch`` of the real ``enginewright finetune``
on CPUs (gloo on localhost), against one process and against a run killed and resumed.

Tolerance for 2 processes against 1 with the same global batch: max |w2 - w1| <= 1e-6 on every
weight, and the per-epoch mean losses within 1e-5 relative. Both runs see the same examples in the
same order, padded alike; what differs is the order of floating-point sums (each process sums its
half of the batch, then the halves are averaged), a relative error of about 1e-7 per gradient that
AdamW carries into the weights. Measured here (2026-12, torch 2.13 CPU): 3e-8 on the kept (best)
epoch's weights, which training moved by 3e-3, and 1e-7 relative on the losses; the bound leaves a
30-fold margin and stays three orders below what training changes.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from exporter.distributed import shard, units
from exporter.finetune import finetune
from exporter.training import TrainConfig
from tests.conftest import make_tiny_bert, write_splits

ROOT = Path(__file__).resolve().parents[2]
ATOL = 1e-6  # 2 processes against 1 (module docstring)
multiprocess = pytest.mark.multiprocess


def test_shards_keep_the_global_batch_in_order():
    for n in range(1, 12):
        for world in (1, 2, 3, 4):
            idx = list(range(100, 100 + n))
            parts = [shard(idx, r, world) for r in range(world)]
            assert sum(parts, []) == idx
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_units_count_labelled_tokens_or_rows():
    rows = {"input_ids": torch.zeros(3, 5, dtype=torch.long), "labels": torch.tensor([0, 1, 2])}
    tokens = {"input_ids": torch.zeros(2, 4, dtype=torch.long), "labels": torch.tensor([[1, -100, 2, -100], [0, 0, -100, -100]])}
    assert (units(rows), units(tokens)) == (3, 4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list, processes: int = 2, fsdp: bool = False) -> subprocess.Popen:
    """``accelerate launch`` of the CLI in ``processes`` CPU processes (``--multi_gpu`` is accelerate's
    torchrun launcher; ``--cpu`` would pick its MPI one)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp" if fsdp else "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
           "-m", "enginewright", "finetune", *map(str, args), "--device", "cpu"]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    return out


def _kill_all(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process under it (torchrun starts the workers in sessions of
    their own), each by its id."""
    family = psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
    for p in family:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.communicate(timeout=60)
    psutil.wait_procs(family, timeout=30)


def _step(state_file: Path) -> int:
    try:
        return json.loads(state_file.read_text())["global_step"]
    except (OSError, ValueError):  # not written yet, or in the middle of its swap
        return 0


def _weights(path: Path) -> dict:
    return load_file(str(path / "model.safetensors"))


def _args(model: Path, data: Path, out: Path, epochs: int, lr: float) -> list:
    return [model, "--train", data / "train.jsonl", "--eval", data / "eval.jsonl", "--epochs", epochs,
            "--batch-size", 8, "--max-length", 32, "--lr", lr, "--patience", 0, "--checkpoint-every", 3, "-o", out]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_splits(tmp_path_factory.mktemp("ddp-data"))


@multiprocess
def test_two_processes_reach_the_weights_of_one(data, tmp_path):
    model = make_tiny_bert(tmp_path / "m", task="text-classification")
    config = json.loads((model / "config.json").read_text())  # dropout draws are per process: off here
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(config))
    two = _launch(_args(model, data, tmp_path / "two", 3, 1e-3))
    one = finetune(model, tmp_path / "one", train_data=data / "train.jsonl", eval_data=data / "eval.jsonl",
                   config=TrainConfig(epochs=3, batch_size=8, max_length=32, lr=1e-3, patience=None, checkpoint_every=3),
                   device="cpu", progress=False)
    printed = _finish(two)
    assert printed.count("artifact:") == 1  # the result is printed once, by the main process
    assert not (tmp_path / "two.ckpt").exists()
    a, b = _weights(one.path), _weights(tmp_path / "two")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= ATOL
    t1, t2 = one.manifest["training"], json.loads((tmp_path / "two" / "manifest.json").read_text())["training"]
    assert t1["steps"] == t2["steps"] == 12 and t1["best_epoch"] == t2["best_epoch"]
    assert [h["loss"] for h in t2["history"]] == pytest.approx([h["loss"] for h in t1["history"]], rel=1e-5)


@multiprocess
def test_two_processes_killed_after_a_checkpoint_resume_to_the_uninterrupted_weights(tiny_classifier, data, tmp_path):
    # dropout on: the resumed processes must each continue their own random stream
    args = dict(model=tiny_classifier, data=data, epochs=6, lr=1e-3)
    cut = _launch(_args(out=tmp_path / "cut", **args))
    reference = _launch(_args(out=tmp_path / "full", **args))
    state_file = tmp_path / "cut.ckpt" / "state.json"
    deadline = time.monotonic() + 180
    while cut.poll() is None and time.monotonic() < deadline and _step(state_file) < 5:
        time.sleep(0.01)
    assert cut.poll() is None, "the run ended before it could be killed"
    _kill_all(cut)
    state = json.loads(state_file.read_text())
    assert 5 <= state["global_step"] < 24 and state["processes"] == 2
    assert not (tmp_path / "cut").exists()
    _finish(_launch(_args(out=tmp_path / "cut", **args) + ["--resume"]))
    _finish(reference)
    resumed = json.loads((tmp_path / "cut" / "manifest.json").read_text())["training"]
    assert resumed["resumed_from_step"] == state["global_step"] and resumed["steps"] == 24
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "cut.ckpt").exists()


@multiprocess
def test_two_sharded_processes_reach_the_weights_of_one_and_save_a_whole_model(data, tmp_path):
    # FSDP2 over gloo: the same global batch as one process; tolerance as for DDP (module docstring)
    model = make_tiny_bert(tmp_path / "m", task="text-classification")
    config = json.loads((model / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(config))
    two = _launch(_args(model, data, tmp_path / "two", 2, 1e-3), fsdp=True)
    one = finetune(model, tmp_path / "one", train_data=data / "train.jsonl", eval_data=data / "eval.jsonl",
                   config=TrainConfig(epochs=2, batch_size=8, max_length=32, lr=1e-3, patience=None, checkpoint_every=3),
                   device="cpu", progress=False)
    printed = _finish(two)
    assert printed.count("artifact:") == 1
    a, b = _weights(one.path), _weights(tmp_path / "two")
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)  # whole tensors, not shards
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= ATOL
    t1, t2 = one.manifest["training"], json.loads((tmp_path / "two" / "manifest.json").read_text())["training"]
    assert t2["sharded"] and not t1["sharded"]
    assert t1["steps"] == t2["steps"] == 8 and t1["best_epoch"] == t2["best_epoch"]
    assert [h["loss"] for h in t2["history"]] == pytest.approx([h["loss"] for h in t1["history"]], rel=1e-5)


def test_sharded_weights_in_one_process_are_refused_in_one_line(tiny_classifier, data, tmp_path, monkeypatch):
    from runtimes.errors import UsageError

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what accelerate launch --use_fsdp sets
    with pytest.raises(UsageError, match="^--use_fsdp: sharded weights need several processes"):
        finetune(tiny_classifier, tmp_path / "out", train_data=data / "train.jsonl", eval_data=data / "eval.jsonl",
                 config=TrainConfig(epochs=1, batch_size=8, max_length=32), device="cpu", progress=False)
    assert not (tmp_path / "out").exists()
