"""Facts about an ONNX graph that several stages need (read without loading initializer data)."""

from __future__ import annotations

from pathlib import Path

_QDQ = ("QuantizeLinear", "DequantizeLinear")


def graph_precision(path: str | Path) -> str:
    """``int8`` for a graph with Q/DQ nodes, ``fp16`` for FP16 weights or casts to FP16, else ``fp32``."""
    import onnx

    fp16 = onnx.TensorProto.FLOAT16
    model = onnx.load(str(path), load_external_data=False)
    nodes = list(model.graph.node) + [n for f in model.functions for n in f.node]
    if any(n.op_type in _QDQ for n in nodes):
        return "int8"
    if any(t.data_type == fp16 for t in model.graph.initializer) or any(
            n.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in n.attribute) for n in nodes):
        return "fp16"
    return "fp32"
