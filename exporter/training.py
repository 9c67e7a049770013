"""One training loop for fine-tuning, recovery after pruning and distillation.

AdamW with linear warm-up and decay, gradient clipping, fixed seeds, evaluation after every epoch
with early stopping (the best epoch's weights are kept), and checkpoints that let an interrupted run
resume to the same final weights as an uninterrupted one: the data order of an epoch is derived
from (seed, epoch), and the checkpoint holds weights, optimizer and scheduler state and the RNG.
Checkpoints use safetensors and ``torch.load(weights_only=True)``: nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from tqdm.auto import tqdm

from runtimes.artifact import write_json_atomic
from runtimes.errors import UsageError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "bf16", "fp16", "auto")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_length: int = 64
    seed: int = 0
    patience: int | None = 2  # epochs without improvement before stopping; None: never stop early
    precision: str = "fp32"
    checkpoint_every: int = 50  # optimizer steps
    eval_batch_size: int = 64

    def __post_init__(self):
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"learning rate must be > 0, got {self.lr}"),
            (0 <= self.warmup_ratio < 1, f"warm-up ratio must be within [0, 1), got {self.warmup_ratio}"),
            (self.max_grad_norm > 0, f"max grad norm must be > 0, got {self.max_grad_norm}"),
            (self.max_length >= 8, f"max length must be >= 8, got {self.max_length}"),
            (self.patience is None or self.patience >= 1, f"patience must be >= 1, got {self.patience}"),
            (self.precision in PRECISIONS, f"precision {self.precision!r}: choose one of {list(PRECISIONS)}"),
            (self.checkpoint_every >= 1, f"checkpoint interval must be >= 1, got {self.checkpoint_every}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def resolve_precision(precision: str, device: str) -> str:
    """``auto``: bf16 on CUDA GPUs that have it, fp16 on other CUDA GPUs, fp32 on CPUs (where a
    bf16 step without AVX512-BF16/AMX runs many times slower than fp32).

    Raises:
        UsageError: fp16 asked for on a CPU.
    """
    import torch

    if precision == "auto":
        if device.startswith("cuda"):
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and not device.startswith("cuda"):
        raise UsageError("--precision fp16 needs a CUDA GPU; use fp32 (or bf16 on CPUs with AVX512-BF16/AMX)")
    return precision


@dataclass
class Encoded:
    """Tokenized examples (lists of ids per example) and their targets."""

    features: dict[str, list[list[int]]]
    labels: list  # int per example, or list[int] per example for token classification

    def __len__(self) -> int:
        return len(self.labels)


def collate(enc: Encoded, idx: Sequence[int], pad_id: int = 0, pad_to: int | None = None) -> dict:
    """Pad the examples ``idx`` to their longest (or to ``pad_to``); token-level labels are padded with -100."""
    import torch

    longest = pad_to or max(len(enc.features["input_ids"][i]) for i in idx)
    batch = {}
    for name, rows in enc.features.items():
        fill = pad_id if name == "input_ids" else 0
        batch[name] = torch.tensor([rows[i] + [fill] * (longest - len(rows[i])) for i in idx], dtype=torch.long)
    first = enc.labels[idx[0]]
    if isinstance(first, list):
        batch["labels"] = torch.tensor([enc.labels[i] + [-100] * (longest - len(enc.labels[i])) for i in idx])
    else:
        batch["labels"] = torch.tensor([enc.labels[i] for i in idx], dtype=torch.long)
    return batch


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    import torch

    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


@dataclass
class TrainResult:
    best_metric: float | None
    best_epoch: int | None
    epochs_run: int
    steps: int
    stopped_early: bool
    history: list[dict] = field(default_factory=list)
    resumed_from_step: int | None = None
    sharded: bool = False  # trained with sharded weights (FSDP)

    def to_dict(self) -> dict:
        return asdict(self)


LossFn = Callable[["torch.nn.Module", dict], "torch.Tensor"]
EvalFn = Callable[["torch.nn.Module"], float]


def default_loss(model, batch: dict):
    return model(**batch).loss


class Checkpoint:
    """A directory holding the state needed to resume (written atomically by the main process, read
    without pickle by every process)."""

    def __init__(self, path: Path, fingerprint: str):
        self.path = Path(path)
        self.fingerprint = fingerprint

    def exists(self) -> bool:
        return (self.path / "state.json").is_file()

    def save(self, weights: Mapping, optimizer: Mapping, scheduler: Mapping, state: dict, best: Mapping | None,
             rng: Sequence[Mapping]) -> None:
        """Write plain state dicts (weights as contiguous CPU tensors) and every process's RNG states."""
        import torch
        from safetensors.torch import save_file

        tmp = self.path.with_name(self.path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(dict(weights), str(tmp / "model.safetensors"))
        if best is not None:
            save_file(_plain_state(best), str(tmp / "best.safetensors"))
        torch.save({"optimizer": optimizer, "scheduler": scheduler, "rng": rng[0]["cpu"], "rng_ranks": list(rng)},
                   tmp / "optim.pt")
        write_json_atomic(tmp / "state.json", {**state, "fingerprint": self.fingerprint})
        old = self.path.with_name(self.path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if self.path.exists():
            os.replace(self.path, old)
        os.replace(tmp, self.path)
        shutil.rmtree(old, ignore_errors=True)

    def read(self) -> tuple[dict, dict, dict, dict | None]:
        """``(state, weights, extra, best)``: ``extra`` holds ``optimizer``, ``scheduler`` and ``rng_ranks``.

        Raises:
            UsageError: the checkpoint was made with other settings or data.
        """
        import torch
        from safetensors.torch import load_file

        state = json.loads((self.path / "state.json").read_text())
        if state.get("fingerprint") != self.fingerprint:
            raise UsageError(f"{self.path}: checkpoint was made with other settings or data; pass --force to start over")
        weights = load_file(str(self.path / "model.safetensors"))
        extra = torch.load(self.path / "optim.pt", weights_only=True)
        extra.setdefault("rng_ranks", [{"cpu": extra["rng"]}])
        best = load_file(str(self.path / "best.safetensors")) if (self.path / "best.safetensors").is_file() else None
        return state, weights, extra, best

    def remove(self) -> None:
        """Delete the checkpoint (the main process does; the others leave it to it)."""
        from exporter.distributed import is_main

        if is_main():
            shutil.rmtree(self.path, ignore_errors=True)


def _plain_state(sd: Mapping) -> dict:
    """Contiguous, unshared CPU tensors, as safetensors wants them."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}


def _metric_key(value) -> tuple[float, ...]:
    return tuple(float(v) for v in value) if isinstance(value, (tuple, list)) else (float(value),)


def train(
    model,
    data: Encoded,
    config: TrainConfig,
    *,
    evaluate: EvalFn | None = None,
    loss_fn: LossFn = default_loss,
    after_step: Sequence[Callable] = (),
    checkpoint: Checkpoint | None = None,
    resume: bool = False,
    device: str = "cpu",
    pad_id: int = 0,
    desc: str = "train",
    progress: bool = True,
    baseline: bool = False,
    batch_units: Callable[[dict], int] | None = None,
    shardable: bool = False,
) -> TrainResult:
    """Train ``model`` in place; on return it holds the best epoch's weights (by ``evaluate``,
    higher is better), or the last weights when there is no ``evaluate``.

    The same code runs in one process and in each of N processes started by ``accelerate launch``
    (or ``torchrun``): ``config.batch_size`` is then the global batch, cut across the processes so
    that every step sees the batch one process would (``exporter.distributed``); ``loss_fn`` gets the
    model as accelerate wraps it, ``evaluate`` and ``after_step`` the plain model, on every process,
    and the main process's evaluation decides for all. Only the main process writes checkpoints and
    shows progress.

    ``evaluate`` returns a number, or a tuple of numbers compared in order (the first is the
    reported metric, the rest break its ties). ``baseline`` evaluates the model before training as
    epoch 0, which the trained epochs must beat to be kept (a fine-tune that only makes the model
    worse is then undone).

    ``after_step`` callables get the model after every optimizer step (e.g. to re-apply sparsity
    masks). With ``checkpoint``, state is saved every ``config.checkpoint_every`` steps and at each
    epoch end; ``resume`` continues from it. ``batch_units(batch)`` counts what ``loss_fn``'s mean
    averages over (default: labelled tokens for per-token labels, else rows); several processes
    weight their losses by it. ``shardable``: the caller saves the result with
    ``distributed.full_weights``, so ``accelerate launch --use_fsdp`` may shard the model (else refused).

    Raises:
        UsageError: a checkpoint from other settings, ``resume`` without a checkpoint, a global batch
            smaller than the number of processes.
    """
    import torch
    from transformers import get_linear_schedule_with_warmup

    from exporter import distributed as dist

    torch.manual_seed(config.seed)
    precision = resolve_precision(config.precision, device)
    accelerator = dist.make_accelerator(device, precision)
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    if world > 1:
        if config.batch_size < world:
            raise UsageError(f"--batch-size {config.batch_size} is the global batch; it must be at least the "
                             f"number of processes ({world})")
        torch.manual_seed(config.seed + 7919 * rank)  # rank 0 draws as one process does; the others differ
        device = accelerator.device
    units = batch_units or dist.units
    sharded = world > 1 and dist.fsdp_requested()
    if sharded and (after_step or not shardable):
        raise UsageError(f"--use_fsdp: {desc} does not support sharded weights yet (only finetune writes its "
                         "artifact from gathered weights); launch without --use_fsdp")
    model.to(device)
    if sharded:
        dist.shard_model(model)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and not _no_decay(n)]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and _no_decay(n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    total = steps_per_epoch * config.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total), total)
    if sharded:  # already sharded; accelerate's prepare would put DDP around it
        wrapped, optimizer = model, accelerator.prepare(optimizer)
    else:
        wrapped, optimizer = accelerator.prepare(model, optimizer)
    plain = accelerator.unwrap_model(wrapped)

    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_metric": None, "best_epoch": None,
             "bad_epochs": 0, "history": [], "done": False, "processes": world,
             "sharded": sharded}
    best = None
    resumed = None
    if resume:
        if checkpoint is None or not checkpoint.exists():
            raise UsageError("--resume: there is no checkpoint to resume from; run without --resume")
        state, weights, extra, best = checkpoint.read()
        if state.get("sharded", False) != sharded:
            raise UsageError(f"--resume: the checkpoint was made {'with' if state.get('sharded') else 'without'} "
                             f"--use_fsdp; resume it the same way (its optimizer state is laid out for that)")
        dist.load_model_state(accelerator, wrapped, weights)
        dist.load_optimizer_state(plain, optimizer, extra["optimizer"])
        scheduler.load_state_dict(extra["scheduler"])
        same = dist.load_rng(accelerator, extra["rng_ranks"], config.seed)
        saved_by = state.get("processes", 1)
        if main and (saved_by != world or not same):
            tqdm.write(f"{desc}: resuming {saved_by}-process checkpoint in {world} processes; dropout draws "
                       "differ from an uninterrupted run")
        state["processes"] = world
        resumed = state["global_step"]

    def judge(m) -> tuple[float, ...]:
        with dist.full_precision(m):
            key = _metric_key(evaluate(m))
        return tuple(dist.from_main(accelerator, list(key)))

    def save() -> None:
        weights = dist.model_state(accelerator, wrapped)
        optim = dist.optimizer_state(plain, optimizer)
        rng = dist.rng_states(accelerator)
        if main:
            checkpoint.save(weights, optim, scheduler.state_dict(), state, best, rng)
        accelerator.wait_for_everyone()

    if baseline and evaluate is not None and resumed is None:
        key = judge(plain)
        state["best_metric"], state["best_key"], state["best_epoch"] = key[0], list(key), 0
        best = dist.model_state(accelerator, wrapped)
        state["history"].append({"epoch": 0, "loss": None, "eval_metric": key[0],
                                 **({"eval_key": list(key)} if len(key) > 1 else {})})
    bar = tqdm(total=total, initial=state["global_step"], desc=desc, unit="step", disable=not (progress and main))
    say = bar.write if main else (lambda _: None)
    try:
        while state["epoch"] < config.epochs and not state["done"]:
            wrapped.train()
            order = epoch_order(len(data), config.seed, state["epoch"])
            running = 0.0
            for b in range(state["step_in_epoch"], steps_per_epoch):
                idx = order[b * config.batch_size:(b + 1) * config.batch_size]
                if world == 1:
                    batch = collate(data, idx, pad_id)
                else:  # this process's slice, padded as the whole global batch is
                    mine = dist.shard(idx, rank, world)
                    longest = max(len(data.features["input_ids"][i]) for i in idx)
                    batch = collate(data, mine or idx[:1], pad_id, pad_to=longest)
                batch = {k: v.to(device) for k, v in batch.items()}
                with accelerator.autocast():
                    loss = loss_fn(wrapped, batch)
                optimizer.zero_grad(set_to_none=True)
                if world == 1:
                    accelerator.backward(loss)
                    value = float(loss.detach())
                else:  # weighted so that the processes' mean gradient is the global batch's
                    n = torch.tensor(float(units(batch) if mine else 0), device=device)
                    share = n / accelerator.reduce(n.clone(), "sum")
                    accelerator.backward(loss * (share * world))
                    value = float(accelerator.reduce(loss.detach().float() * share, "sum"))
                accelerator.clip_grad_norm_(wrapped.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                for fn in after_step:
                    fn(plain)
                running = 0.9 * running + 0.1 * value if b else value
                state["step_in_epoch"] = b + 1
                state["global_step"] += 1
                bar.update(1)
                bar.set_postfix(loss=f"{running:.4f}", epoch=state["epoch"] + 1)
                if checkpoint is not None and state["global_step"] % config.checkpoint_every == 0:
                    save()
            metric = None
            if evaluate is not None:
                key = judge(plain)
                metric = key[0]
                if state["best_metric"] is None or key > tuple(state.get("best_key") or (state["best_metric"],)):
                    state["best_metric"], state["best_epoch"], state["bad_epochs"] = metric, state["epoch"] + 1, 0
                    state["best_key"] = list(key)
                    best = dist.model_state(accelerator, wrapped)
                else:
                    state["bad_epochs"] += 1
                    if config.patience is not None and state["bad_epochs"] >= config.patience:
                        state["done"] = True
            state["history"].append({"epoch": state["epoch"] + 1, "loss": running, "eval_metric": metric,
                                     **({"eval_key": list(key)} if metric is not None and len(key) > 1 else {})})
            say(f"{desc}: epoch {state['epoch'] + 1} loss {running:.4f}" + (f" eval {metric:.4f}" if metric is not None else ""))
            state["epoch"] += 1
            state["step_in_epoch"] = 0
            if checkpoint is not None:
                save()
    finally:
        bar.close()
    if best is not None:
        dist.load_model_state(accelerator, wrapped, best)
    accelerator.unwrap_model(wrapped, keep_fp32_wrapper=False)  # takes the autocast wrapper off the model's forward
    stopped = state["done"]
    epochs_run = sum(h["epoch"] > 0 for h in state["history"])
    return TrainResult(state["best_metric"], state["best_epoch"], epochs_run, state["global_step"], stopped,
                       state["history"], resumed, sharded)


def _no_decay(name: str) -> bool:
    return name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name
