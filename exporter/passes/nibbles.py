"""Split 8-bit ``MatMulNBits`` with float activations into two 4-bit ones, exactly.

ONNX Runtime's CPU kernel for 8-bit weights with float activations (``accuracy_level`` 0)
de-quantizes the whole weight on every call: on SmolLM2-135M's lm_head (576 x 49152) one call took
about 112 ms against 1.6 ms for the same weight in 4 bits (ad hoc, docs/llm.md). Its 4-bit kernel has
a fast float-activation path, and an 8-bit code is two 4-bit ones: with ``u = 16 h + l`` and the
zero point ``z = 16 zh + zl``,

    s * (u - z) = 16 s * (h - zh) + s * (l - zl)

so ``MatMulNBits(8 bits)`` becomes ``MatMulNBits(h, 16 s, zh) + MatMulNBits(l, s, zl)``: the same
product up to float summation order, at about twice a 4-bit kernel's cost. Nodes at another
accuracy level (int8 activations have their own fast 8-bit kernel), with ``g_idx`` or ``bias``, or
with weights that are not initializers are left as they are.
"""

from __future__ import annotations

import numpy as np

from exporter.passes.core import PassResult, attr, rewrite_graph


def pack4(q: np.ndarray) -> np.ndarray:
    """``[..., 2k]`` values 0..15 -> ``[..., k]`` bytes, element 2j in the low nibble."""
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def unpack4(b: np.ndarray) -> np.ndarray:
    """``pack4``'s inverse: ``[..., k]`` bytes -> ``[..., 2k]`` values 0..15, the low nibble first."""
    return np.stack([b & 0x0F, b >> 4], axis=-1).reshape(*b.shape[:-1], -1)


def split_8bit_matmulnbits(model) -> PassResult:
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nodes, count = [], 0
    for node in graph.node:
        ins = list(node.input) + [""] * 6
        if (node.op_type != "MatMulNBits" or attr(node, "bits") != 8 or (attr(node, "accuracy_level", 0) or 0) != 0
                or any(ins[4:6]) or ins[1] not in inits or ins[2] not in inits or (ins[3] and ins[3] not in inits)):
            nodes.append(node)
            continue
        n, k, block = attr(node, "N"), attr(node, "K"), attr(node, "block_size")
        blocks = -(-k // block)
        u = numpy_helper.to_array(inits[ins[1]]).reshape(n, blocks, block)
        scale = numpy_helper.to_array(inits[ins[2]]).reshape(n, blocks)
        if scale.dtype != np.float32 or (ins[3] and numpy_helper.to_array(inits[ins[3]]).dtype != np.uint8):
            nodes.append(node)  # float zero points (or a float16 graph): not this rewrite
            continue
        z = numpy_helper.to_array(inits[ins[3]]).reshape(n, blocks) if ins[3] else np.full((n, blocks), 128, np.uint8)
        base = (node.name or node.output[0]).strip("/").replace("/", ".")
        parts = []
        for half, q, s, zp in (("high", u >> 4, 16 * scale, z >> 4), ("low", u & 0x0F, scale, z & 0x0F)):
            zp_packed = pack4(np.pad(zp, ((0, 0), (0, blocks % 2))))  # two zero points a byte
            names = [f"{base}.nibble_{half}.q", f"{base}.nibble_{half}.scales", f"{base}.nibble_{half}.zero"]
            graph.initializer.extend([numpy_helper.from_array(pack4(q), names[0]),
                                      numpy_helper.from_array(s.reshape(-1).astype(np.float32), names[1]),
                                      numpy_helper.from_array(zp_packed, names[2])])
            out = f"{node.output[0]}/{half}"
            nodes.append(helper.make_node("MatMulNBits", [node.input[0], *names], [out], name=f"{node.name}/{half}",
                                          domain="com.microsoft", K=k, N=n, bits=4, block_size=block, accuracy_level=0))
            parts.append(out)
        nodes.append(helper.make_node("Add", parts, [node.output[0]], name=f"{node.name}/nibbles"))
        count += 1
    if count:
        rewrite_graph(model, nodes)
    return PassResult(model, count > 0, count)
