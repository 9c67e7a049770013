"""``export --module package.module:factory --inputs NAME:DIMS:DTYPE ...``: any ``torch.nn.Module`` a
factory returns, exported with ``torch.export`` to an ordinary ONNX artifact of task ``module``.

An input declaration is ``NAME:DIMS:DTYPE``: dims comma-separated, an int fixed, a name dynamic
(``x:batch_size,16:float32``); ``name=N`` gives a dynamic dim its example size at export
(default: 2 for the batch, 8 for a sequence-like dim, 3, 4, ... for others). The manifest's
``module`` section records the declared inputs and every named dim's example size, from which
``compare`` and ``bench`` rebuild seeded synthetic feeds.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from evaluation.parity import Tolerance
from runtimes.artifact import Artifact
from runtimes.errors import UsageError
from runtimes.specs import TensorSpec, specs_to_list
from runtimes.tasks import BATCH_DIM, get_task, is_seq_dim

DTYPES = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")
_FORMAT = "NAME:DIMS:DTYPE, dims comma-separated (ints fixed, names dynamic), e.g. x:batch_size,16:float32"


def parse_inputs(inputs: Sequence[str]) -> tuple[list[TensorSpec], dict[str, int]]:
    """Declared inputs -> specs and the example size of every named dim.

    Raises:
        UsageError: a malformed declaration, an unknown dtype, a name given twice, a dim given two sizes.
    """
    if not inputs:
        raise UsageError(f"--inputs: declare the module's inputs as {_FORMAT}")
    specs, sizes = [], {}
    for text in inputs:
        parts = str(text).split(":")
        if len(parts) != 3 or not parts[0] or not parts[1]:
            raise UsageError(f"--inputs {text!r}: expected {_FORMAT}")
        name, dims_text, dtype = parts
        if dtype not in DTYPES:
            raise UsageError(f"--inputs {text!r}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        if any(s.name == name for s in specs):
            raise UsageError(f"--inputs names input {name!r} twice; declare each input once")
        dims = []
        for d in dims_text.split(","):
            d, _, size = d.strip().partition("=")
            if d.isdigit() and not size:
                dims.append(int(d))
                continue
            if not d.isidentifier() or (size and not size.isdigit()):
                raise UsageError(f"--inputs {text!r}: dim {d!r} must be an int or a name (optionally name=SIZE)")
            if size and sizes.setdefault(d, int(size)) != int(size):
                raise UsageError(f"--inputs: dim {d!r} is given sizes {sizes[d]} and {size}; a shared dim has one size")
            dims.append(d)
        specs.append(TensorSpec(name, dtype, tuple(dims)))
    others = iter(n for n in range(3, 100) if n != 8)
    for d in dict.fromkeys(d for s in specs for d in s.shape if isinstance(d, str)):
        if d not in sizes:
            sizes[d] = 2 if d == BATCH_DIM or d == "batch" else 8 if is_seq_dim(d) else next(others)
    return specs, sizes


def load_factory(factory: str):
    """Import ``package.module:callable``, call it, and return the ``torch.nn.Module`` it makes.

    Raises:
        UsageError: not importable, not callable, or it does not return a module.
    """
    import torch

    module_name, _, attr = str(factory).partition(":")
    if not module_name or not attr:
        raise UsageError(f"--module {factory!r}: expected package.module:factory")
    try:
        mod = importlib.import_module(module_name)
    except ImportError as e:
        raise UsageError(f"--module {factory!r}: cannot import {module_name} ({e}); check the name and PYTHONPATH") from None
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise UsageError(f"--module {factory!r}: {module_name} has no callable {attr!r}")
    model = fn() if not isinstance(fn, torch.nn.Module) else fn
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"--module {factory!r}: returned {type(model).__name__}, not a torch.nn.Module")
    return model


def export_factory(factory: str, inputs: Sequence[str], out: str | os.PathLike, *, force: bool = False,
                   opset: int | None = None, dynamo: bool = True, external_data: bool = False,
                   tolerance: Tolerance | None = None, command: str | None = None) -> Artifact:
    """Export the module ``factory`` makes, called with seeded example inputs of the declared shapes,
    to an ONNX artifact at ``out`` (task ``module``), checked on ONNX Runtime like any export.

    Raises:
        UsageError: a bad factory or declaration, an output that exists without ``force``.
        CheckFailed: ONNX Runtime's outputs differ from the module's.
    """
    import torch

    from exporter.module import export_module

    specs, sizes = parse_inputs(inputs)
    if opset is not None and not 14 <= opset <= 23:
        raise UsageError(f"--opset {opset}: choose an opset between 14 and 23")
    model = load_factory(factory).eval()
    task = get_task("module")
    feeds = task.encode(task.processor(specs, sizes), _Rows(sizes.get(BATCH_DIM, 2)))
    example = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
    with torch.inference_mode():
        result = model(**example)
    if isinstance(result, dict):
        names = list(result)
    elif isinstance(result, (tuple, list)):
        names = [f"output_{i}" for i in range(len(result))]
    else:
        names = ["output"]
    axes = {s.name: {a: d for a, d in enumerate(s.shape) if isinstance(d, str)} for s in specs}
    return export_module(
        model, example, Path(out), output_names=names, dynamic_axes={k: v for k, v in axes.items() if v},
        opset=opset or 18, dynamo=dynamo, force=force, task=task.name, external_data=external_data,
        command=command, **({"tolerance": tolerance} if tolerance is not None else {}),
        extra_manifest={"module": {"factory": factory, "inputs": specs_to_list(specs), "dim_sizes": sizes}},
    )


class _Rows:
    """A stand-in batch of ``n`` rows for the synthetic feed builder (export's example inputs)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def fingerprint(self) -> str:
        return f"export:{self.n}"
