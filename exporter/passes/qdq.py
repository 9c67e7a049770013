"""Quantize/dequantize rewrites."""

from __future__ import annotations

from exporter.passes.core import GraphIndex, PassResult, attr, drop_unused_constants, replace_nodes


def fold_transposed_weight_qdq(model) -> PassResult:
    """Fold ``float W [out, in] -> QuantizeLinear(axis 0) -> DequantizeLinear(axis 0) -> Transpose(1, 0)``
    into an INT8 initializer ``W^T [in, out] -> DequantizeLinear(axis 1)``.

    The QuantizeLinear of the constant is computed as ONNX defines it (divide, round half to even,
    saturate to INT8), so the values are the same, stored in a quarter of the bytes, and the
    DequantizeLinear then feeds the MatMul directly, the placement TensorRT's explicit quantization
    reads as a quantized input. Only a per-channel, symmetric (INT8 zero point 0) pair whose Q and DQ
    share scale and zero point and feed nothing else is folded; initializers and Constants left
    unread are removed.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    g = model.graph
    index = GraphIndex(g)
    drop, replace, folded = set(), {}, 0
    for t in g.node:
        if t.op_type != "Transpose" or list(attr(t, "perm", [])) != [1, 0]:
            continue
        dq = index.made_by(t.input[0], "DequantizeLinear")
        q = index.made_by(dq.input[0], "QuantizeLinear") if dq is not None else None
        if q is None or index.uses(dq.output[0]) != 1 or index.uses(q.output[0]) != 1:
            continue
        w, scale = index.const(q.input[0]), index.const(q.input[1])
        zp = index.const(q.input[2]) if len(q.input) > 2 and q.input[2] else None
        if w is None or w.ndim != 2 or scale is None or scale.shape != (w.shape[0],) or attr(q, "axis", 1) != 0 \
                or attr(dq, "axis", 1) != 0 or zp is None or zp.dtype != np.int8 or np.any(zp != 0) \
                or list(dq.input[1:]) != list(q.input[1:]):
            continue
        wq = np.clip(np.rint(w.astype(np.float32) / scale.astype(np.float32)[:, None]), -128, 127).astype(np.int8)
        name = f"{q.input[0]}_int8_t"
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(wq.T), name))
        replace[id(t)] = helper.make_node("DequantizeLinear", [name, dq.input[1], dq.input[2]], list(t.output),
                                          name=dq.name, axis=1)
        drop |= {id(q), id(dq)}
        folded += 1
    if folded:
        replace_nodes(g, [replace.get(id(n), n) for n in g.node if id(n) not in drop])
        drop_unused_constants(g)
    return PassResult(model, folded > 0, folded)
