"""``check_tensorrt``: what would stop TensorRT from building an ONNX artifact, found without a GPU.

Reads the graph only (no TensorRT, no ONNX Runtime): operators against onnx-tensorrt's support
table, the opset, restrictions visible statically, element types after ONNX shape inference,
explicit-quantization (Q/DQ) placement, and optimization-profile coverage of dynamic input dims.
What only a build shows (tactics, memory, plugin libraries) stays unseen.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from exporter.passes import GraphIndex, attr as _attr
from exporter.trtbuild import fill_profile, profile_set
from exporter.writer import open_input
from exporter.trtcheck.operators import OPERATORS, OPSET_RANGE, SOURCE, TRT_VERSION, TYPE_NAMES, TYPED_INPUTS
from runtimes.artifact import Artifact
from runtimes.errors import UsageError
from runtimes.specs import TensorSpec

SEVERITIES = ("error", "warning", "info")
CONTRIB_FIX = "optimize with --target tensorrt (standard ops) instead of --target cpu/cuda"
WEIGHT_ONLY_FIX = ("quantize the float export with quantize --mode weight-only --target tensorrt (INT4/INT8 weights as "
                   "DequantizeLinear -> MatMul)")
# ONNX Runtime contrib ops with a fix of their own (the rest: CONTRIB_FIX)
CONTRIB_FIXES = {
    "MatMulNBits": WEIGHT_ONLY_FIX,
    "GroupQueryAttention": "optimize the plain decoder export with --target tensorrt (attention and its KV cache stay "
                           "standard MatMul/Softmax/Concat) instead of ONNX Runtime's decoder fusions",
}
# the compact decoder graph (exporter/decoder_graph.py) is written for ONNX Runtime's CPU kernels
COMPACT_DECODER_FIX = ("this is export --graph cpu's compact decoder graph, for ONNX Runtime's CPU kernels; export the "
                       "model with --graph portable (standard ops) for TensorRT")
REQUANTIZE_FIX = "re-quantize with quantize --target tensorrt (symmetric signed INT8, constant scales)"
QDQ_FIX = "quantize the float model with --target tensorrt (static Q/DQ) instead of --mode dynamic or QOperator form"
_ORT_QUANT_OPS = {"MatMulInteger", "DynamicQuantizeLinear", "QLinearMatMul", "QLinearConv", "ConvInteger"}
_LOW_PRECISION = {2, 3, 10, 16, 17, 18, 19, 20, 21, 22, 23}  # UINT8, INT8, FP16, BF16, FP8s, INT4/UINT4, FP4


@dataclass(frozen=True)
class Finding:
    """Something that stops the build (``error``), builds other than meant (``warning``), or a note (``info``)."""

    severity: str
    node: str
    op: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.severity:<7} {self.node} [{self.op}]: {self.message}; fix: {self.fix}"


@dataclass
class ReadinessReport:
    """Findings for one model; true when nothing would stop the build (no ``error`` finding)."""

    model: str
    opset: int
    findings: list[Finding] = field(default_factory=list)
    tensorrt: str = TRT_VERSION

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def infos(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "info"]

    def __bool__(self) -> bool:
        return not self.errors

    def __str__(self) -> str:
        head = (f"TensorRT {self.tensorrt} readiness of {self.model}: {'ready' if self else 'NOT ready'} "
                f"({len(self.errors)} errors, {len(self.warnings)} warnings, {len(self.infos)} notes)")
        ordered = sorted(self.findings, key=lambda f: SEVERITIES.index(f.severity))
        return "\n".join([head, *map(str, ordered)])

    def to_dict(self) -> dict:
        return {"schema_version": 1, "kind": "tensorrt-check", "model": self.model, "tensorrt": self.tensorrt, "source": dict(SOURCE), "opset": self.opset,
                "ready": bool(self), "findings": [asdict(f) for f in self.findings]}


class _Graph(GraphIndex):
    """The main graph's index with element types (after ONNX shape inference) added."""

    def __init__(self, model, base_dir: Path):
        import onnx

        super().__init__(model.graph, base_dir)
        self.g = model.graph
        self.types = {t.name: t.data_type for t in self.g.initializer}
        try:  # contrib ops are skipped by inference, not fatal
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
        except Exception:  # noqa: BLE001 - a graph inference cannot read still gets every other check
            inferred = self.g
        for v in [*inferred.input, *inferred.value_info, *inferred.output]:
            if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
                self.types[v.name] = v.type.tensor_type.elem_type
        for n in self.g.node:
            self.types.update((n.output[0], a.t.data_type) for a in n.attribute if n.op_type == "Constant" and a.name == "value")

    def const(self, name: str):
        """The value of an initializer or Constant output (through Identity), else None."""
        return super().const(name, through_identity=True)

    def type_of(self, name: str) -> str | None:
        t = self.types.get(name)
        return TYPE_NAMES.get(t, str(t)) if t else None


