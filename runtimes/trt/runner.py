"""Run a TensorRT engine artifact (``kind: trt``) on an NVIDIA GPU.

Buffers are torch CUDA tensors and work is queued on a ``torch.cuda.Stream``, so the runner needs
no pycuda or cuda-python. The execution API is TensorRT's named-tensor one (10.x and 11.x):
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``.
"""

from __future__ import annotations

import numpy as np

from runtimes.base import Runner
from runtimes.errors import UsageError
from runtimes.integrity import require_unchanged
from runtimes.specs import TensorSpec
from runtimes.trt.engine import (
    TRT_TO_NUMPY, check_engine_compat, engine_from_bytes, engine_host_code, gpu_info, require_cuda, require_tensorrt,
    select_profile,
)


def _torch_dtype(name: str):
    import torch

    return {
        "float32": torch.float32, "float16": torch.float16, "int8": torch.int8,
        "uint8": torch.uint8, "int32": torch.int32, "int64": torch.int64, "bool": torch.bool,
    }[name]


class TensorRTRunner(Runner):
    """A TensorRT execution context over the artifact's ``model.plan``.

    Options: ``cuda_graph`` (capture the engine's launch in a CUDA graph per feed shape and replay it;
    a new shape captures anew, so it pays off for fixed shapes only); ``trust_engine_code`` (let
    TensorRT load the host code a version-compatible or plugin engine carries; refused without it).
    """

    backend = "tensorrt"
    accepts = ("trt",)
    devices = ("cuda",)
    _buffers_on = "cuda"  # torch device of the bound buffers (a CPU test of the binding logic sets "cpu")

    def __init__(self, artifact, *, device: str = "cuda", threads: int | None = None, cuda_graph: bool = False,
                 trust_engine_code: bool = False):
        super().__init__(artifact, device=device, threads=threads)
        self.cuda_graph = bool(cuda_graph)
        self.trust_engine_code = bool(trust_engine_code)
        self._engine = self._context = self._runtime = self._stream = None
        self._graph = None  # (key, CUDAGraph, static inputs, static outputs)

    # -- lifecycle --------------------------------------------------------------------------
    def activate_impl(self) -> None:
        """Raises:
            UsageError: the engine carries host code and ``trust_engine_code`` is off; its files changed
                since it was built (sha256); TensorRT or a GPU is missing, the engine was built for another
                TensorRT or GPU, or ``model.plan`` is missing or not an engine.
        """
        # decided before anything is read or loaded, and on a machine without TensorRT too
        host_code = engine_host_code(self.artifact.manifest, self.trust_engine_code, self.artifact.path)
        require_unchanged(self.artifact, "the TensorRT runner")
        trt = require_tensorrt()
        require_cuda()
        import torch

        manifest = self.artifact.manifest
        gpu = gpu_info()
        reason = check_engine_compat(manifest, trt.__version__, gpu["name"], gpu["compute_capability"])
        if reason:
            raise UsageError(f"{self.artifact.path}: {reason}")
        path = self.artifact.model_file
        if not path.is_file():
            raise UsageError(f"{self.artifact.path}: manifest names {path.name} but the file is missing; rebuild the engine")
        self._runtime, self._engine = engine_from_bytes(trt, path.read_bytes(), path=path, host_code_allowed=host_code)
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise RuntimeError(f"{path}: TensorRT could not create an execution context (see the TensorRT log)")
        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._output_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        named = {s.name: s for s in (*self.artifact.inputs, *self.artifact.outputs)}
        self._inputs = [self._spec(n, named.get(n)) for n in self._input_names]
        self._outputs = [self._spec(n, named.get(n)) for n in self._output_names]
        dynamic = [n for n in self._input_names if any(int(d) < 0 for d in engine.get_tensor_shape(n))]
        self._profiles = [
            {n: tuple(tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(n, k)) for n in dynamic}
            for k in range(engine.num_optimization_profiles)
        ]
        self._stream = torch.cuda.Stream()
        self._active_profile = None
        self._trt_version = trt.__version__
        self._gpu = gpu

    def _spec(self, name: str, declared: TensorSpec | None) -> TensorSpec:
        """Engine dtype and shape, with -1 dims named as the manifest (the ONNX graph) names them."""
        dtype = self._engine.get_tensor_dtype(name).name
        if dtype not in TRT_TO_NUMPY:  # BF16, FP8, INT4, FP4, E8M0: no numpy type to feed or return
            raise UsageError(f"{self.artifact.path}: engine tensor {name!r} is TensorRT {dtype}, which this runner "
                             f"cannot bind (it binds {', '.join(TRT_TO_NUMPY)}); keep such types inside the model, "
                             "not at its inputs or outputs")
        shape = tuple(int(d) for d in self._engine.get_tensor_shape(name))
        names = declared.shape if declared is not None and len(declared.shape) == len(shape) else (None,) * len(shape)
        dims = tuple(d if d >= 0 else (n if isinstance(n, str) else None) for d, n in zip(shape, names))
        return TensorSpec(name, TRT_TO_NUMPY.get(dtype, dtype.lower()), dims)

    def deactivate_impl(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()
        self._graph = None
        self._context = None
        self._engine = None
        self._runtime = None
        self._stream = None

    def input_specs_impl(self) -> list[TensorSpec]:
        return list(self._inputs)

    def output_specs_impl(self) -> list[TensorSpec]:
        return list(self._outputs)

    # -- inference --------------------------------------------------------------------------
    def infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raises:
            UsageError: a feed shape lies outside every optimization profile (checked before running).
        """
        import torch

        shapes = {n: tuple(int(d) for d in a.shape) for n, a in feeds.items()}
        index = select_profile(self._profiles, shapes)
        key = (index, tuple(sorted(shapes.items())))
        with torch.cuda.stream(self._stream):
            if self._active_profile != index:
                if not self._context.set_optimization_profile_async(index, self._stream.cuda_stream):
                    raise RuntimeError(f"{self.label}: TensorRT refused optimization profile {index}")
                self._active_profile = index
                self._graph = None
            if self.cuda_graph and self._graph is not None and self._graph[0] == key:
                _, graph, static_in, static_out = self._graph
                for name, array in feeds.items():
                    static_in[name].copy_(torch.from_numpy(np.ascontiguousarray(array)))
                graph.replay()
                result = {n: t.cpu().numpy() for n, t in static_out.items()}
            else:
                inputs, outputs = self._bind(feeds)
                self._execute()
                result = {n: t.cpu().numpy() for n, t in outputs.items()}
                if self.cuda_graph:
                    self._capture(key, inputs, outputs)
        self._stream.synchronize()
        return result

    def _bind(self, feeds: dict[str, np.ndarray]):
        """Copy feeds to the GPU, set shapes and addresses, allocate outputs at the shapes TensorRT infers."""
        import torch

        inputs = {n: torch.from_numpy(np.ascontiguousarray(a)).to(self._buffers_on) for n, a in feeds.items()}
        for name, tensor in inputs.items():
            if not self._context.set_input_shape(name, tuple(tensor.shape)):
                raise UsageError(f"{self.label}: TensorRT rejects shape {list(tensor.shape)} for input {name!r}")
            self._set_address(name, tensor)
        outputs = {}
        for spec in self._outputs:
            shape = tuple(int(d) for d in self._context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"{self.label}: output {spec.name!r} has a data-dependent shape, which this runner does not support")
            outputs[spec.name] = torch.empty(shape, dtype=_torch_dtype(spec.dtype), device=self._buffers_on)
            self._set_address(spec.name, outputs[spec.name])
        return inputs, outputs

    def _set_address(self, name: str, tensor) -> None:
        if not self._context.set_tensor_address(name, tensor.data_ptr()):  # unknown name or misaligned pointer
            raise RuntimeError(f"{self.label}: TensorRT refuses the buffer for tensor {name!r} (see the TensorRT log)")

    def _execute(self) -> None:
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError(f"{self.label}: TensorRT execute_async_v3 failed (see the TensorRT log)")

    def _capture(self, key, inputs: dict, outputs: dict) -> None:
        """Capture one launch on our stream into a CUDA graph. The launch just made on these buffers
        is the enqueue TensorRT needs after a shape change before a capture; addresses stay fixed
        because the graph keeps the tensors."""
        import torch

        self._stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self._stream):
            self._execute()
        self._graph = (key, graph, inputs, outputs)

    def describe(self) -> dict:
        out = {**super().describe(), "cuda_graph": self.cuda_graph, "trust_engine_code": self.trust_engine_code,
               "precision": self.artifact.manifest.get("precision"),
               "profiles": len(self.artifact.manifest.get("profiles") or [])}
        if self._engine is not None:
            out.update({"tensorrt": self._trt_version, "gpu": self._gpu["name"],
                        "compute_capability": self._gpu["compute_capability"]})
        return out
