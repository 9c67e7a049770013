"""What a TensorRT engine needs around it: the libraries, the engine manifest, compatibility of an
engine with the machine it is opened on, and the choice of optimization profile for a feed.

Everything here but ``require_tensorrt``, ``require_cuda``, ``gpu_info`` and ``engine_from_bytes``
is plain Python, testable without TensorRT or a GPU.
"""

from __future__ import annotations

import functools

from collections.abc import Mapping, Sequence
from pathlib import Path

from runtimes.manifests import EngineManifest
from runtimes.errors import UsageError

INSTALL_HINT = ("TensorRT is not installed: on a GPU machine, make install EXTRAS=gpu,dev (TensorRT 10 for CUDA 13, "
                "with onnxruntime-gpu in place of onnxruntime; see README 'GPU install')")
MODEL_FILE = "model.plan"
HARDWARE_LEVELS = ("none", "ampere_plus")
AMPERE = (8, 0)

# tensorrt.DataType member name -> numpy dtype name. By name, so the table needs no tensorrt import.
TRT_TO_NUMPY = {
    "FLOAT": "float32", "HALF": "float16", "INT8": "int8", "UINT8": "uint8",
    "INT32": "int32", "INT64": "int64", "BOOL": "bool",
}

Profile = Mapping[str, tuple[Sequence[int], Sequence[int], Sequence[int]]]


def require_tensorrt():
    """The ``tensorrt`` module.

    Raises:
        UsageError: TensorRT is not installed (one line that says how to install it).
    """
    try:
        import tensorrt
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return tensorrt


def require_cuda() -> None:
    """Raises:
        UsageError: torch sees no NVIDIA GPU (TensorRT builds and runs on one only).
    """
    import torch

    if not torch.cuda.is_available():
        raise UsageError("no NVIDIA GPU is visible to torch (torch.cuda.is_available() is False); TensorRT engines "
                         "build and run on an NVIDIA GPU only: use a GPU machine (README, 'GPU install')")


def trt_major(version: str) -> int:
    """``"10.8.0.43"`` -> 10. Paths that differ between TensorRT 10 and 11 branch on this."""
    return int(str(version).split(".")[0])


def _version(version: str) -> tuple[int, ...]:
    """``"10.8.0.43"`` -> ``(10, 8, 0, 43)``, padded to four parts."""
    parts = tuple(int(p) for p in str(version).split(".")[:4] if p.isdigit())
    return parts + (0,) * (4 - len(parts))


def cc_tuple(value) -> tuple[int, int]:
    if isinstance(value, str):
        major, _, minor = value.partition(".")
        return int(major), int(minor or 0)
    return int(value[0]), int(value[1])


def gpu_info(device: int = 0) -> dict:
    """``{"name", "compute_capability": "9.0"}`` of a CUDA device, from torch."""
    import torch

    props = torch.cuda.get_device_properties(device)
    return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}"}


def engine_manifest(*, tensorrt_version: str, gpu: Mapping, profiles: Sequence[Profile], precision: str,
                    builder_options: Mapping, onnx_sha256: str, version_compatible: bool = False,
                    hardware_compatible: bool = False, inputs: Sequence[Mapping] = (),
                    outputs: Sequence[Mapping] = (), task: str | None = None, source: Mapping | None = None,
                    command: str | None = None, cache_key: str | None = None) -> dict:
    """The manifest of an engine artifact (``kind: trt``): what it was built from, with what, for which
    GPU, and the optimization profiles it accepts. Plain data; file hashes are added by the writer."""
    return EngineManifest(
        task=task, model_file=MODEL_FILE, inputs=[dict(s) for s in inputs], outputs=[dict(s) for s in outputs],
        profiles=[{name: [list(s) for s in mom] for name, mom in p.items()} for p in profiles], precision=precision,
        tensorrt={"version": str(tensorrt_version), "version_compatible": bool(version_compatible),
                  "hardware_compatibility": "ampere_plus" if hardware_compatible else "none"},
        gpu={"name": gpu["name"], "compute_capability": str(gpu["compute_capability"])}, builder=dict(builder_options),
        onnx_sha256=onnx_sha256, source=dict(source) if source else None, cache_key=cache_key, command=command,
    ).to_dict()


def check_engine_compat(manifest: Mapping, trt_version: str, gpu_name: str, compute_capability) -> str | None:
    """Why an engine described by ``manifest`` cannot run here, in one line, or None when it can.

    TensorRT runs an engine only under the TensorRT version that built it, down to the patch and build
    number ("expecting library version 10.0.1.6 got 10.0.0.6"), unless it was built
    version-compatible (then any runtime at least as new), and only on the compute capability it was
    built for, unless it was built hardware-compatible (Ampere+: then any Ampere or newer GPU).
    ``compute_capability`` is ``(major, minor)`` or ``"major.minor"``.
    """
    trt_info = manifest.get("tensorrt") or {}
    built = trt_info.get("version")
    gpu = manifest.get("gpu") or {}
    if not built or not gpu.get("compute_capability"):
        return "the manifest lacks the TensorRT version or GPU it was built for; rebuild the engine with enginewright build"
    want, have = _version(built), _version(trt_version)
    if want != have:
        if not trt_info.get("version_compatible"):
            return (f"the engine was built with TensorRT {built} and this is TensorRT {trt_version}; engines run only "
                    f"under the exact TensorRT version that built them: rebuild it here (or build with --version-compatible)")
        if have < want:
            return (f"the engine was built version-compatible with TensorRT {built}, which runs on that version or "
                    f"newer; this is TensorRT {trt_version}: upgrade TensorRT or rebuild the engine here")
    built_cc, here_cc = cc_tuple(gpu["compute_capability"]), cc_tuple(compute_capability)
    if built_cc != here_cc:
        level = trt_info.get("hardware_compatibility", "none")
        if level == "ampere_plus":
            if here_cc < AMPERE:
                return (f"the engine is hardware-compatible for Ampere and newer GPUs; this GPU ({gpu_name}) has "
                        f"compute capability {here_cc[0]}.{here_cc[1]}: rebuild it here without --hardware-compatible")
        else:
            return (f"the engine was built for {gpu.get('name', '?')} (compute capability {built_cc[0]}.{built_cc[1]}) "
                    f"and this GPU is {gpu_name} ({here_cc[0]}.{here_cc[1]}); rebuild it here (or build with "
                    f"--hardware-compatible for Ampere and newer)")
    return None