def _open(artifact_or_path) -> tuple[Path, Artifact | None]:
    p = artifact_or_path
    if not isinstance(p, Artifact) and Path(p).is_file():
        if Path(p).suffix != ".onnx":
            raise UsageError(f"{p}: not an ONNX file; pass an ONNX artifact directory or a .onnx file")
        return Path(p), None
    art = open_input(p, "onnx", "check --target tensorrt")
    return art.model_file, art


def check_tensorrt(artifact_or_path: str | os.PathLike | Artifact, *,
                   shapes: Mapping[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] | None = None
                   ) -> ReadinessReport:
    """Check an ONNX artifact (directory, ``Artifact`` or ``.onnx`` file) for TensorRT 10.x, and 11
    where it differs; the report holds every finding and is true when none is an error.

    ``shapes`` maps input names to an optimization profile ``(min, opt, max)``; inputs it leaves out
    take their dims from the same dim names in the inputs it gives (as ``build --shapes`` does), and a
    dynamic dim still uncovered is an error. Without it, dynamic dims are noted, not errors.

    Raises:
        UsageError: not an ONNX artifact or readable ONNX file; ``shapes`` names an input the model lacks, gives a
            rank other than the input's, breaks 1 <= min <= opt <= max, contradicts a fixed dim, or gives one
            dim name two ranges.
    """
    import onnx

    path, art = _open(artifact_or_path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf's decode errors have no common public type
        raise UsageError(f"{path}: not a readable ONNX model ({type(e).__name__}); re-export it") from None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    inits = {t.name for t in model.graph.initializer}
    dims = {v.name: [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
                     for d in v.type.tensor_type.shape.dim] for v in model.graph.input if v.name not in inits}
    if shapes is not None and not isinstance(shapes, Mapping):
        raise UsageError(f"shapes must map input names to (min, opt, max) shapes, got {type(shapes).__name__}")
    # the rule build's --shapes follows: inputs left out take their dims from the same dim names
    uncovered = (fill_profile([TensorSpec(n, "", tuple(d)) for n, d in dims.items()], shapes)[1]
                 if shapes is not None else None)
    g = _Graph(model, path.parent)
    report = ReadinessReport(model=str(path), opset=opset)

    def add(*args) -> None:
        report.findings.append(Finding(*args))

    lo, hi = OPSET_RANGE
    if not lo <= opset <= hi:
        add("error", "(model)", "opset", f"default-domain opset {opset} is outside TensorRT {TRT_VERSION}'s {lo}-{hi}",
            f"re-export with --opset between {lo} and {hi}")
    _check_nodes(g, model, opset, add)
    _check_quantization(g, add)
    _check_types(g, dims, add)
    _check_dims(dims, uncovered, art, add)
    return report


def _walk(graph, functions, seen=()):
    """Every node the parser reads: main graph, subgraphs, and the bodies of model-local functions
    (which it inlines) in place of their calls."""
    for i, node in enumerate(graph.node):
        key = (node.domain, node.op_type)
        if key in functions and key not in seen:
            yield from _walk(functions[key], functions, (*seen, key))
            continue
        yield node.name or f"<unnamed #{i}>", node
        for a in node.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _walk(sub, functions, seen)


def _check_nodes(g: _Graph, model, opset: int, add) -> None:
    compact = model.producer_version == "decoder-graph"
    for label, n in _walk(model.graph, {(f.domain, f.name): f for f in model.functions}):
        op, ins = n.op_type, list(n.input) + [""] * 7
        if n.domain not in ("", "ai.onnx"):
            contrib = n.domain.startswith("com.microsoft")
            fix = (COMPACT_DECODER_FIX if compact else CONTRIB_FIXES.get(op, CONTRIB_FIX)) if contrib else \
                f"use standard ONNX ops or a TensorRT plugin named {op}"
            what = "ONNX Runtime contrib operator" if contrib else f"operator of domain {n.domain!r}"
            add("error", label, f"{n.domain}::{op}", f"{what}: TensorRT's ONNX parser reads standard ONNX operators only", fix)
            continue
        support = OPERATORS.get(op)
        if support is None or not support.supported:
            why = "is not in TensorRT's operator table" if support is None else f"is not supported by TensorRT {TRT_VERSION}"
            note = f" ({support.restriction})" if support is not None and support.restriction else ""
            fix = QDQ_FIX if op in _ORT_QUANT_OPS else "rewrite it with supported standard ops, or provide a TensorRT plugin"
            add("error", label, op, f"{op} {why}{note}", fix)
            continue
        for k in TYPED_INPUTS.get(op, ()):
            t = g.type_of(ins[k]) if ins[k] else None
            if t and t not in support.types:
                add("error", label, op, f"input {k} ({ins[k]}) is {t}; TensorRT's {op} takes {', '.join(support.types)}",
                    f"cast it to one of {', '.join(support.types)} before this node")
        if op == "Cast" and (to := TYPE_NAMES.get(_attr(n, "to", 0), "?")) not in support.types:
            add("error", label, op, f"Cast to {to}: TensorRT casts only to {', '.join(support.types)}",
                "cast to FP32 instead" if to == "DOUBLE" else "remove the Cast or cast to a supported type")
        elif op in ("Unsqueeze", "Squeeze") and ins[1] and not g.is_const(ins[1]):
            add("warning", label, op, "the axes are computed in the graph; TensorRT must fold them to a constant "
                "(before 10.7 it needs an initializer)", "make the axes a constant (optimize --target tensorrt folds them)")
        elif op.startswith("Reduce") and opset >= (13 if op == "ReduceSum" else 18) and ins[1] and not g.is_const(ins[1]):
            add("error", label, op, "the axes input is computed in the graph; TensorRT needs an initializer",
                "make the axes a constant initializer")
        elif op == "LayerNormalization" and (used := [o for o in n.output[1:] if g.is_used(o)]):
            add("error", label, op, f"uses outputs {used}; TensorRT gives only the first output (Y)",
                "compute mean and inverse std-dev with separate ops")
        elif op == "Dropout" and ins[2] and ((v := g.const(ins[2])) is None or bool(v.any())):
            add("error", label, op, "is_training is not a constant False", "export the model in eval mode")
        elif op == "Attention" and (cache := [x for x in ins[4:7] + list(n.output[1:]) if x]):
            add("error", label, op, f"KV-cache inputs/outputs {cache} are not supported by TensorRT",
                "export without past/present key-values")
        elif op == "Constant" and any(a.name in ("sparse_value", "value_string", "value_strings") for a in n.attribute):
            add("error", label, op, "sparse or string constant", "use a dense numeric constant")


def _check_quantization(g: _Graph, add) -> None:
    # a graph that dequantizes constant weights and quantizes nothing is weight-only by design: one note,
    # not a mixed-precision warning per MatMul
    weight_only = not any(n.op_type == "QuantizeLinear" for n in g.g.node)
    only_weight, kinds = [], set()
    for i, n in enumerate(g.g.node):
        label = n.name or f"<unnamed #{i}>"
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.domain in ("", "ai.onnx"):
            _check_qdq(g, n, label, add)
        elif n.op_type in ("MatMul", "Gemm") and n.domain in ("", "ai.onnx") and len(n.input) > 1:
            w = g.made_by(n.input[1], "DequantizeLinear")
            if weight_only and w is not None and g.made_by(n.input[0], "DequantizeLinear") is None:
                only_weight.append(label)
                kinds.add(g.type_of(w.input[0]) or "?")
            else:
                _check_placement(g, n, label, add)
    if only_weight:
        add("info", f"{len(only_weight)} MatMuls", "weight-only", f"weight-only quantization ({'/'.join(sorted(kinds))} weights "
            "dequantized into float MatMuls; activations stay float): TensorRT keeps the weights low-precision and "
            "computes in the graph's float type", "none")


def _check_qdq(g: _Graph, n, label: str, add) -> None:
    if n.op_type == "DequantizeLinear" and _attr(n, "block_size", 0):
        _check_blocked(g, n, label, add)
    if not g.is_const(n.input[1]):
        add("error", label, n.op_type, "the scale is computed in the graph; TensorRT needs a constant scale "
            "(initializer or Constant)", REQUANTIZE_FIX)
    elif (scales := g.const(n.input[1])) is not None and not (scales > 0).all():
        add("error", label, n.op_type, f"{int((scales <= 0).sum())} scales are not positive; TensorRT takes strictly "
            "positive scales", "re-quantize with positive scales (enginewright's --target tensorrt quantizers write them)")
    zp = n.input[2] if len(n.input) > 2 and n.input[2] else None
    if n.op_type == "QuantizeLinear":  # without a zero point, Q makes UINT8 unless output_dtype says otherwise
        qtype = g.type_of(zp) if zp else TYPE_NAMES.get(_attr(n, "output_dtype", 0) or 2)
    else:
        qtype = g.type_of(n.input[0]) or (g.type_of(zp) if zp else None)
    if qtype == "UINT8":
        add("error", label, n.op_type, "UINT8 quantization: TensorRT's explicit quantization needs signed INT8", REQUANTIZE_FIX)
    elif qtype == "UINT4":
        add("error", label, n.op_type, "UINT4 weights (asymmetric): TensorRT dequantizes signed INT4 with zero point 0",
            WEIGHT_ONLY_FIX + " (symmetric)")
    elif zp is not None and (value := g.const(zp)) is None:
        add("error", label, n.op_type, "the zero point is computed in the graph; TensorRT needs a constant 0", REQUANTIZE_FIX)
    elif zp is not None and value.any():
        add("error", label, n.op_type, f"non-zero zero point (max |zp| {int(abs(value.astype('int64')).max())}); "
            "TensorRT quantizes symmetrically only (zero point 0)", REQUANTIZE_FIX)


def _check_blocked(g: _Graph, n, label: str, add) -> None:
    """Block dequantization as TensorRT 10 takes it (NvInfer.h, IDequantizeLayer; onnx-tensorrt's importer):
    INT4/FP8/FP4 only, one blocked axis among the last two, the block size implied by the shapes."""
    from exporter.weight_qdq import TRT_INT4_BLOCK_SIZES

    qtype, block = g.type_of(n.input[0]), _attr(n, "block_size", 0)
    data, scale = g.const(n.input[0]), g.const(n.input[1])
    if qtype not in ("INT4", "FP8", "FP4", "UINT4", None):
        add("error", label, n.op_type, f"{qtype} with block_size {block}: TensorRT block-dequantizes INT4, FP8 and FP4 "
            "only", "dequantize INT8 weights per output channel (quantize --mode weight-only --target tensorrt --bits 8)")
        return
    if data is None or scale is None:
        return
    axis = _attr(n, "axis", 1) % data.ndim
    if axis < data.ndim - 2:
        add("error", label, n.op_type, f"blocked on axis {axis} of weight {list(data.shape)}; TensorRT blocks one of the "
            "last two dimensions", WEIGHT_ONLY_FIX)
    elif data.shape[axis] % block:
        add("error", label, n.op_type, f"axis {axis} ({data.shape[axis]}) is not a multiple of block_size {block}: "
            f"TensorRT infers the block from the shapes ({data.shape[axis]} / {scale.shape[axis]}), not from the attribute",
            "keep this MatMul in float or use a block size that divides it")
    elif qtype == "INT4" and data.shape[-1] % 2:
        add("error", label, n.op_type, f"INT4 weight {list(data.shape)} with an odd last dimension: TensorRT packs INT4 "
            "in pairs", "keep this MatMul in float")
    elif qtype == "INT4" and block not in TRT_INT4_BLOCK_SIZES:
        add("warning", label, n.op_type, f"INT4 block size {block}: TensorRT's documentation lists "
            f"{' and '.join(map(str, TRT_INT4_BLOCK_SIZES))}; the build may find no kernel",
            "quantize --mode weight-only --target tensorrt --block-size 128")


def _check_placement(g: _Graph, n, label: str, add) -> None:
    dq = [g.made_by(x, "DequantizeLinear") for x in n.input[:2]]
    if (dq[0] is None) != (dq[1] is None):
        add("warning", label, n.op_type, f"mixed-precision {n.op_type}: only input {0 if dq[0] is not None else 1} is "
            "dequantized, so TensorRT runs it as weight-only or float math, not INT8",
            "put Q/DQ on both inputs (quantize --target tensorrt) or on neither")
    w = dq[1]
    if w is None or _attr(w, "block_size", 0):
        return
    q = g.made_by(w.input[0], "QuantizeLinear")  # a float weight quantized in the graph
    weight, scale = g.const(q.input[0] if q is not None else w.input[0]), g.const(w.input[1])
    if weight is None or scale is None or scale.size <= 1 or weight.ndim < 2:
        return
    axis = _attr(w, "axis", 1) % weight.ndim
    want = (0 if _attr(n, "transB", 0) else 1) if n.op_type == "Gemm" else weight.ndim - 1
    if axis != want:
        add("error", label, n.op_type, f"per-channel weight scale on axis {axis} of weight {list(weight.shape)}; "
            f"TensorRT needs the output-channel axis {want}", f"quantize the weight per output channel (axis {want})")


def _check_types(g: _Graph, dims: dict, add) -> None:
    graph_io = [*dims, *(o.name for o in g.g.output)]
    for name in graph_io:
        if g.type_of(name) == "DOUBLE":
            add("warning", name, "graph I/O", "DOUBLE tensor: TensorRT casts it to FP32, clamping to +-FLT_MAX",
                "export it as float32")
    inner = sorted(k for k, v in g.types.items() if v == 11 and k not in graph_io)
    if inner:
        add("warning", "(graph)", "DOUBLE", f"{len(inner)} DOUBLE tensors ({', '.join(inner[:3])}"
            f"{', ...' if len(inner) > 3 else ''}); TensorRT casts them to FP32", "cast down to float32 in the export")
    if wide := [name for name in dims if g.type_of(name) == "INT64"]:
        add("info", ", ".join(wide), "graph input", "INT64 inputs: TensorRT 10 reads INT64 natively; TensorRT 8.x/9 "
            "cast them down to INT32", "none for TensorRT 10; export int32 inputs for older TensorRT")
    if not _LOW_PRECISION & set(g.types.values()):
        add("info", "(graph)", "precision", "FP32 throughout: TensorRT 11 takes precision from the graph (no FP16/INT8 "
            "builder flags, no implicit INT8), so it builds FP32", "optimize --target tensorrt --fp16 for FP16, "
            "quantize --target tensorrt for INT8")


def _default_profiles(art: Artifact, what: str, dynamic: dict, add) -> None:
    """What ``build`` without ``--shapes`` would use: the task's profiles, or why it cannot derive them."""
    from runtimes.tasks import get_task

    try:
        profile_set(art.inputs, task=art.task, model_dir=art.path)
    except UsageError as e:
        add("error", ", ".join(dynamic), "input", f"dynamic dims {what}; build cannot derive default profiles: {e}",
            "pass build --shapes NAME:MIN,OPT,MAX for every dynamic input")
        return
    phases = get_task(art.task).profile_phases(art.path, (1, 8, 32), (1, 128, 512))
    said = "; ".join(f"{name}: " + ", ".join(f"{d} {'/'.join(map(str, r))}" for d, r in dims.items())
                     for name, dims in phases.items())
    add("info", ", ".join(dynamic), "input", f"dynamic dims {what}: build's default profiles (min/opt/max) are {said}",
        "build --dims NAME=MIN,OPT,MAX changes a dim; --shapes NAME:MIN,OPT,MAX checks a specific profile")


def _check_dims(dims: dict, uncovered: list | None, art: Artifact | None, add) -> None:
    """``uncovered``: the dynamic dims the given shapes leave uncovered, or None when no shapes were given."""
    if uncovered is None:
        dynamic = {name: [(d, s) for d, s in enumerate(shape) if not isinstance(s, int)] for name, shape in dims.items()}
        dynamic = {name: dd for name, dd in dynamic.items() if dd}
        if dynamic:
            what = "; ".join(f"{name} " + ", ".join(f"{d} ({s or '?'})" for d, s in dd) for name, dd in dynamic.items())
            if art is not None and art.inputs:
                _default_profiles(art, what, dynamic, add)
            else:
                add("warning", ", ".join(dynamic), "input", f"dynamic dims {what} and no manifest to derive profiles "
                    "from", "pass --shapes NAME:MIN,OPT,MAX; an engine build needs a profile per dynamic input")
        return
    for name, axis, s in uncovered:
        add("error", name, "input", f"no optimization profile covers input {name} dim {axis} ({s or '?'})",
            f"add {name}:MIN,OPT,MAX to --shapes" + (f", or give dim {s} on another input" if s else ""))
