"""Carry a GGUF file's quantized blocks over into ``MatMulNBits`` exactly, instead of re-quantizing.

A model imported from GGUF (``enginewright import-gguf``) holds the file's weights de-quantized to
float32; quantizing those again with round-to-nearest lands on a different grid and loses accuracy
(SmolLM2-135M's Q4_1 file: +34% perplexity for INT4 RTN). The blocks are already there, so this
writes them as they are:

- ``Q4_0`` (``d * (q - 8)``): a 4-bit ``MatMulNBits`` with the default zero point 8;
- ``Q8_0`` (``d * q``, q signed): an 8-bit ``MatMulNBits`` with ``q + 128`` and the default zero
  point 128 (at float activations split into two exact 4-bit kernels, ``exporter/passes/nibbles.py``);
- ``Q5_0`` (``d * (q - 16)``, q five bits) the same way, 8 bits with ``q + 112``;
- ``Q6_K`` (super-blocks of 256: sixteen blocks of 16, ``d * scale_j * (q - 32)``, q six bits) as
  8 bits in blocks of 16, scale ``d * scale_j``, code ``q + 96``;
- ``Q4_1`` (``d * q + m``, a float minimum per block) and ``Q4_K`` (super-blocks of 256: eight
  blocks of 32, ``d * scale_j * q - dmin * min_j``: per block of 32 a Q4_1 block with
  ``d * scale_j`` and ``-dmin * min_j``): ONNX Runtime's CPU kernel takes float zero
  points only on a slow path (15-50x slower measured), so the block is written as
  ``MatMulNBits(x; q, d, zero point z) + blocksum(x) @ R``, where ``z`` is the integer zero point
  nearest ``-m / d``, ``R[block, n] = m + d * z`` the remainder, and ``blocksum`` adds the
  activations of each block of 32 (one block-sum per distinct input, shared by the projections that
  read it). Centring on ``z`` changes no product; it matters at int8 activations (``centred``).
  At ``accuracy_level`` > 0 (int8 activations, inexact anyway) the remainders become the kernel's
  own last rows instead, 8 bits as two 4-bit nibbles read against the block sums (``folded``): no
  float MatMul, a fifth of a decode step less (SmolLM2 at level 4: 1.21x, 12 of 12 interleaved rounds;
  KL to PyTorch 0.0045 -> 0.0048).

- ``Q5_1`` and ``Q5_K`` (five bits with a float minimum per block of 32) like Q4_1, as 8-bit kernels
  (code q, an 8-bit integer zero point, the remainder; at level > 0 the remainders as the kernel's
  own 8-bit rows, ``remainder_codes``).

- ``Q3_K`` (sixteen blocks of 16, ``d * scale_j * q``, q in -4..3) as 4 bits in blocks of 16, code
  ``q + 8`` against the default zero point; ``Q2_K`` (sixteen blocks of 16, ``d * scale_j * q -
  dmin * min_j``, q two bits) as the Q4_1 form in blocks of 16;
- ``IQ4_NL`` and ``IQ4_XS`` (4-bit indices into a fixed table of int8 values, ``d`` per block of 32;
  IQ4_XS ``d * scale_j`` in super-blocks of 256) as 8 bits, code ``table[i] + 128``: a table is no
  linear grid, so 4 bits cannot hold it exactly.

So ``Q4_K_M``, ``Q5_K_M``, ``Q3_K_M``, ``Q2_K`` and ``IQ4_XS`` files (with llama.cpp's fallbacks for
rows that are not a multiple of 256: Q4_0, Q5_0, Q5_1, Q8_0, IQ4_NL) are carried over whole. Other
types (the IQ1-IQ3 types, ternary, MXFP4) stay float and are listed.

MatMuls that read the same input at the same width and accuracy level (a layer's q/k/v, its gate/up)
are written as one ``MatMulNBits`` with their blocks side by side, then a ``Split``: the same
products in fewer, larger kernel calls (SmolLM2: 122 kernels instead of 212; a decode step 5.7% to 8.8%
faster, measured interleaved).

Which MatMul a GGUF tensor belongs to is decided by value, not by name: every supported tensor is
de-quantized the way gguf-py does (the same arithmetic transformers' loader uses, with its Q/K row
permutation), and a MatMul takes the blocks whose de-quantized values equal its weight bit for bit.
So the carry-over works on either export graph and cannot attach blocks to the wrong weight; a
MatMul no tensor equals (a fine-tuned weight, an unsupported type) stays float and is reported.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exporter.passes import AFTER_WEIGHT_ONLY, run_passes
from exporter.passes.core import attr, replace_nodes, rewrite_graph
from exporter.passes.nibbles import pack4, unpack4
from runtimes.errors import UsageError

QK = 32  # block size of Q4_0, Q4_1, Q5_0, Q8_0 and of Q4_K's blocks
QK_K = 256  # super-block of the K-quants
BITS = {"Q2_K": 4, "Q3_K": 4, "Q4_0": 4, "Q4_1": 4, "Q4_K": 4, "Q5_0": 8, "Q5_1": 8, "Q5_K": 8, "Q6_K": 8, "Q8_0": 8,
        "IQ4_NL": 8, "IQ4_XS": 8}  # MatMulNBits width
SUPER_BLOCK = {kind: QK_K if kind.endswith("_K") or kind == "IQ4_XS" else QK for kind in BITS}  # row length divides by it
SUPPORTED_TYPES = tuple(BITS)


@dataclass
class Blocks:
    """One weight ``[N, K]`` in blocks along K: ``q`` ``[N, K/block, block]`` unsigned (0..15 for 4
    bits, 0..255 for 8 bits; without a minimum the zero point is 8 or 128), ``d`` ``[N, K/block]``
    scales, ``m`` ``[N, K/block]`` minimums (Q4_1, Q4_K, Q5_1, Q5_K, Q2_K) or None. ``block``: 32, or 16 for
    Q6_K, Q3_K and Q2_K."""

    gguf_name: str
    gguf_type: str
    bits: int
    q: np.ndarray
    d: np.ndarray
    m: np.ndarray | None
    block: int = QK

    def dequantize(self) -> np.ndarray:
        """``[N, K]`` float32, as gguf-py computes it."""
        if self.m is not None:
            w = self.d[..., None] * self.q.astype(np.float32) + self.m[..., None]
        else:
            zero = 8 if self.bits == 4 else 128
            w = self.d[..., None] * (self.q.astype(np.float32) - zero)
        return w.reshape(w.shape[0], -1)


def _f16(b: np.ndarray) -> np.ndarray:
    """Little-endian float16 fields ``[..., 2]`` (uint8) as float32 ``[...]``."""
    return b.copy().view(np.float16)[..., 0].astype(np.float32)


def _gguf_nibbles(b: np.ndarray) -> np.ndarray:
    """A GGUF block's ``[..., 16]`` bytes of 4-bit values as ``[..., 32]``: the low nibbles are elements
    0-15, the high ones 16-31 (not ``unpack4``'s interleaved order)."""
    return np.concatenate([b & 0x0F, b >> 4], axis=-1)


def _parse(raw: np.ndarray, gguf_type: str, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(q, d, m)`` of a tensor's raw bytes ``[rows, bytes per row]``, in ``Blocks``' layout (the
    unpacking follows gguf-py's ``dequantize_blocks`` of each type, element for element)."""
    if gguf_type == "Q4_K":
        from gguf.quants import Q4_K

        sb = raw.reshape(rows, -1, 144)  # d, dmin (float16), 12 bytes of 6-bit scales and mins, 128 bytes of nibbles
        scale, low = Q4_K.get_scale_min(sb[..., 4:16].reshape(-1, 12))
        shape = (rows, -1)
        d = (_f16(sb[..., 0:2])[..., None] * scale.reshape(rows, -1, 8).astype(np.float32)).reshape(shape)
        m = -(_f16(sb[..., 2:4])[..., None] * low.reshape(rows, -1, 8).astype(np.float32)).reshape(shape)
        qs = sb[..., 16:].reshape(rows, -1, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(2, 1)
        return (qs & 0x0F).reshape(rows, -1, QK), d, m
    if gguf_type == "Q6_K":
        sb = raw.reshape(rows, -1, 210)  # 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 int8 scales, d
        ql = (sb[..., :128].reshape(rows, -1, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(2, 1)) & 0x0F
        qh = (sb[..., 128:192].reshape(rows, -1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(4, 1)) & 0x03
        q = ql.reshape(rows, -1, 32) | (qh.reshape(rows, -1, 32) << 4)  # 0..63, value d_j * (q - 32)
        d = _f16(sb[..., 208:210])[..., None] * sb[..., 192:208].copy().view(np.int8).astype(np.float32)
        return (q + 96).astype(np.uint8).reshape(rows, -1, 16), d.reshape(rows, -1), None
    if gguf_type == "Q5_K":
        from gguf.quants import Q4_K

        sb = raw.reshape(rows, -1, 176)  # d, dmin, 12 bytes of 6-bit scales and mins, 32 of high bits, 128 of nibbles
        scale, low = Q4_K.get_scale_min(sb[..., 4:16].reshape(-1, 12))
        d = (_f16(sb[..., 0:2])[..., None] * scale.reshape(rows, -1, 8).astype(np.float32)).reshape(rows, -1)
        m = -(_f16(sb[..., 2:4])[..., None] * low.reshape(rows, -1, 8).astype(np.float32)).reshape(rows, -1)
        ql = (sb[..., 48:].reshape(rows, -1, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(2, 1)) & 0x0F
        qh = (sb[..., 16:48].reshape(rows, -1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(8, 1)) & 0x01
        return ql.reshape(rows, -1, QK) | (qh.reshape(rows, -1, QK) << 4), d, m
    if gguf_type == "Q3_K":
        sb = raw.reshape(rows, -1, 110)  # 32 bytes of high bits, 64 of 2-bit pairs, 12 of 6-bit scales, d
        low, high = sb[..., 96:104], sb[..., 104:108]
        low = (low.reshape(rows, -1, 1, 8) >> np.array([0, 4], np.uint8).reshape(2, 1)).reshape(rows, -1, 16)
        high = (high.reshape(rows, -1, 1, 4) >> np.array([0, 2, 4, 6], np.uint8).reshape(4, 1)).reshape(rows, -1, 16)
        scale = ((low & 0x0F) | ((high & 0x03) << 4)).astype(np.int8) - np.int8(32)
        d = _f16(sb[..., 108:110])[..., None] * scale.astype(np.float32)
        ql = (sb[..., 32:96].reshape(rows, -1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(4, 1)) & 0x03
        qh = (sb[..., :32].reshape(rows, -1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(8, 1)) & 0x01
        # value d_j * (ql - 4 * (1 - qh)), -4..3: a 4-bit code ql + 4 * qh + 4 against the default zero point 8
        q = ql.reshape(rows, -1, 16) + (qh.reshape(rows, -1, 16) << 2) + np.uint8(4)
        return q, d.reshape(rows, -1), None
    if gguf_type == "Q2_K":
        sb = raw.reshape(rows, -1, 84)  # 16 bytes of 4-bit scales and mins, 64 of 2-bit codes, d, dmin
        d = _f16(sb[..., 80:82])[..., None] * (sb[..., :16] & 0x0F).astype(np.float32)
        m = -(_f16(sb[..., 82:84])[..., None] * (sb[..., :16] >> 4).astype(np.float32))
        q = (sb[..., 16:80].reshape(rows, -1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(4, 1)) & 0x03
        return q.reshape(rows, -1, 16), d.reshape(rows, -1), m.reshape(rows, -1)
    if gguf_type in ("IQ4_NL", "IQ4_XS"):  # 4-bit indices into a fixed table of int8 values: 8 bits, table + 128
        from gguf.quants import IQ4_NL

        table = (np.array(IQ4_NL.kvalues, np.int16) + 128).astype(np.uint8)
        if gguf_type == "IQ4_NL":
            blocks = raw.reshape(rows, -1, 18)  # d, 16 bytes of indices (low nibbles first)
            d, qs = _f16(blocks[..., :2]), blocks[..., 2:]
        else:
            sb = raw.reshape(rows, -1, 136)  # d, 2 bytes of high scale bits, 4 of low, 128 of indices
            low = (sb[..., 4:8].reshape(rows, -1, 4, 1) >> np.array([0, 4], np.uint8)).reshape(rows, -1, 8) & 0x0F
            high = (sb[..., 2:4].copy().view(np.uint16) >> (2 * np.arange(8, dtype=np.uint16))).astype(np.uint8) & 0x03
            scale = (low | (high << 4)).astype(np.int8) - np.int8(32)
            d = (_f16(sb[..., :2])[..., None] * scale.astype(np.float32)).reshape(rows, -1)
            qs = sb[..., 8:].reshape(rows, -1, 16)
        return table[_gguf_nibbles(qs)], d, None
    size = {"Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24, "Q8_0": 34}[gguf_type]
    blocks = raw.reshape(rows, -1, size)
    d = _f16(blocks[..., :2])
    if gguf_type == "Q8_0":
        q = (blocks[..., 2:].copy().view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        return q, d, None
    if gguf_type in ("Q5_0", "Q5_1"):  # d, (m,) 32 high bits (uint32), 16 bytes of low nibbles
        at = 2 if gguf_type == "Q5_0" else 4
        high = (blocks[..., at:at + 4].copy().view(np.uint32) >> np.arange(32, dtype=np.uint32)) & 1
        low = _gguf_nibbles(blocks[..., at + 4:])
        q = low | (high.astype(np.uint8) << 4)
        if gguf_type == "Q5_1":  # d * q + m
            return q, d, _f16(blocks[..., 2:4])
        return q + np.uint8(112), d, None  # d * (q - 16) = d * ((q + 112) - 128)
    m = _f16(blocks[..., 2:4]) if gguf_type == "Q4_1" else None
    qs = blocks[..., 4:] if gguf_type == "Q4_1" else blocks[..., 2:]
    q = _gguf_nibbles(qs)
    return q, d, m


def read_blocks(path: Path, config) -> list[Blocks]:
    """Every 2-D tensor of a supported type in ``path``, rows in transformers' order (the Q/K rows of
    a Llama file permuted back as its loader does)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except (OSError, ValueError) as e:
        raise UsageError(f"--from-gguf {path}: not a readable GGUF file ({e})") from None
    permute = None
    if getattr(config, "model_type", None) in ("llama", "mistral"):
        from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

        permute = LlamaTensorProcessor(config={"num_attention_heads": config.num_attention_heads,
                                               "num_key_value_heads": config.num_key_value_heads})
    out = []
    for t in reader.tensors:
        kind = t.tensor_type.name
        if kind not in SUPPORTED_TYPES or len(t.shape) != 2:
            continue
        cols, rows = int(t.shape[0]), int(t.shape[1])  # gguf lists ne0 (the contiguous axis, K) first
        if cols % SUPER_BLOCK[kind]:
            continue
        q, d, m = _parse(np.asarray(t.data), kind, rows)
        if permute is not None and (".attn_q." in t.name or ".attn_k." in t.name):
            heads = config.num_attention_heads if ".attn_q." in t.name else config.num_key_value_heads
            q, d = (permute._reverse_permute_weights(a, config.num_attention_heads, heads) for a in (q, d))
            if m is not None:
                m = permute._reverse_permute_weights(m, config.num_attention_heads, heads)
        out.append(Blocks(t.name, kind, BITS[kind], q, d, m, q.shape[-1]))
    return out


def _key(w: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(w, dtype=np.float32).tobytes()).hexdigest()


def match_blocks(weights: dict[str, np.ndarray], blocks: list[Blocks]) -> dict[str, Blocks]:
    """MatMul node -> the blocks whose de-quantized values equal its weight ``[K, N]`` bit for bit."""
    by_value = {}
    for b in blocks:
        by_value.setdefault(_key(b.dequantize()), b)
    return {node: by_value[k] for node, w in weights.items() if (k := _key(w.T)) in by_value}


def centred(b: Blocks) -> tuple[np.ndarray, np.ndarray]:
    """A tensor with minimums (Q4_1 ...)'s ``d * q + m`` as ``d * (q - z) + r``: ``z`` ``[N, K/block]``
    the integer zero point (0..15 for a 4-bit kernel, 0..255 for an 8-bit one) nearest ``-m / d``,
    ``r = m + d * z`` the remainder (exact in float32 for a GGUF's float16 ``d`` and ``m``). The
    products are the same; but with int8 activations (``--accuracy-level 4``) only ``d * (q - z)``
    meets the rounded activations, and weights centred on their zero point carry about a quarter of
    the rounding error's variance that ``d * q`` (0..15) does."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(b.d > 0, np.clip(np.rint(-b.m / b.d), 0, 2 ** b.bits - 1), 0).astype(np.uint8)
    r = (b.m + b.d * z.astype(np.float32)).astype(np.float32)
    return z, r


def remainder_codes(r: np.ndarray, block: int = QK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Remainders ``r`` ``[N, B]`` (one per block of the kernel's ``block``) rounded to 8 bits per
    ``block`` of them along a column: ``r ~ s * (c - z)``. Returns codes ``[N, ceil(B/block), block]``
    (the unused tail at the zero point), scales and zero points ``[N, ceil(B/block)]``. A remainder
    moves by at most half a step (a 510th of its chunk's range)."""
    n, b = r.shape
    chunks = -(-b // block)
    padded = np.pad(r, ((0, 0), (0, chunks * block - b))).reshape(n, chunks, block)
    lo, hi = np.minimum(padded.min(-1), 0), np.maximum(padded.max(-1), 0)
    s = np.where(hi > lo, (hi - lo) / 255, 1).astype(np.float32)
    z = np.clip(np.rint(-lo / s), 0, 255).astype(np.uint8)
    c = np.clip(np.rint(padded / s[..., None]) + z[..., None], 0, 255).astype(np.uint8)
    c.reshape(n, -1)[:, b:] = np.repeat(z[:, -1:], chunks * block - b, axis=1)
    return c, s, z


def folded(r: np.ndarray, block: int = QK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_1 remainders ``r`` ``[N, B]`` as extra rows of a 4-bit kernel's own weight: the 8-bit
    ``remainder_codes`` split into two nibbles, ``16 s * (c_hi - z_hi)`` (read against the block sums
    padded to whole blocks) ``+ s * (c_lo - z_lo)`` (read against the block sums again). Returns codes
    ``[N, 2 * ceil(B/block), block]``, scales and zero points ``[N, 2 * ceil(B/block)]``. Inexact, so
    only for ``accuracy_level`` > 0, where the activations are rounded to int8 anyway (an 8-bit
    kernel takes ``remainder_codes`` as they are)."""
    c, s, z = remainder_codes(r, block)
    codes = np.concatenate([c >> 4, c & 15], 1)
    return codes, np.concatenate([16 * s, s], 1), np.concatenate([z >> 4, z & 15], 1)


def replace_matmuls(model, matched: dict[str, Blocks], *, levels) -> tuple[dict, dict[str, int], list[list[str]], list[str]]:
    """Rewrite ``model`` (onnx ModelProto, in place): each matched MatMul becomes MatMulNBits (plus the
    remainder term for Q4_1) at ``levels(matmul name)``'s accuracy level. MatMuls that read one input
    at one width and level (a layer's q/k/v, its gate/up) become one MatMulNBits with their blocks side
    by side and a Split: the same products, fewer and larger kernel calls. Returns what was done per
    GGUF type, each MatMul's level, the packed groups, and the MatMuls whose remainders are ``folded``."""
    from onnx import helper, numpy_helper

    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    groups: dict[tuple, list] = {}
    for node in graph.node:
        if node.op_type == "MatMul" and node.name in matched:
            b = matched[node.name]
            key = (node.input[0], b.bits, b.block, levels(node.name)) if opset >= 13 else (node.name,)
            groups.setdefault(key, []).append(node)
    first = {g[0].name: g for g in groups.values()}
    members = {n.name for g in groups.values() for n in g}
    new_nodes, new_inits, derived, used, chosen, packed, folds = [], [], {}, {}, {}, [], []

    def const(name: str, value) -> str:
        new_inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def block_sums(x: str, blocks: int, block: int, at: str) -> str:
        """``x`` ``[B, S, blocks * block]`` -> its sums per block, ``[B, S, blocks]`` (once per input)."""
        if ("sums", x) not in derived:
            derived[("sums", x)] = f"{at}/x_block_sums"
            new_nodes.extend([
                helper.make_node("Reshape", [x, const(f"{at}.blocks_shape", np.array([0, 0, blocks, block], np.int64))],
                                 [f"{at}/x_blocks"], name=f"{at}/x_blocks"),
                helper.make_node("ReduceSum", [f"{at}/x_blocks", const(f"{at}.last_axis", np.array([-1], np.int64))],
                                 [f"{at}/x_block_sums"], name=f"{at}/x_block_sums", keepdims=0)])
        return derived[("sums", x)]

    def with_block_sums(x: str, blocks: int, block: int, at: str, nibbles: bool = True) -> str:
        """``[x, block sums padded to whole blocks, block sums]`` (``nibbles``: a 4-bit kernel, whose
        remainder rows are ``folded`` in two) or ``[x, block sums padded]`` (an 8-bit kernel): the input
        of a kernel whose last rows are remainders (once per input)."""
        if ("folded", x, nibbles) not in derived:
            sums, wide = block_sums(x, blocks, block, at), -(-blocks // block) * block
            out = f"{at}/x_with_block_sums" if nibbles else f"{at}/x_with_block_sums8"
            derived[("folded", x, nibbles)] = out
            if ("padded", x) not in derived:
                derived[("padded", x)] = f"{at}/x_block_sums_padded"
                new_nodes.append(helper.make_node(
                    "Pad", [sums, const(f"{at}.pad_sums", np.array([0, 0, 0, 0, 0, wide - blocks], np.int64))],
                    [derived[("padded", x)]], name=f"{at}/x_block_sums_padded"))
            new_nodes.append(helper.make_node("Concat", [x, derived[("padded", x)], *([sums] if nibbles else [])], [out],
                                              name=out, axis=-1))
        return derived[("folded", x, nibbles)]

    for node in graph.node:
        if node.name not in members:
            new_nodes.append(node)
            continue
        if node.name not in first:  # written with its group
            continue
        group = first[node.name]
        bs = [matched[n.name] for n in group]
        level = levels(node.name)
        for member, b in zip(group, bs):
            chosen[member.name] = level
            used[b.gguf_type] = used.get(b.gguf_type, 0) + 1
        if len(group) > 1:
            packed.append([m.name for m in group])
        q, d = np.concatenate([b.q for b in bs]), np.concatenate([b.d for b in bs])
        n, blocks, _ = q.shape
        block, bits, x = bs[0].block, bs[0].bits, node.input[0]
        k = blocks * block
        name = node.name if len(group) == 1 else node.name + "+" + "+".join(m.name.rsplit("/", 2)[-2] for m in group[1:])
        base = name.strip("/").replace("/", ".") or node.output[0]
        result = node.output[0] if len(group) == 1 else f"{name}/packed"
        has_min = any(b.m is not None for b in bs)
        zero = None
        if has_min:  # Q4_1: d * q + m = d * (q - z) + r, z the integer zero point nearest -m / d, r the remainder;
            # a Q4_0 (Q5_0) weight packed beside it keeps its zero point 8 (128) and adds nothing
            default = 8 if bits == 4 else 128
            parts = [centred(b) if b.m is not None else (np.full(b.d.shape, default, np.uint8), np.zeros_like(b.d))
                     for b in bs]
            zero, remainder = np.concatenate([z for z, _ in parts]), np.concatenate([r for _, r in parts])
            if level != 0:  # int8 activations: remainders as the kernel's last rows, read against the block sums
                if bits == 4:  # 8-bit remainders as two nibble rows each
                    codes, scales, zeros = folded(remainder, block)
                    k, x = k + codes.shape[1] // 2 * block + blocks, with_block_sums(x, blocks, block, base)
                else:
                    codes, scales, zeros = remainder_codes(remainder, block)
                    k, x = k + codes.shape[1] * block, with_block_sums(x, blocks, block, base, nibbles=False)
                q, d, zero = (np.concatenate(pair, 1) for pair in ((q, codes), (d, scales), (zero, zeros)))
                folds.extend(m.name for m in group)
        inputs = [const(f"{base}.gguf_q", pack4(q) if bits == 4 else q), const(f"{base}.gguf_scales", d.reshape(-1))]
        if zero is not None:
            inputs.append(const(f"{base}.gguf_zero", pack4(np.pad(zero, ((0, 0), (0, zero.shape[1] % 2)))) if bits == 4
                                else zero.reshape(-1)))
        exact_remainder = has_min and level == 0  # float activations: the remainder through a float MatMul
        out = f"{name}/nbits" if exact_remainder else result
        new_nodes.append(helper.make_node("MatMulNBits", [x, *inputs], [out], name=f"{name}_Q{bits}", domain="com.microsoft",
                                          K=k, N=n, bits=bits, block_size=block, accuracy_level=level))
        if exact_remainder:
            offset = f"{name}/min_offset"
            new_nodes += [helper.make_node("MatMul", [block_sums(x, blocks, block, base), const(f"{base}.gguf_mins", remainder.T)],
                                           [offset], name=offset),
                          helper.make_node("Add", [out, offset], [result], name=f"{name}/with_min")]
        if len(group) > 1:
            new_nodes.append(helper.make_node("Split", [result, const(f"{base}.split", np.array([b.q.shape[0] for b in bs], np.int64))],
                                              [m.output[0] for m in group], name=f"{name}/split", axis=-1))
    rewrite_graph(model, new_nodes, new_inits, domain="com.microsoft")
    return dict(sorted(used.items())), chosen, packed, sorted(folds)


def integer_zero_points(model) -> dict:
    """Rewrite every 4-bit ``MatMulNBits`` of ``model`` with float zero points (ONNX Runtime's HQQ
    writes them) in the Q4_1 form above: ``s * (q - z)`` with ``z`` float is ``d * q + m`` with
    ``d = s``, ``m = -s * z``, so the integer zero point nearest ``z`` plus the remainder (a float
    MatMul of the block sums at ``accuracy_level`` 0, folded rows above it), and the projections
    that read one input packed into one kernel. ONNX Runtime's CPU kernel takes float zero points
    only on a slow path (SmolLM2's HQQ model: 150.8 ms a decode step as ONNX Runtime writes it, 11.3
    ms rewritten, docs/llm.md). The same products up to float rounding at level 0. Returns the manifest's record
    (empty when no node has float zero points)."""
    from onnx import TensorProto, helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    matched, levels, nodes = {}, {}, []
    for node in model.graph.node:
        zp = node.input[3] if node.op_type == "MatMulNBits" and len(node.input) > 3 else ""
        extra = [i for i in node.input[4:] if i]  # g_idx or bias: left alone
        if not zp or zp not in inits or inits[zp].data_type != TensorProto.FLOAT or attr(node, "bits") != 4 or extra:
            nodes.append(node)
            continue
        n, k, block = attr(node, "N"), attr(node, "K"), attr(node, "block_size")
        if k % block:
            nodes.append(node)
            continue
        blocks = k // block
        q = unpack4(numpy_helper.to_array(inits[node.input[1]]).reshape(n, blocks, block // 2))
        scale = numpy_helper.to_array(inits[node.input[2]]).reshape(n, blocks).astype(np.float32)
        zero = numpy_helper.to_array(inits[zp]).reshape(n, blocks).astype(np.float32)
        name = node.name.rpartition("_Q4")[0] or node.name
        matched[name] = Blocks(name, "float zero points", 4, q, scale, (-scale * zero).astype(np.float32), block)
        levels[name] = attr(node, "accuracy_level") or 0
        nodes.append(helper.make_node("MatMul", [node.input[0], node.input[1]], list(node.output), name=name))
    if not matched:
        return {}
    replace_nodes(model.graph, nodes)
    _, _, packed_groups, folds = replace_matmuls(model, matched, levels=lambda matmul: levels[matmul])
    return {"rewritten": len(matched), "packed": packed_groups, "remainders_folded": folds}


def carry_over(model, gguf_path: Path, config, *, levels=lambda matmul: 0) -> dict:
    """Rewrite ``model``'s MatMuls whose weights are ``gguf_path``'s blocks; returns the record for the
    manifest. ``levels(matmul name)``: the MatMulNBits ``accuracy_level`` (0: exact).

    Raises:
        UsageError: the file is unreadable, or no MatMul weight equals one of its tensors.
    """
    consts = {i.name: i for i in model.graph.initializer}
    from onnx import numpy_helper

    weights = {n.name: numpy_helper.to_array(consts[n.input[1]]) for n in model.graph.node
               if n.op_type == "MatMul" and n.input[1] in consts and len(consts[n.input[1]].dims) == 2}
    blocks = read_blocks(gguf_path, config)
    matched = match_blocks(weights, blocks)
    if not matched:
        types = sorted({b.gguf_type for b in blocks}) or "none of " + ", ".join(SUPPORTED_TYPES)
        raise UsageError(f"--from-gguf {gguf_path}: no MatMul weight of the model equals one of the file's tensors "
                         f"(types {types}); was the model imported from this file and left unchanged?")
    by_type, chosen, packed, folds = replace_matmuls(model, matched, levels=levels)
    run_passes(AFTER_WEIGHT_ONLY, model)  # 8 bits at float activations: two exact 4-bit kernels
    return {"source": str(gguf_path), "matched": {node: f"{b.gguf_name} ({b.gguf_type})" for node, b in sorted(matched.items())},
            "by_type": by_type, "float": sorted(set(weights) - set(matched)),
            "levels": chosen, "packed": packed, "remainders_folded": folds}
