"""Tensor specs (name, dtype, shape with named dynamic dims) and feed validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from runtimes.errors import UsageError

Dim = int | str | None


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output.

    ``shape`` holds an int for a fixed dim, a name (``"batch_size"``) for a dynamic one, and
    ``None`` for a dynamic dim without a name.
    """

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "TensorSpec":
        return cls(name=d["name"], dtype=d["dtype"], shape=tuple(d["shape"]))

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


def specs_to_list(specs: Sequence[TensorSpec]) -> list[dict]:
    return [s.to_dict() for s in specs]


def specs_from_list(items: Sequence[Mapping]) -> list[TensorSpec]:
    return [TensorSpec.from_dict(d) for d in items]


def validate_feeds(feeds: Mapping[str, np.ndarray], specs: Sequence[TensorSpec], where: str) -> None:
    """Check names, dtypes, ranks and fixed dims of ``feeds`` against ``specs``.

    Raises:
        UsageError: one line naming the offending input and the expected spec.
    """
    expected = {s.name: s for s in specs}
    unknown = sorted(set(feeds) - set(expected))
    missing = sorted(set(expected) - set(feeds))
    if unknown or missing:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if unknown:
            parts.append(f"unexpected {unknown}")
        want = "; ".join(s.describe() for s in specs)
        raise UsageError(f"{where}: wrong input names ({', '.join(parts)}); expected inputs: {want}")
    for name, spec in expected.items():
        arr = feeds[name]
        if not isinstance(arr, np.ndarray):
            raise UsageError(f"{where}: input {name!r} must be a numpy array, got {type(arr).__name__}; expected {spec.describe()}")
        if str(arr.dtype) != spec.dtype:
            raise UsageError(f"{where}: input {name!r} has dtype {arr.dtype}; expected {spec.describe()}")
        if arr.ndim != len(spec.shape):
            raise UsageError(f"{where}: input {name!r} has rank {arr.ndim} (shape {list(arr.shape)}); expected {spec.describe()}")
        for axis, (got, want_dim) in enumerate(zip(arr.shape, spec.shape)):
            if isinstance(want_dim, int) and want_dim >= 0 and got != want_dim:
                raise UsageError(
                    f"{where}: input {name!r} has size {got} on axis {axis}; expected {spec.describe()}"
                )


Shape = tuple[int, ...]


def check_profile(name: str, prof, dims: Sequence[Dim]) -> tuple[Shape, Shape, Shape]:
    """Validate one input's optimization profile ``(min, opt, max)`` against its declared dims.

    Raises:
        UsageError: not three int shapes, a rank other than the input's, a dim outside
            ``0 <= MIN <= OPT <= MAX`` with ``MAX >= 1`` (TensorRT's rule: a zero-length dim, e.g. an
            empty KV cache, is allowed), or a fixed dim the profile does not keep.
    """
    if not (isinstance(prof, (tuple, list)) and len(prof) == 3 and all(
            isinstance(s, (tuple, list)) and all(isinstance(d, int) and not isinstance(d, bool) for d in s) for s in prof)):
        raise UsageError(f"--shapes {name}: needs three shapes MIN,OPT,MAX with dims joined by x, got {prof!r}")
    mn, op, mx = (tuple(s) for s in prof)
    if not len(mn) == len(op) == len(mx) == len(dims):
        raise UsageError(f"--shapes {name}: ranks {len(mn)}/{len(op)}/{len(mx)}, but input {name} has rank {len(dims)}")
    for axis, (a, b, c) in enumerate(zip(mn, op, mx)):
        if not 0 <= a <= b <= c or c < 1:
            raise UsageError(f"--shapes {name} dim {axis}: need 0 <= MIN <= OPT <= MAX and MAX >= 1, got {a}, {b}, {c}")
        declared = dims[axis]
        if isinstance(declared, int) and declared > 0 and not a == b == c == declared:
            raise UsageError(f"--shapes {name} dim {axis}: the model fixes it at {declared}, the profile gives {a}..{c}")
    return mn, op, mx
