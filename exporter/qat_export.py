"""Export of a QAT artifact (``compress --qat``): the fake-quantized model becomes Q/DQ pairs."""

from __future__ import annotations

from pathlib import Path

from evaluation.parity import Tolerance
from exporter.compress.qat import attach, attach_attention, load_attention_scales, load_scales, quantized_attention_matmuls
from exporter.module import export_hf_head, load_eager
from exporter.onnx_file import save_model
from runtimes.artifact import Artifact
from runtimes.errors import UsageError

# Checked with ONNX Runtime's graph optimizations off, so Q/DQ run as written rather than as INT8
# kernels, against the fake-quantized model in eval mode, which rounds as QuantizeLinear does. Even
# so the two are not bit-equal: a value within float error of a rounding tie (x/scale = k + 0.5)
# lands on either step depending on the summation order of the MatMul before it, and one such flip
# moved one MiniLM-classifier row's logits by 0.17 (cosine 0.994) while the other rows matched to
# 1e-6. The tolerance admits that and still catches a wrong scale or a missing Q/DQ pair.
QAT_TOLERANCE = Tolerance(atol=0.5, rtol=0.1, min_cosine=0.99)


def export_qat(src: Artifact, out: Path, *, opset: int | None, external_data: bool, force: bool,
               tolerance: Tolerance | None, command: str | None) -> Artifact:
    """Export ``src`` with its QAT fake quantization as QuantizeLinear/DequantizeLinear pairs
    (TorchScript exporter), checked against the fake-quantized PyTorch model."""
    import transformers

    from exporter.finetune import FINETUNE_TASKS
    from runtimes.tasks import get_task

    auto = getattr(transformers, get_task(src.task).auto_class) if src.task in FINETUNE_TASKS else None
    if auto is None:
        raise UsageError(f"{src.path}: QAT export supports classifiers, not task {src.task!r}")
    model = load_eager(src, auto)
    scales = load_scales(src.path)
    attach(model, scales, freeze_weights=True)
    attention = load_attention_scales(src.path)
    if attention:
        attach_attention(model, attention)
    seq_out = src.task == "token-classification"
    return export_hf_head(
        src, model, lambda out, mask: out.logits, out, output_name="logits",
        output_axes={0: "batch_size", 1: "sequence_length"} if seq_out else {0: "batch_size"},
        opset=opset, external_data=external_data, force=force, tolerance=tolerance or QAT_TOLERANCE, task=src.task,
        command=command, parity_graph_optimization="disabled", min_opset=13, rewrite=fold_weight_quantization,
        extra_manifest={"quantization": {"mode": "qat", "format": "QDQ", "target": "tensorrt",
                                         "activation_scales": scales, "weights": "per-channel symmetric",
                                         "layers": sorted(scales), "attention_matmuls": quantized_attention_matmuls(attention)}},
    )


def fold_weight_quantization(path: Path) -> dict:
    """Rewrite each quantized Linear weight the way ``quantize --target tensorrt`` places it.

    The TorchScript exporter writes ``float W [out, in] -> QuantizeLinear -> DequantizeLinear(axis 0)
    -> Transpose -> MatMul``: a Transpose between the DequantizeLinear and the MatMul (which TensorRT's
    explicit quantization does not read as a quantized MatMul input; ``check --target tensorrt``
    flags it), and the weight stored as float. This folds the QuantizeLinear of the constant
    (divide, round half to even, saturate, exactly as ONNX defines it) and the Transpose into an
    INT8 initializer ``[in, out]`` feeding ``DequantizeLinear(axis 1) -> MatMul``: the same values,
    a quarter of the weight bytes. Returns ``{"folded_weights": n}``."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    g = m.graph
    consts = {i.name: i for i in g.initializer}
    const_nodes = {o: n for n in g.node if n.op_type == "Constant" for o in n.output}

    def value(name):
        if name in consts:
            return numpy_helper.to_array(consts[name])
        n = const_nodes.get(name)
        return numpy_helper.to_array(n.attribute[0].t) if n is not None and n.attribute[0].name == "value" else None

    def attr(node, name, default):
        return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)

    producer = {o: n for n in g.node for o in n.output}
    uses: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    for o in g.output:
        uses[o.name] = uses.get(o.name, 0) + 1

    drop, replace, folded = set(), {}, 0
    for t in g.node:
        if t.op_type != "Transpose" or list(attr(t, "perm", [])) != [1, 0]:
            continue
        dq = producer.get(t.input[0])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or uses.get(dq.output[0]) != 1 or uses.get(q.output[0]) != 1:
            continue
        w, scale = value(q.input[0]), value(q.input[1])
        zp = value(q.input[2]) if len(q.input) > 2 and q.input[2] else None
        if w is None or w.ndim != 2 or scale is None or scale.shape != (w.shape[0],) or attr(q, "axis", 1) != 0 \
                or attr(dq, "axis", 1) != 0 or zp is None or zp.dtype != np.int8 or np.any(zp != 0) \
                or list(dq.input[1:]) != list(q.input[1:]):
            continue
        wq = np.clip(np.rint(w.astype(np.float32) / scale.astype(np.float32)[:, None]), -128, 127).astype(np.int8)
        name = f"{q.input[0]}_int8_t"
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(wq.T), name))
        replace[id(t)] = onnx.helper.make_node("DequantizeLinear", [name, dq.input[1], dq.input[2]], list(t.output),
                                                name=dq.name, axis=1)
        drop |= {id(q), id(dq)}
        folded += 1
    if folded:
        nodes = [replace.get(id(n), n) for n in g.node if id(n) not in drop]
        del g.node[:]
        g.node.extend(nodes)
        used = {i for n in g.node for i in n.input}
        keep_init = [i for i in g.initializer if i.name in used]
        del g.initializer[:]
        g.initializer.extend(keep_init)
        nodes = [n for n in g.node if n.op_type != "Constant" or any(o in used for o in n.output)]
        del g.node[:]
        g.node.extend(nodes)
        # a graph past protobuf's 2 GiB (the exporter then wrote external data) stays external, in
        # one file, and the exporter's per-tensor files go
        save_model(m, path, external=m.ByteSize() > 1_800_000_000)
    return {"folded_weights": folded}
