"""Training over several processes with Hugging Face accelerate: what a launcher (``accelerate
launch``, ``torchrun``) tells a process, and the pieces the one training loop needs.

How N processes match one: ``TrainConfig.batch_size`` is the global batch. Each optimizer step takes
the same global batch, in the same seeded order, as one process would; the batch is cut into N
contiguous slices (sizes differ by at most one), each padded to the global batch's longest example,
and each process's loss is weighted by its share of the batch's labelled units, so the averaged
gradient is the one process's gradient up to floating-point summation order. Dropout masks are drawn
per process, so with dropout on, N processes and one agree in distribution, not number by number.

Only the main process writes (checkpoints, artifacts, reports) and shows progress; the others wait
for it. The checkpoint directory and the output must be on a file system every process sees. Each
process holds the whole model (data parallel, DDP), or, launched with ``accelerate launch --use_fsdp``,
a shard of it (FSDP2: torch's ``fully_shard`` on every block of the model's layer stacks and on the
model). accelerate 1.15 only shards on GPUs (on CPUs it quietly falls back to DDP), so the loop shards
the model itself with the calls accelerate's FSDP2 path makes, and the same code runs on gloo and NCCL.
Under FSDP the weights a checkpoint, the best epoch and the artifact keep are gathered in full to the
main process's CPU memory (only there), and the checkpoint's optimizer state is the full one, keyed by
parameter name, gathered the same way; a resume scatters both back from the main process.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Iterator, Sequence

from runtimes.errors import UsageError

if TYPE_CHECKING:
    import torch

__all__ = ["bind_device", "from_main", "full_precision", "full_weights", "fsdp_requested", "is_main", "is_sharded", "launched",
           "load_model_state", "load_optimizer_state", "load_rng", "make_accelerator", "model_state",
           "optimizer_state", "refuse_fsdp_with_lora", "rng_states", "shard", "shard_model", "units", "wait_for_everyone", "world"]


def world() -> tuple[int, int]:
    """``(rank, world size)`` as the launcher set them (``RANK``, ``WORLD_SIZE``); ``(0, 1)`` unlaunched.
    Read from the environment, so it is known before any process group exists."""
    return int(os.environ.get("RANK", "0") or 0), int(os.environ.get("WORLD_SIZE", "1") or 1)


def launched() -> bool:
    """True in one of several processes started by a launcher."""
    return world()[1] > 1


def is_main() -> bool:
    """True in the process that writes outputs: rank 0, or the only process."""
    return world()[0] == 0


def bind_device() -> None:
    """Under a launcher on a CUDA machine, make ``cuda`` mean this process's GPU (``LOCAL_RANK``), so
    models and batches moved to ``cuda`` before the accelerator exists land on the right one."""
    if not launched() or "LOCAL_RANK" not in os.environ:
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))


def fsdp_requested() -> bool:
    """True when the launcher asked for sharded weights (``accelerate launch --use_fsdp`` sets
    ``ACCELERATE_USE_FSDP``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def make_accelerator(device: str, precision: str):
    """An ``accelerate.Accelerator`` for one training run on ``device`` (``cpu``/``cuda``) with
    ``precision`` (``fp32``, ``bf16``, ``fp16``). The loop places the model itself and steps its own
    scheduler (its batch is already the global batch).

    accelerate keeps one state per process and refuses a second ``Accelerator`` with other flags; an
    unlaunched process has nothing in it worth keeping, so each run starts from a fresh one (a launched
    process keeps its process group).

    Under ``--use_fsdp`` the accelerator is the data-parallel one (process group, autocast, reductions)
    and the loop shards the model itself (``shard_model``); accelerate's own FSDP plugin is kept out
    (it reads ``ACCELERATE_USE_FSDP``) so that one path runs on CPUs and GPUs alike.

    Raises:
        UsageError: ``--use_fsdp`` in a single process (there is nothing to shard across).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    if fsdp_requested():
        if not launched():
            raise UsageError("--use_fsdp: sharded weights need several processes; launch with "
                             "accelerate launch --use_fsdp --num_processes N")
    AcceleratorState._reset_state(reset_partial_state=not launched())
    GradientState._reset_state()
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    saved = os.environ.pop("ACCELERATE_USE_FSDP", None)
    try:
        return Accelerator(cpu=not device.startswith("cuda"), mixed_precision=mixed, device_placement=False,
                           step_scheduler_with_optimizer=False)
    finally:
        if saved is not None:
            os.environ["ACCELERATE_USE_FSDP"] = saved


def shard_model(model) -> None:
    """Shard ``model`` in place across the process group (FSDP2): each block of every layer stack
    (``nn.ModuleList``) is one unit, gathered for its forward and backward and freed after, and the
    root holds the rest (embeddings, heads). Done before the optimizer is built: the parameters
    become ``DTensor`` shards."""
    import torch
    from torch.distributed.fsdp import fully_shard

    for module in list(model.modules()):
        if isinstance(module, torch.nn.ModuleList):
            for block in module:
                if any(p.requires_grad for p in block.parameters()):
                    fully_shard(block)
    fully_shard(model)


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _full_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def shard(idx: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s contiguous slice of the global batch ``idx`` (slice sizes differ by at most one;
    a slice is empty when the batch has fewer examples than processes)."""
    base, extra = divmod(len(idx), world_size)
    start = rank * base + min(rank, extra)
    return list(idx[start:start + base + (rank < extra)])


def units(batch: dict) -> int:
    """What a mean loss over ``batch`` averages: labelled tokens (labels other than -100) for
    per-token labels, else rows."""
    labels = batch.get("labels")
    if labels is not None and labels.dim() > 1:
        return int((labels != -100).sum())
    return int(next(iter(batch.values())).shape[0])


def from_main(accelerator, value):
    """``value`` as the main process has it, on every process (so every process takes the same
    early-stopping decision)."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def wait_for_everyone() -> None:
    """A barrier across the launched processes (nothing when unlaunched or before a process group exists)."""
    if not launched():
        return
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        td.barrier()


@contextlib.contextmanager
def full_precision(model) -> Iterator[None]:
    """Run ``model`` without the autocast wrapper ``accelerator.prepare`` put on its ``forward`` under
    mixed precision, so evaluation measures the fp32 weights as before."""
    wrapped, original = model.__dict__.get("forward"), getattr(model, "_original_forward", None)
    if wrapped is None or original is None:
        yield
        return
    model.forward = original
    try:
        yield
    finally:
        model.forward = wrapped


def _plain(sd) -> dict:
    return {k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}


def model_state(accelerator, wrapped) -> dict:
    """A copy of the model's weights as contiguous CPU tensors (what a checkpoint and the best
    epoch keep). A sharded model's are gathered in full on the main process only (the others get
    ``{}``); every process must call this then."""
    model = accelerator.unwrap_model(wrapped)
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return _plain(get_model_state_dict(model, options=_full_options(cpu_offload=True)))
    return _plain(model.state_dict())


def load_model_state(accelerator, wrapped, sd: dict) -> None:
    """Load a full state dict; a sharded model takes it from the main process (the others may pass ``{}``)."""
    model = accelerator.unwrap_model(wrapped)
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(model, sd, options=_full_options(broadcast_from_rank0=True, strict=True))
        return
    model.load_state_dict(sd, strict=True)


def full_weights(model) -> dict | None:
    """A trained sharded model's full weights, gathered to the main process's CPU memory (``{}`` on
    the others; every process must call this), for the artifact writer; ``None`` for a whole model,
    which the writer saves as it is."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return _plain(get_model_state_dict(model, options=_full_options(cpu_offload=True)))


