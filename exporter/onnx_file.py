"""ONNX file helpers: checks, specs, external data, and a session that shows inner tensors."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from runtimes.errors import UsageError
from runtimes.specs import TensorSpec

EXTERNAL_DATA_SUFFIX = "_data"  # model.onnx -> model.onnx_data, as optimum names it
INLINE_BYTES = 1_800_000_000  # larger models reach ONNX Runtime through a file (protobuf's 2 GB limit)
_ELEM = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 3: "int8", 2: "uint8", 9: "bool", 16: "bfloat16"}


def uses_external_data(path: Path) -> bool:
    import onnx
    from onnx.external_data_helper import uses_external_data as _uses

    model = onnx.load(str(path), load_external_data=False)
    return any(_uses(t) for t in model.graph.initializer)


def save_model(model, path: Path, external: bool) -> None:
    """Save ``model`` at ``path``: inline, or with every initializer of 100 bytes or more in
    ``<name>_data`` beside it. External-data files that the previous ``path`` referenced and the new
    one does not are removed (read before saving: a model loaded with its external data no longer
    names the files it came from)."""
    import onnx

    path = Path(path)
    old = set()
    if path.is_file():
        old = {path.parent / e.value for t in onnx.load(str(path), load_external_data=False).graph.initializer
               for e in t.external_data if e.key == "location"}
    location = path.name + EXTERNAL_DATA_SUFFIX
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=location, size_threshold=100, convert_attribute=True)
    else:
        onnx.save_model(model, str(path))
    for f in old - ({path.parent / location} if external else set()):
        if f.is_file():
            os.remove(f)


def session_with_outputs(model, names, *, threads: int | None = None, optimize: bool = True):
    """A CPU ONNX Runtime session over a copy of ``model`` (a ModelProto, left as it is) whose graph
    outputs also include the tensors ``names`` (typed from the graph's value_info where known).
    ``optimize`` False turns ONNX Runtime's graph optimizations off. A model past protobuf's 2 GB
    limit reaches ONNX Runtime through a temporary file with external data."""
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    outputs = {o.name for o in m.graph.output}
    types = {v.name: v.type.tensor_type.elem_type for v in m.graph.value_info}
    for name in names:
        if name not in outputs:
            m.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None) if name in types
                                  else onnx.helper.make_empty_tensor_value_info(name))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if m.ByteSize() < INLINE_BYTES:
        return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    with tempfile.TemporaryDirectory() as tmp:
        save_model(m, Path(tmp) / "model.onnx", external=True)
        return ort.InferenceSession(str(Path(tmp) / "model.onnx"), so, providers=["CPUExecutionProvider"])


def save_with_external_data(path: Path) -> None:
    """Rewrite ``path`` so every initializer of 100 bytes or more lives in ``<name>_data`` beside it."""
    import onnx

    save_model(onnx.load(str(path), load_external_data=True), path, external=True)


def check_onnx(path: Path) -> dict:
    """``onnx.checker`` (full check) and strict shape inference, by path so external data works.

    Raises:
        UsageError: the file is not a valid ONNX model.
    """
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
        with tempfile.TemporaryDirectory(prefix=".shape-", dir=Path(path).parent) as d:  # in the staging dir, not /tmp
            onnx.shape_inference.infer_shapes_path(str(path), str(Path(d) / "inferred.onnx"), check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise UsageError(f"{path}: ONNX check failed: {str(e).strip().splitlines()[0][:300]}") from None
    return {"onnx_checker": "full_check", "shape_inference": "strict"}


def graph_specs(path: Path) -> tuple[list[TensorSpec], list[TensorSpec], int]:
    """Input specs, output specs and the default-domain opset of an ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def spec(v) -> TensorSpec:
        t = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
        return TensorSpec(v.name, _ELEM.get(t.elem_type, str(t.elem_type)), dims)

    init = {i.name for i in model.graph.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return [spec(v) for v in model.graph.input if v.name not in init], [spec(v) for v in model.graph.output], opset
