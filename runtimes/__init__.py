"""Runtimes: one interface (open an artifact, read its specs, ``infer``, close) for every backend.

Backends are chosen by name and imported only when used, so importing this package never imports
torch, onnxruntime or tensorrt. This package knows nothing of ``exporter`` or ``benchmarks``.
"""

from __future__ import annotations

import importlib
import os

from runtimes.artifact import Artifact, load_artifact
from runtimes.base import Runner
from runtimes.errors import CheckFailed, EnginewrightError, UsageError
from runtimes.specs import TensorSpec

# backend name -> (module, class, default device). Adding a backend is adding a module and one line here.
BACKENDS: dict[str, tuple[str, str, str]] = {
    "torch": ("runtimes.pyt.runner", "TorchRunner", "cpu"),
    "onnxruntime": ("runtimes.onnxrt.runner", "OnnxRuntimeRunner", "cpu"),
    "tensorrt": ("runtimes.trt.runner", "TensorRTRunner", "cuda"),
    "llama.cpp": ("runtimes.llamacpp.runner", "LlamaCppRunner", "cpu"),  # a GGUF-imported model's file, as a peer
}
_DEFAULT_FOR_KIND = {"hf": "torch:cpu", "onnx": "onnxruntime:cpu", "trt": "tensorrt:cuda"}

__all__ = [
    "Artifact", "BACKENDS", "CheckFailed", "EnginewrightError", "Runner", "TensorSpec", "UsageError",
    "backend_class", "default_runtime", "load_artifact", "open_runner", "parse_runtime", "usable_cores",
]


def usable_cores() -> int:
    """The cores this process may run on (its affinity), the thread count every runner is timed with."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def parse_runtime(runtime: str) -> tuple[str, str]:
    """``"onnxruntime:cuda"`` -> ``("onnxruntime", "cuda")``; the device defaults to the backend's
    own (``cpu``, or ``cuda`` for tensorrt).

    Raises:
        UsageError: unknown backend.
    """
    backend, _, device = runtime.partition(":")
    if backend not in BACKENDS:
        raise UsageError(f"unknown runtime {runtime!r}; choose one of {sorted(BACKENDS)} (optionally ':cpu', ':cuda', ...)")
    return backend, device or BACKENDS[backend][2]


def backend_class(backend: str) -> type[Runner]:
    module, cls, _ = BACKENDS[backend]
    return getattr(importlib.import_module(module), cls)


def default_runtime(artifact: Artifact) -> str:
    return _DEFAULT_FOR_KIND[artifact.kind]


def open_runner(artifact: Artifact | str | os.PathLike, runtime: str | None = None, **options) -> Runner:
    """Create a runner (not yet active) for ``artifact`` on ``runtime`` (default: by artifact kind).

    ``options`` go to the backend: ``threads`` for all; ``provider_options``, ``graph_optimization``
    and ``session_options`` for onnxruntime; ``attn_implementation`` for torch.
    """
    if not isinstance(artifact, Artifact):
        artifact = load_artifact(artifact)
    backend, device = parse_runtime(runtime or default_runtime(artifact))
    return backend_class(backend)(artifact, device=device, **options)
