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
process holds the whole model (data parallel, DDP); sharded weights (FSDP) are refused for now.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Iterator, Sequence

from runtimes.errors import UsageError

if TYPE_CHECKING:
    import torch

__all__ = ["bind_device", "from_main", "full_precision", "is_main", "launched", "load_model_state", "load_rng",
           "make_accelerator", "model_state", "rng_states", "shard", "units", "wait_for_everyone", "world"]


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


def make_accelerator(device: str, precision: str):
    """An ``accelerate.Accelerator`` for one training run on ``device`` (``cpu``/``cuda``) with
    ``precision`` (``fp32``, ``bf16``, ``fp16``). The loop places the model itself and steps its own
    scheduler (its batch is already the global batch).

    accelerate keeps one state per process and refuses a second ``Accelerator`` with other flags; an
    unlaunched process has nothing in it worth keeping, so each run starts from a fresh one (a launched
    process keeps its process group).

    Raises:
        UsageError: launched with FSDP (``accelerate launch --use_fsdp``): the artifact writers save
            a plain model, which a sharded one is not yet turned back into.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        raise UsageError("--use_fsdp: training with sharded weights (FSDP) is not supported yet; launch without it "
                         "(data parallel, each process holds the whole model)")
    AcceleratorState._reset_state(reset_partial_state=not launched())
    GradientState._reset_state()
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    return Accelerator(cpu=not device.startswith("cuda"), mixed_precision=mixed, device_placement=False,
                       step_scheduler_with_optimizer=False)


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
    epoch keep)."""
    return _plain(accelerator.unwrap_model(wrapped).state_dict())


def load_model_state(accelerator, wrapped, sd: dict) -> None:
    accelerator.unwrap_model(wrapped).load_state_dict(sd, strict=True)


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
