"""Any ``torch.nn.Module`` exported with declared inputs: seeded synthetic feeds of those shapes.

The artifact's manifest holds ``module``: the declared inputs (name, dtype, dims with names for
the dynamic ones) and ``dim_sizes``, the example size of every named dim at export. Feeds take
the batch dim from the batch, a sequence-like dim from ``max_length`` when padding to it (bench's
``--seq``), every other named dim from its example size.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from runtimes.errors import UsageError
from runtimes.specs import TensorSpec, specs_from_list
from runtimes.tasks.base import BATCH_DIM, Task, is_seq_dim

MANIFEST_KEY = "module"
INT_HIGH = 10  # synthetic integer inputs are drawn from [0, INT_HIGH)


@dataclass(frozen=True)
class ModuleFeeds:
    """What the synthetic feed builder needs: the declared inputs and the example size per named dim."""

    inputs: tuple[TensorSpec, ...]
    dim_sizes: Mapping[str, int]

    def shape(self, spec: TensorSpec, batch: int, seq: int | None) -> tuple[int, ...]:
        dims = []
        for axis, d in enumerate(spec.shape):
            if isinstance(d, int):
                dims.append(d)
            elif d == BATCH_DIM or (axis == 0 and d not in self.dim_sizes):
                dims.append(batch)
            elif is_seq_dim(d) and seq is not None:
                dims.append(seq)
            else:
                dims.append(int(self.dim_sizes.get(d, 1)))
        return tuple(dims)


@dataclass(frozen=True)
class ModuleTask(Task):
    family: str = "torch-module"
    modality: str = "tensor"
    processor_name: str = "synthetic feed builder"

    def has_processor(self, path: Path) -> bool:
        return _declared(Path(path)) is not None

    def load_processor(self, model_dir: str | Path) -> ModuleFeeds:
        """The declared inputs from the artifact's manifest, or from its source's (a quantized or
        optimized module artifact keeps them in its lineage).

        Raises:
            UsageError: neither the artifact nor its sources declare them.
        """
        section = _declared(Path(model_dir))
        if section is None:
            raise UsageError(f"{model_dir}: manifest.json has no '{MANIFEST_KEY}' section with the declared inputs (nor "
                             "has its source's); export it with enginewright export --module")
        return self.processor(specs_from_list(section["inputs"]), section.get("dim_sizes", {}))

    @staticmethod
    def processor(inputs, dim_sizes: Mapping[str, int]) -> ModuleFeeds:
        return ModuleFeeds(tuple(inputs), dict(dim_sizes))

    def encode(self, processor: ModuleFeeds, batch, *, max_length: int = 128, pad_to_max: bool = False) -> dict[str, np.ndarray]:
        """Seeded random arrays of the declared shapes: normal floats, integers in [0, INT_HIGH).
        The seed comes from the batch's content, so the same data gives the same feeds."""
        seed = int(hashlib.sha256(batch.fingerprint().encode()).hexdigest()[:8], 16)
        rng = np.random.default_rng(seed)
        out = {}
        for spec in processor.inputs:
            shape = processor.shape(spec, len(batch), max_length if pad_to_max else None)
            if np.issubdtype(np.dtype(spec.dtype), np.floating):
                out[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            elif spec.dtype == "bool":
                out[spec.name] = rng.integers(0, 2, shape).astype(bool)
            else:
                out[spec.name] = rng.integers(0, INT_HIGH, shape).astype(spec.dtype)
        return out

    def varies_with_seq(self, processor: ModuleFeeds) -> bool:
        return any(is_seq_dim(d) for s in processor.inputs for d in s.shape)

    def profile_dims(self, model_dir, batches, seqs) -> dict[str, tuple]:
        """The batch dim from ``batches``, sequence-like dims from ``seqs``, other named dims fixed at
        their example sizes."""
        feeds = self.load_processor(model_dir)
        named = {d for s in feeds.inputs for d in s.shape if isinstance(d, str)}
        fixed = {d: (int(feeds.dim_sizes[d]),) * 3 for d in named if d in feeds.dim_sizes}
        return {**fixed, **{d: tuple(seqs) for d in named if is_seq_dim(d)}, BATCH_DIM: tuple(batches)}


MODULE = ModuleTask("module")


def _declared(path: Path, depth: int = 5) -> dict | None:
    """The ``module`` section of ``path``'s manifest, following ``source.path`` up the lineage."""
    f = path / "manifest.json"
    if depth < 0 or not f.is_file():
        return None
    try:
        manifest = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get(MANIFEST_KEY):
        return manifest[MANIFEST_KEY]
    source = (manifest.get("source") or {}).get("path") if isinstance(manifest.get("source"), dict) else None
    return _declared(Path(source), depth - 1) if source and Path(source).resolve() != path.resolve() else None
