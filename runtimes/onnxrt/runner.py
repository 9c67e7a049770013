"""Run an ONNX artifact with ONNX Runtime on the CPU, CUDA or TensorRT execution provider."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from runtimes.artifact import model_files_sha256
from runtimes.base import Runner
from runtimes.errors import UsageError
from runtimes.integrity import onnx_data_files
from runtimes.onnx_graph import graph_precision
from runtimes.specs import TensorSpec

# device -> providers in priority order (ONNX Runtime falls back along the list per node)
PROVIDERS = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
_GRAPH_OPT = ("disabled", "basic", "extended", "all")
_ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
    "tensor(bool)": "bool", "tensor(bfloat16)": "bfloat16",
}


def tensorrt_ep_defaults(artifact, cache_dir) -> dict:
    """Options for ONNX Runtime's TensorRT execution provider: an engine cache of the artifact's own,
    ``cache_dir/engines/<hash of its model files>`` (ONNX Runtime keys its cached engines on graph,
    tensor and node names and library versions, not on weight values, so a shared directory would
    hand a re-trained model of the same architecture the old engine), a timing cache in
    ``cache_dir`` shared by all (timing caches are meant to be), and the precision flag the graph
    needs (INT8 for Q/DQ graphs, FP16 for FP16 ones). Options the user passes override these."""
    engines = Path(cache_dir) / "engines" / model_files_sha256(artifact)[:16]
    opts = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(engines),
            "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache_dir)}
    precision = graph_precision(artifact.model_file)
    if precision == "int8":
        opts["trt_int8_enable"] = True
    elif precision == "fp16":
        opts["trt_fp16_enable"] = True
    return opts


ORT_MISSING = ("onnxruntime is not installed: it comes with the cpu extra (make install), or the gpu extra on NVIDIA "
               "GPU machines (make install EXTRAS=gpu,dev; README, 'GPU install')")

# ONNX Runtime's CUDA EP runs FP32 MatMuls in TF32 unless told otherwise; PyTorch's default (and
# our baseline) is strict FP32, so FP32 rows compare like with like. `cuda:use_tf32=1` turns it on.
CUDA_EP_DEFAULTS = {"use_tf32": "0"}


def _load_gpu_libraries(device: str) -> None:
    """Load the libraries the GPU providers link before the session needs them. torch's CUDA and
    cuDNN wheels are what ONNX Runtime's own ``preload_dlls`` would look for (and loading torch
    first is what its docs ask); pip's TensorRT keeps ``libnvinfer.so.10`` in ``tensorrt_libs``,
    off the loader's path, and ``import tensorrt`` loads it. A session's provider that still
    cannot start is refused after creation."""
    for module in ("torch", "tensorrt") if device == "tensorrt" else ("torch",):
        try:
            __import__(module)
        except ImportError:
            pass


def _spec(arg) -> TensorSpec:
    shape = tuple(d if isinstance(d, (int, str)) else None for d in arg.shape)
    return TensorSpec(arg.name, _ORT_DTYPES.get(arg.type, arg.type), shape)


class OnnxRuntimeRunner(Runner):
    """An ``onnxruntime.InferenceSession`` over the artifact's ``model.onnx``.

    Options: ``threads`` (intra-op; inter-op is 1, execution sequential), ``graph_optimization``
    (``disabled|basic|extended|all``), ``provider_options`` (a dict for the first provider, such as
    ``{"device_id": 0}`` for CUDA or ``trt_profile_min_shapes``/``_opt_shapes``/``_max_shapes`` (all
    three, every dynamic input named: ``"input_ids:1x1,attention_mask:1x1"``) for TensorRT, whose
    engine/timing caches and precision flag are set by default, see ``tensorrt_ep_defaults``) and
    ``session_options`` (attribute name -> value on ``SessionOptions``).
    """

    backend = "onnxruntime"
    accepts = ("onnx",)
    devices = tuple(PROVIDERS)

    def __init__(
        self,
        artifact,
        *,
        device: str = "cpu",
        threads: int | None = None,
        graph_optimization: str = "all",
        provider_options: Mapping | None = None,
        session_options: Mapping | None = None,
    ):
        super().__init__(artifact, device=device, threads=threads)
        if graph_optimization not in _GRAPH_OPT:
            raise UsageError(f"graph_optimization {graph_optimization!r}: choose one of {list(_GRAPH_OPT)}")
        self.graph_optimization = graph_optimization
        self.provider_options = dict(provider_options or {})
        self.session_options = dict(session_options or {})
        self._session = None

    def activate_impl(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise UsageError(ORT_MISSING) from None

        wanted = PROVIDERS[self.device]
        available = ort.get_available_providers()
        if wanted[0] not in available:
            raise UsageError(
                f"runtime onnxruntime:{self.device} needs {wanted[0]}, which this onnxruntime does not have "
                f"(available: {', '.join(available)}); install onnxruntime-gpu in place of onnxruntime (README, 'GPU install')"
            )
        so = ort.SessionOptions()
        so.graph_optimization_level = {
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.graph_optimization]
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.inter_op_num_threads = 1
        if self.threads:
            so.intra_op_num_threads = self.threads
        so.log_severity_level = 3
        for key, value in self.session_options.items():
            if not hasattr(so, key):
                raise UsageError(f"onnxruntime session option {key!r} does not exist on SessionOptions")
            setattr(so, key, value)
        first = dict(self.provider_options)
        cuda = dict(CUDA_EP_DEFAULTS)
        if self.device == "cuda":
            first = {**cuda, **first}
        elif self.device == "tensorrt":
            import os

            cache = Path(os.environ.get("ENGINEWRIGHT_CACHE", Path.home() / ".cache" / "enginewright")) / "ort-tensorrt"
            first = {**tensorrt_ep_defaults(self.artifact, cache), **first}
            Path(first["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
            Path(first["trt_timing_cache_path"]).mkdir(parents=True, exist_ok=True)
            if "device_id" in first:  # the CUDA EP takes the nodes TensorRT does not: same GPU
                cuda["device_id"] = first["device_id"]
        self._effective_provider_options = first
        options = {"CUDAExecutionProvider": cuda} if self.device == "tensorrt" else {}
        providers = [(wanted[0], first)] + [(p, options.get(p, {})) for p in wanted[1:]]
        path = self.artifact.model_file
        onnx_data_files(path, self.artifact.path)  # external data stays inside the artifact; the graph parses
        if self.device != "cpu":
            _load_gpu_libraries(self.device)
        try:
            self._session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as e:  # onnxruntime raises its own pybind exception types, none of them public
            kind = type(e).__name__
            text = (str(e).strip().splitlines() or [""])[0][:300]
            if kind in ("InvalidProtobuf", "InvalidGraph", "NoSuchFile") or (
                    kind in ("Fail", "InvalidArgument") and self.device == "cpu"):
                raise UsageError(f"{path}: onnxruntime cannot load this model ({kind}: {text}); re-export the artifact") from None
            if self.device != "cpu":  # a provider option or the GPU stack, as often as the model
                raise UsageError(f"runtime onnxruntime:{self.device}: {wanted[0]} could not open {path} ({kind}: {text}); "
                                 "check the --provider-option values and the GPU install (README, 'GPU install')") from None
            raise
        # onnxruntime would otherwise retry a failed run() on the next provider and carry on there,
        # timing CUDA or CPU under this runner's name
        self._session.disable_fallback()
        active = self._session.get_providers()
        if active[0] != wanted[0]:
            # onnxruntime falls back to the next provider, with a warning only, when one is compiled
            # in but cannot start (its CUDA, cuDNN or TensorRT libraries missing or of another major)
            self._session = None
            raise UsageError(
                f"runtime onnxruntime:{self.device}: onnxruntime has {wanted[0]} but could not start it and fell back to "
                f"{active[0]}; install the CUDA{', cuDNN and TensorRT' if self.device == 'tensorrt' else ' and cuDNN'} "
                f"libraries this onnxruntime-gpu was built for (README, 'GPU install')")
        self._inputs = [_spec(a) for a in self._session.get_inputs()]
        self._outputs = [_spec(a) for a in self._session.get_outputs()]

    def deactivate_impl(self) -> None:
        self._session = None

    def input_specs_impl(self) -> list[TensorSpec]:
        return list(self._inputs)

    def output_specs_impl(self) -> list[TensorSpec]:
        return list(self._outputs)

    def infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(None, feeds)
        return {s.name: v for s, v in zip(self._outputs, values)}

    @property
    def prefers_kv_step(self) -> bool:
        """IO binding pays on a GPU (the cache stays on the device); on the CPU ``run`` copies nothing."""
        return self.device != "cpu"

    def kv_step(self, feeds: Mapping[str, np.ndarray], past: Mapping | None, present_prefix: str = "present.",
                past_prefix: str = "past_key_values."):
        """One generation step through IO binding: ``feeds`` (ids, mask, positions; no cache) as numpy,
        ``past`` as the ``OrtValue``s a previous step returned (None: bind ``feeds``' own empty cache).
        Returns the logits as numpy and the ``present.*`` outputs as ``OrtValue``s, renamed to the past
        inputs they feed next, so the cache stays in ONNX Runtime's memory between steps."""
        self._require_active()
        binding = self._session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name, value in (past or {}).items():
            binding.bind_ortvalue_input(name, value)
        device = "cuda" if self.device != "cpu" else "cpu"
        device_id = int(self._effective_provider_options.get("device_id", 0)) if device == "cuda" else 0
        for spec in self._outputs:
            binding.bind_output(spec.name, "cpu" if spec.name == "logits" else device, device_id)
        self._session.run_with_iobinding(binding)
        out = dict(zip((s.name for s in self._outputs), binding.get_outputs()))
        logits = out.pop("logits").numpy()
        return logits, {past_prefix + k[len(present_prefix):]: v for k, v in out.items() if k.startswith(present_prefix)}

    def describe(self) -> dict:
        import onnxruntime as ort

        so = self._session.get_session_options() if self._session is not None else None
        return {
            **super().describe(),
            "threads": so.intra_op_num_threads if so is not None else self.threads,
            "providers": self._session.get_providers() if self._session is not None else list(PROVIDERS[self.device]),
            "graph_optimization": self.graph_optimization,
            **({"provider_options": self._effective_provider_options}
               if getattr(self, "_effective_provider_options", None) else {}),
            "onnxruntime": ort.__version__,
        }
