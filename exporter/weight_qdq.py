"""Weight-only quantization in standard ONNX for TensorRT: ``DequantizeLinear(W_q, scale) -> MatMul``.

The layout is the one TensorRT 10's explicit quantization takes for weight-only GEMMs (NvInfer.h of
TensorRT 10.16, ``IDequantizeLayer``; NVIDIA's Model Optimizer writes the same):

- INT4: blocked, symmetric (no zero point). The MatMul weight ``[K, N]`` keeps its shape and is
  blocked on axis 0 (K, the second-to-last dimension), so the scale is ``[K / block_size, N]``
  (opset 21 ``block_size``). TensorRT block-dequantizes INT4, FP8 and FP4 only, infers the block
  size from the weight and scale shapes (so K must be a multiple of it), packs INT4 in pairs along
  the last dimension (so N must be even), and its documentation lists block sizes 64 and 128.
- INT8: per output channel (``axis=1``, scale ``[N]``), symmetric: TensorRT does not
  block-dequantize INT8.

Both are rounded here: ONNX Runtime's ``MatMulNBitsQuantizer`` has a QDQ format, but it writes 4
bits only, with signed (negative) scales, which TensorRT refuses. MatMuls whose weight TensorRT
could not take in that layout stay in float, each with the reason. The scales keep the weight's
float type (the DequantizeLinear output type). Everything runs on ONNX Runtime CPU as well, which
is how parity is checked without a GPU.
"""

from __future__ import annotations

import numpy as np

TRT_INT4_BLOCK_SIZES = (64, 128)


def ineligible(model, weights: dict[str, str], bits: int, block_size: int) -> dict[str, str]:
    """``{MatMul name: why TensorRT could not take its weight}`` for the MatMuls of ``weights``
    (node name -> initializer name)."""
    dims = {t.name: tuple(t.dims) for t in model.graph.initializer}
    out = {}
    for node, name in weights.items():
        shape = dims[name]
        if len(shape) != 2:
            out[node] = f"weight of rank {len(shape)}; TensorRT dequantizes 2-D MatMul weights"
        elif bits == 4 and shape[0] % block_size:
            out[node] = (f"K = {shape[0]} is not a multiple of block size {block_size}; TensorRT infers the block "
                         "size from the weight and scale shapes")
        elif bits == 4 and shape[1] % 2:
            out[node] = f"N = {shape[1]} is odd; TensorRT packs INT4 in pairs along the last dimension"
    return out


def int4_blocks(w: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(q, scale)`` of a ``[K, N]`` weight, K a multiple of ``block_size``: symmetric INT4 blocks
    along K with positive scales ``max|block| / 8``, ``q = clip(round(w / scale), -8, 7)``.

    This is MatMulNBits' symmetric rounding (which maps each block's largest-magnitude weight to -8
    through a signed scale) with every scale made positive, since TensorRT takes positive scales
    only: where that weight is positive it lands on 8 and is clipped to 7.
    """
    k, n = w.shape
    blocks = w.astype(np.float32).reshape(k // block_size, block_size, n)
    amax = np.abs(blocks).max(axis=1)
    scale = np.where(amax > 0, amax / 8.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(blocks / scale[:, None, :]), -8, 7).reshape(k, n)
    return q, scale


def quantize_int4_blocked(model, names: list[str], block_size: int):
    """The MatMuls ``names`` (each with a constant ``[K, N]`` weight, K a multiple of ``block_size``)
    as INT4 ``DequantizeLinear`` blocked on K (``axis=0``, ``block_size``); raises the default-domain
    opset to 21 and the IR version to 10, which INT4 and ``block_size`` need. Changes ``model`` in place."""
    import ml_dtypes

    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < 21:
            opset.version = 21
    model.ir_version = max(model.ir_version, 10)

    def make(w):
        q, scale = int4_blocks(w, block_size)
        return q.astype(ml_dtypes.int4), scale.astype(w.dtype), {"axis": 0, "block_size": block_size}

    return _dequantized(model, names, make, "Q4")


def _dequantized(model, names: list[str], make, tag: str):
    """Replace each MatMul of ``names``'s constant weight by ``DequantizeLinear(make(w))``."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {t.name: i for i, t in enumerate(g.initializer)}
    wanted = set(names)
    nodes, done = [], set()
    for node in g.node:
        if node.op_type != "MatMul" or node.name not in wanted:
            nodes.append(node)
            continue
        base = node.input[1]
        if base not in done:  # a weight two MatMuls share is dequantized once
            q, scale, attrs = make(numpy_helper.to_array(g.initializer[inits[base]]))
            g.initializer.extend([numpy_helper.from_array(q, f"{base}_DQ_{tag}"),
                                  numpy_helper.from_array(scale, f"{base}_DQ_scales")])
            nodes.append(helper.make_node("DequantizeLinear", [f"{base}_DQ_{tag}", f"{base}_DQ_scales"],
                                          [f"{base}_DQ_{tag}_output"], name=f"{node.name}_DQ_{tag}", **attrs))
            done.add(base)
        node.input[1] = f"{base}_DQ_{tag}_output"
        nodes.append(node)
    g.ClearField("node")
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    kept = [t for t in g.initializer if t.name in used]
    g.ClearField("initializer")
    g.initializer.extend(kept)
    return model


def quantize_int8_per_channel(model, names: list[str]):
    """The MatMuls ``names`` (each with a constant ``[K, N]`` weight) as INT8 ``DequantizeLinear``
    per output channel (``axis=1``, symmetric, scale ``max|W[:, n]| / 127``). Changes ``model`` in place."""

    def make(w):
        amax = np.abs(w.astype(np.float32)).max(axis=0)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        q = np.clip(np.rint(w.astype(np.float32) / scale), -127, 127).astype(np.int8)
        return q, scale.astype(w.dtype), {"axis": 1}

    return _dequantized(model, names, make, "Q8")
