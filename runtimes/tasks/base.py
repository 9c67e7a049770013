"""``Task``: what one model family needs, asked by runners, compare, bench, quantize and build.

A task owns the family-specific decisions (the transformers auto class, the input and output specs,
how a batch of data becomes feeds, which positions of an output count for parity, default
optimization profiles, which modules compression may touch), so the stages above never name an
input. Tasks are frozen dataclasses; a family overrides the methods that differ.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from runtimes.errors import UsageError
from runtimes.specs import TensorSpec

BATCH_DIM = "batch_size"
SEQ_DIM = "sequence_length"
SEQ_DIM_NAMES = ("sequence_length", "sequence", "seq_len", "seq")


@dataclass(frozen=True)
class Task:
    """One task of one model family.

    ``modality`` names the data the feed builder takes (``text``, ``image``, ``tensor``);
    ``auto_class`` is the transformers class that loads the model (None: not a transformers task);
    ``optimum_task`` what optimum's exporter calls it; ``arch_suffixes`` the ``config.json``
    architecture suffixes that mean this task; ``layer_pattern`` the module-name fragment that
    marks the blocks compression may touch; ``processor_files`` the files beside the model that
    build its feeds (tokenizer, image processor), copied along by every stage.
    """

    name: str
    family: str
    modality: str
    auto_class: str | None = None
    optimum_task: str | None = None
    arch_suffixes: tuple[str, ...] = ()
    model_inputs: tuple[str, ...] = ()
    layer_pattern: str | None = None
    processor_files: tuple[str, ...] = ()
    scores_labels: bool = False  # one row of logits per sample: accuracy against data labels
    trainable: bool = False  # finetune has a training recipe for this head (compress: the classifiers)
    processor_name: str = "feed builder"

    # -- the model ------------------------------------------------------------------------------
    def in_compress_scope(self, fqn: str) -> bool:
        """True for a module name inside the blocks compression may touch (``layer_pattern``)."""
        return self.layer_pattern is not None and self.layer_pattern in fqn

    def blocks(self, model):
        """The ``ModuleList`` of transformer blocks at ``layer_pattern`` under the base model, which
        pruning and layer dropping edit.

        Raises:
            UsageError: the model has no such list.
        """
        owner, name = self._blocks_owner(model)
        return getattr(owner, name)

    def set_blocks(self, model, blocks) -> None:
        """Replace the block list (``blocks``: the modules to keep, in order)."""
        import torch

        owner, name = self._blocks_owner(model)
        setattr(owner, name, torch.nn.ModuleList(blocks))

    def _blocks_owner(self, model):
        import torch

        owner = getattr(model, getattr(model, "base_model_prefix", ""), model)
        *path, name = (self.layer_pattern or "-").split(".")
        for part in path:
            owner = getattr(owner, part, None)
        if self.layer_pattern is None or not isinstance(getattr(owner, name, None), torch.nn.ModuleList):
            raise UsageError(f"{type(model).__name__}: compression needs the model's blocks at "
                             f"'{self.layer_pattern}' (task {self.name}); this model has none there")
        return owner, name

    def model_input_names(self, model) -> list[str]:
        """The inputs of this family a transformers model's ``forward`` takes, in its order."""
        return [n for n in inspect.signature(model.forward).parameters if n in self.model_inputs]

    def torch_forward(self, model, tensors: Mapping) -> Mapping:
        """One call of a loaded transformers model on named torch tensors; its outputs by name."""
        return model(**tensors, return_dict=True)

    def input_specs(self, model) -> list[TensorSpec]:
        """Input specs of a loaded transformers model, named as the ONNX export names them."""
        raise NotImplementedError(f"task {self.name} has no transformers inputs")

    def output_specs(self, config) -> list[TensorSpec]:
        """Output specs named as transformers' model classes name them."""
        raise NotImplementedError(f"task {self.name} has no transformers outputs")

    # -- feeds ----------------------------------------------------------------------------------
    def has_processor(self, path: Path) -> bool:
        """True when ``path`` holds what :meth:`load_processor` needs."""
        return any((Path(path) / f).is_file() for f in self.processor_files)

    def load_processor(self, model_dir: str | Path) -> Any:
        """The feed builder's state stored with the model (tokenizer, image processor); never remote code.

        Raises:
            UsageError: the directory lacks it.
        """
        raise NotImplementedError

    def _pretrained(self, auto_class: str, model_dir: str | Path, fix: str):
        """``transformers.<auto_class>.from_pretrained`` on local files, never remote code; a directory
        without it is a one-line UsageError that ends in ``fix``."""
        import transformers

        try:
            return getattr(transformers, auto_class).from_pretrained(str(model_dir), local_files_only=True,
                                                                     trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise UsageError(f"{model_dir}: no usable {self.processor_name} ({str(e).splitlines()[0][:200]}); "
                             f"{fix}") from None

    def encode(self, processor, batch, *, max_length: int = 128, pad_to_max: bool = False) -> dict[str, np.ndarray]:
        """One batch of data (``batch.texts``, ``batch.paths``, ...) -> named numpy arrays."""
        raise NotImplementedError

    def encode_batches(self, processor, data, batch_size: int, *, max_length: int = 128,
                       same_shape: bool = False) -> list[dict[str, np.ndarray]]:
        """``data`` in batches of ``batch_size``; with ``same_shape`` every batch has one shape
        (calibrators that build histograms need that)."""
        return [self.encode(processor, b, max_length=max_length) for b in data.batches(batch_size)]

    def feeds_for(self, encoded: Mapping[str, np.ndarray], inputs: Sequence[TensorSpec], where: str) -> dict[str, np.ndarray]:
        """Map encoded arrays onto a model's real inputs (cast to their dtypes).

        Raises:
            UsageError: the model needs an input the feed builder cannot provide.
        """
        feeds = {}
        for spec in inputs:
            if spec.name not in encoded:
                raise UsageError(f"{where}: model input {spec.name!r} is not produced by the {self.processor_name} "
                                 f"(it gives {sorted(encoded)}); this model needs its own feed mapping")
            arr = encoded[spec.name]
            feeds[spec.name] = arr if str(arr.dtype) == spec.dtype else arr.astype(spec.dtype)
        return feeds

    @property
    def is_padded(self) -> bool:
        """True when batches are padded and a mask says which positions count."""
        return type(self).mask is not Task.mask

    def mask(self, feeds: Mapping[str, Any]):
        """Which positions are real (1) or padding (0), ``[batch, seq]``; None when every position counts."""
        return None

    def token_counts(self, feeds: Mapping[str, np.ndarray]) -> tuple[int, int]:
        """``(computed, real)`` units of work in one batch, for throughput: samples by default."""
        n = next(iter(feeds.values())).shape[0]
        return n, n

    def varies_with_seq(self, processor) -> bool:
        """True when a benchmark's ``--seq`` changes the feeds' shapes."""
        return False

    def max_sequence(self, model_dir: Path) -> int | None:
        """The longest sequence the model in ``model_dir`` takes (None: no such limit)."""
        return None

    def feeds_note(self, max_length: int) -> str:
        """How a report's feeds were shaped, in a few words."""
        return f"feeds from the {self.processor_name}; no padding, every output row counts"

    # -- profiles -------------------------------------------------------------------------------
    def profile_dims(self, model_dir: Path, batches: Sequence[int], seqs: Sequence[int]) -> dict[str, tuple]:
        """Default ``{dim name: (min, opt, max)}`` for an engine's optimization profile of the model
        in ``model_dir``; ``batches`` and ``seqs`` are the (min, opt, max) the user asked for."""
        return {BATCH_DIM: tuple(batches)}

    def profile_phases(self, model_dir: Path, batches: Sequence[int], seqs: Sequence[int],
                       dims: Mapping[str, tuple] | None = None) -> dict[str, dict[str, tuple]]:
        """The default optimization profiles of an engine, by name: ``{phase: {dim name: (min, opt,
        max)}}``. One profile (``profile_dims``) unless a family needs more; ``dims`` are the user's
        ranges for named dims, which replace the defaults."""
        return {"default": {**self.profile_dims(model_dir, batches, seqs), **(dims or {})}}


def is_seq_dim(name) -> bool:
    return isinstance(name, str) and name in SEQ_DIM_NAMES