def refuse_fsdp_with_lora(lora) -> None:
    """Raises UsageError: ``--use_fsdp`` with LoRA adapters (their merge needs the whole model)."""
    if lora is not None and fsdp_requested():
        raise UsageError("--use_fsdp: LoRA adapters are merged into the whole model, which sharded weights are not; "
                         "train LoRA without --use_fsdp (data parallel)")


def optimizer_state(model, optimizer) -> dict:
    """The optimizer's state as ``torch.save`` keeps it: its own ``state_dict`` for a whole model; for
    a sharded one the full state keyed by parameter name, on the main process only (``{}`` elsewhere)."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    inner = getattr(optimizer, "optimizer", optimizer)
    return get_optimizer_state_dict(model, inner, options=_full_options(cpu_offload=True))


def load_optimizer_state(model, optimizer, sd: dict) -> None:
    if not is_sharded(model):
        optimizer.load_state_dict(sd)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    inner = getattr(optimizer, "optimizer", optimizer)
    set_optimizer_state_dict(model, inner, sd, options=_full_options(broadcast_from_rank0=True))


def rng_states(accelerator) -> list[dict[str, "torch.Tensor"]]:
    """Every process's torch RNG states (CPU, and CUDA where used), in rank order, on every process."""
    import torch

    mine = {"cpu": torch.get_rng_state()}
    if accelerator.device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(accelerator.device)
    if accelerator.num_processes == 1:
        return [mine]
    from accelerate.utils import gather_object

    return gather_object([mine])


def load_rng(accelerator, states: list[dict], seed: int) -> bool:
    """Restore this process's RNG from ``states`` (one per rank of the run that saved them). A rank the
    saving run did not have is seeded from ``seed`` and its rank instead; returns False then."""
    import torch

    rank = accelerator.process_index
    if rank >= len(states):
        torch.manual_seed(seed + 7919 * rank)
        return False
    torch.set_rng_state(states[rank]["cpu"])
    if "cuda" in states[rank] and accelerator.device.type == "cuda":
        torch.cuda.set_rng_state(states[rank]["cuda"], accelerator.device)
    return True
