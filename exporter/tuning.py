"""What fine-tuning a classifier (``exporter/finetune.py``) and a causal LM
(``exporter/causal_finetune.py``) share: LoRA settings and adapters, the encoded task data, the run
fingerprint that keys a checkpoint, opening that checkpoint, and writing the result."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from typing import Callable

from exporter.training import Checkpoint, Encoded, TrainConfig
from runtimes.artifact import Artifact
from runtimes.errors import UsageError


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapters (peft), merged into the weights at the end. ``target_modules`` None: the task's
    default, the attention's query and value projections of an encoder, every linear layer but the
    output head of a causal LM."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.r < 1 or self.alpha < 1 or not 0 <= self.dropout < 1:
            raise UsageError(f"LoRA needs r >= 1, alpha >= 1 and dropout within [0, 1); got {asdict(self)}")


@dataclass
class TaskData:
    """Train and eval sets of one task, encoded, with the label names."""

    task: str
    labels: list[str]
    train: Encoded
    eval: Encoded
    fingerprints: dict


def save_pretrained(tmp: Path, model, tokenizer, weights: dict | None = None) -> None:
    """The weights (safetensors, on the CPU), config and tokenizer of an ``hf`` artifact. ``weights``:
    the full state dict of a model trained sharded (``exporter.distributed.full_weights``), written
    in place of the model's own (its parameters are shards then)."""
    if weights is None:
        model.to("cpu").save_pretrained(str(tmp), safe_serialization=True)
    else:
        model.save_pretrained(str(tmp), state_dict=weights, safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))


def run_fingerprint(config: TrainConfig, data: TaskData, lora: LoraSettings | None, src: Artifact) -> str:
    import hashlib
    import json

    blob = json.dumps({"config": config.fingerprint(), "data": data.fingerprints, "labels": data.labels,
                       "lora": asdict(lora) if lora else None, "source": str(src.path.resolve())}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def with_lora(model, lora: LoraSettings, task: str):
    """``model`` wrapped by peft with ``lora``'s adapters (only they train).

    Raises:
        UsageError: a target module the model does not have.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    kind = {"text-classification": TaskType.SEQ_CLS, "token-classification": TaskType.TOKEN_CLS,
            "text-generation": TaskType.CAUSAL_LM}[task]
    default = "all-linear" if task == "text-generation" else ["query", "value"]
    from transformers.pytorch_utils import Conv1D

    # GPT-2's projections are transformers' Conv1D, a Linear with its weight stored transposed
    conv1d = any(isinstance(m, Conv1D) for m in model.modules())
    cfg = LoraConfig(task_type=kind, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                     target_modules=list(lora.target_modules) if lora.target_modules else default,
                     fan_in_fan_out=conv1d)
    try:
        return get_peft_model(model, cfg)
    except ValueError as e:
        raise UsageError(f"--lora-targets {','.join(lora.target_modules or ())}: {str(e).splitlines()[0][:200]}; "
                         "name modules the model has (e.g. q_proj,v_proj)") from None


def open_checkpoint(out: Path, fingerprint: str, *, resume: bool, force: bool) -> Checkpoint:
    """The checkpoint beside ``out`` for the run ``fingerprint`` names.

    Raises:
        UsageError: an interrupted run's checkpoint is there and neither ``resume`` nor ``force`` was given.
    """
    ckpt = Checkpoint(out.with_name(out.name + ".ckpt"), fingerprint)
    if ckpt.exists() and not resume and not force:
        raise UsageError(f"{ckpt.path}: an interrupted run's checkpoint is there; pass --resume to continue it or --force to start over")
    return ckpt


def write_tuned(writer, model, tokenizer, lora: LoraSettings | None, ckpt: Checkpoint, manifest: Callable):
    """The trained model as an ``hf`` artifact: LoRA adapters merged, the full weights gathered when
    it was trained sharded (every process takes part), written once by ``writer`` with ``manifest()``
    as its manifest; then the checkpoint is removed. Returns the artifact."""
    from exporter.distributed import full_weights

    if lora is not None:
        model = model.merge_and_unload()
    weights = full_weights(model)  # None unless trained sharded (--use_fsdp); every process gathers

    def fill(tmp):
        save_pretrained(tmp, model, tokenizer, weights)
        return manifest()

    art = writer.write(fill)
    ckpt.remove()
    return art