TRUST_FLAG = "--trust-engine-code"


def engine_host_code(manifest: Mapping, trust: bool, where) -> bool:
    """Whether to let TensorRT deserialize host code for the engine ``manifest`` describes: True only when
    the engine needs it and the user trusts it (``trust``, the ``--trust-engine-code`` flag).

    An engine carries host code when it was built version-compatible (TensorRT embeds its lean runtime,
    a shared library, in the plan) or with plugin libraries (``tensorrt.plugins`` in the manifest, which
    enginewright's own build never writes). Everything else is loaded with host code refused.

    Raises:
        UsageError: the engine needs host code and ``trust`` is false; or the manifest's ``tensorrt``
            fields have the wrong type. One line naming the engine and the flag.
    """
    info = manifest.get("tensorrt") or {}
    if not isinstance(info, Mapping):
        raise UsageError(f"{where}: field 'tensorrt' must be an object; rebuild the engine with enginewright build")
    vc, plugins = info.get("version_compatible", False), info.get("plugins") or []
    if not isinstance(vc, bool) or not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise UsageError(f"{where}: field 'tensorrt' has version_compatible {vc!r} and plugins {plugins!r}; expected "
                         "true/false and a list of names: rebuild the engine with enginewright build")
    carries = ([f"plugin libraries {', '.join(plugins)}"] if plugins else []) + (
        ["TensorRT's lean runtime (it was built version-compatible)"] if vc else [])
    if carries and not trust:
        raise UsageError(f"{where}: the engine carries host code ({' and '.join(carries)}), which TensorRT runs when it "
                         f"loads the engine; pass {TRUST_FLAG} only if you built it or trust whoever did")
    return bool(carries)


def _fmt(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


def select_profile(profiles: Sequence[Profile], shapes: Mapping[str, Sequence[int]]) -> int:
    """Index of the first optimization profile whose [min, max] ranges cover every shape in ``shapes``.

    Inputs a profile does not name (static inputs) are not checked.

    Raises:
        UsageError: no profile covers the feed; names the input, its shape and the profile ranges.
    """
    if not profiles:
        return 0
    failures: list[tuple[str, tuple]] = []
    for index, profile in enumerate(profiles):
        bad = None
        for name, shape in shapes.items():
            if name not in profile:
                continue
            lo, _, hi = profile[name]
            if len(shape) != len(lo) or any(not a <= s <= b for s, a, b in zip(shape, lo, hi)):
                bad = (name, tuple(int(s) for s in shape))
                break
        if bad is None:
            return index
        failures.append(bad)
    name, shape = failures[0]
    ranges = "; ".join(f"profile {i}: {_fmt(p[name][0])}..{_fmt(p[name][2])}"
                       for i, p in enumerate(profiles) if name in p)
    raise UsageError(f"input {name!r} has shape {_fmt(shape)}, outside every optimization profile of the engine "
                     f"({ranges}); feed shapes within a profile or rebuild with --shapes covering {_fmt(shape)}")


@functools.cache
def trt_logger(trt):
    """One ``tensorrt.Logger`` per process (TensorRT keeps the first logger it is given and warns
    when a builder or runtime brings another), at WARNING."""
    return trt.Logger(trt.Logger.WARNING)


def engine_from_bytes(trt, data: bytes, *, path: Path, host_code_allowed: bool = False):
    """Deserialize an engine with ``tensorrt.Runtime``.

    ``host_code_allowed`` is needed for version-compatible engines, which carry their lean runtime; it
    is set explicitly either way (``engine_host_code`` decides it). No plugin library is loaded here
    (no ``init_libnvinfer_plugins``, no ``load_library``).

    Raises:
        UsageError: the bytes are not an engine this TensorRT can load (truncated, or another version).
    """
    runtime = trt.Runtime(trt_logger(trt))
    runtime.engine_host_code_allowed = bool(host_code_allowed)
    engine = runtime.deserialize_cuda_engine(data) if data else None
    if engine is None:
        raise UsageError(f"{path}: TensorRT {trt.__version__} cannot deserialize this engine ({len(data)} bytes: "
                         "truncated, corrupt, or built by another TensorRT); rebuild it with enginewright build")
    # Returned with the engine so the caller keeps it alive as long as the engine (the safe order in every version).
    return runtime, engine
