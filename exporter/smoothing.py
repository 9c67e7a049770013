"""Activation smoothing before INT8 (SmoothQuant, Xiao et al. 2023), for the tensors that
normalization layers feed into weight products.

A transformer's normalized hidden states carry a few channels with much larger magnitudes than the
rest; a per-tensor activation scale (``DynamicQuantizeLinear``, static QDQ) is set by them, and the
other channels lose their precision. Smoothing divides channel ``j`` of such a tensor by ``s_j``
and multiplies row ``j`` of every consuming weight by ``s_j``: the float graph computes the same
thing, the activation's range is evened out, and part of the difficulty moves to the weights, which
are quantized per channel. ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` from calibration data.

Only tensors made by a normalization are smoothed: on all-MiniLM-L6-v2 (dynamic, per-channel) that
took the pooled cosine from 0.9921 to 0.9950, while smoothing the GELU outputs (the FFN's second
product) dropped it to 0.978 and the attention context was neutral (docs/measurements.md). The
division is one ``Mul`` per smoothed tensor, read only by the weight products; the residual path
keeps the unscaled tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from exporter.passes.core import GraphIndex, attr, replace_nodes

NORMALIZATIONS = {"LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization",
                  "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "RMSNormalization"}
DEFAULT_ALPHA = 0.5  # SmoothQuant's default; 0.3-0.85 measured within 0.001 of cosine on MiniLM


@dataclass(frozen=True)
class Site:
    """One tensor to smooth and the nodes whose weights absorb the scale: ``(node name, weight
    initializer, True when the weight is stored transposed (Gemm transB))``."""

    tensor: str
    consumers: tuple[tuple[str, str, bool], ...]


def _weight_of(node, index: GraphIndex) -> tuple[str, bool] | None:
    """The constant weight a node multiplies its first input by, and whether it is transposed."""
    if len(node.input) < 2 or node.input[1] not in index.initializers:
        return None
    if node.op_type in ("MatMul", "Attention"):
        return node.input[1], False
    if node.op_type == "Gemm" and not attr(node, "transA", 0):
        return node.input[1], bool(attr(node, "transB", 0))
    return None


def sites(model) -> list[Site]:
    """The tensors a normalization makes (its first output) that constant-weight products read.

    A weight read by more than one node (tied weights) is left alone, and so is every tensor
    where one of them is read: scaling it would change the other product."""
    index = GraphIndex(model.graph)
    out = []
    for n in model.graph.node:
        if n.op_type not in NORMALIZATIONS or not n.output or not n.output[0]:
            continue
        t = n.output[0]
        cons = []
        for c in index.consumers.get(t, ()):
            w = _weight_of(c, index) if c.input[0] == t else None
            if w is not None:
                cons.append((c.name, *w))
        if cons and all(index.uses(w) == 1 for _, w, _ in cons):
            out.append(Site(t, tuple(cons)))
    return out


def channel_absmax(model, tensors: Sequence[str], feeds: Sequence[dict]) -> dict[str, np.ndarray]:
    """The largest magnitude of each last-axis channel of ``model``'s ``tensors`` over ``feeds``
    (every position, padding included: a dynamic per-tensor scale sees the padding too)."""
    from exporter.onnx_file import session_with_outputs

    sess = session_with_outputs(model, tensors, optimize=False)  # every tensor kept by name
    peak: dict[str, np.ndarray] = {}
    for feed in feeds:
        for t, v in zip(tensors, sess.run(list(tensors), feed)):
            m = np.abs(v.reshape(-1, v.shape[-1])).max(axis=0)
            peak[t] = m if t not in peak else np.maximum(peak[t], m)
    return peak


def scales(act: np.ndarray, weight_rows: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's per-channel factors ``act^alpha / weight_rows^(1 - alpha)``; 1 where a
    channel never fired or its weights are zero (nothing to move)."""
    act, weight_rows = act.astype(np.float64), weight_rows.astype(np.float64)
    s = np.ones_like(act)
    live = (act > 0) & (weight_rows > 0)
    s[live] = act[live] ** alpha / weight_rows[live] ** (1 - alpha)
    return np.clip(s, 1e-4, 1e4).astype(np.float32)


def smooth(model, peaks: dict[str, np.ndarray], alpha: float, found: Sequence[Site]) -> dict:
    """Rewrite ``model`` in place: for each site a ``Mul`` by ``1 / s`` read by its weight products,
    whose weight rows are multiplied by ``s``. Returns the record the manifest keeps."""
    from onnx import helper, numpy_helper

    index = GraphIndex(model.graph)
    nodes = {n.name: n for n in model.graph.node}
    muls, record = {}, []
    for site in found:
        weights = {w: numpy_helper.to_array(index.initializers[w]) for _, w, _ in site.consumers}
        rows = [np.abs(weights[w]).max(axis=0 if transposed else 1) for _, w, transposed in site.consumers]
        s = scales(peaks[site.tensor], np.max(rows, axis=0), alpha)
        for name, w, transposed in site.consumers:
            scaled = weights[w] * (s[None, :] if transposed else s[:, None])
            index.initializers[w].CopyFrom(numpy_helper.from_array(scaled.astype(np.float32), w))
            nodes[name].input[0] = f"{site.tensor}_smoothed"
        inv = f"{site.tensor}_smooth_inverse_scale"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv))
        muls[site.tensor] = helper.make_node("Mul", [site.tensor, inv], [f"{site.tensor}_smoothed"],
                                             name=f"{site.tensor}_smooth")
        record.append({"tensor": site.tensor, "consumers": [c for c, _, _ in site.consumers],
                       "max_scale": float(s.max()), "min_scale": float(s.min())})
    order = []
    for n in model.graph.node:  # each Mul right after its tensor's producer: the graph stays sorted
        order.append(n)
        order += [muls[o] for o in n.output if o in muls]
    replace_nodes(model.graph, order)
    return {"alpha": alpha, "rule": "tensors made by a normalization and read by constant-weight products",
            "tensors": record}


def smooth_file(src: Path, dst: Path, feeds: Sequence[dict], alpha: float) -> dict:
    """Smooth the model at ``src`` with statistics from ``feeds``; writes ``dst`` (a single file:
    the graphs quantized here carry their weights inline). Returns the manifest's record."""
    import onnx

    model = onnx.load(str(src))
    found = sites(model)
    peaks = channel_absmax(model, [s.tensor for s in found], feeds) if found else {}
    record = smooth(model, peaks, alpha, found)
    onnx.save_model(model, str(dst))
    return record
