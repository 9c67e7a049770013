"""``quantize --mode weight-only``: the options and the summary (the library code is exporter/weight_only.py)."""

from __future__ import annotations


def add_weight_only_args(p) -> None:
    g = p.add_argument_group("--mode weight-only (LLMs: MatMul weights to INT4/INT8 MatMulNBits, activations float)")
    g.add_argument("--bits", type=int, default=4, metavar="4|8", help="weight bits: 4 or 8 (default 4)")
    g.add_argument("--block-size", type=int, default=32, metavar="N", help="weights per scale, a power of two >= 16 (default 32)")
    g.add_argument("--asymmetric", action="store_true", help="a zero point per block (default: symmetric)")
    g.add_argument("--algorithm", choices=("rtn", "hqq"), default="rtn",
                   help="rtn: round to nearest, blockwise (default); hqq: half-quadratic (4 bits, --asymmetric)")


def make_weight_only(o, src, out, *, force: bool, command: str):
    from exporter.weight_only import WeightOnlyConfig, quantize_weights

    config = WeightOnlyConfig(bits=o["bits"], block_size=o["block_size"], symmetric=not o["asymmetric"],
                              algorithm=o["algorithm"], exclude=tuple(x.strip() for x in o["exclude"].split(",") if x.strip()))
    return quantize_weights(src, out, config, force=force, command=command)


def summarize(art, src) -> None:
    q = art.manifest["quantization"]
    print(f"quantized {src} ({q['kind']}): {q['quantized']} of {q['matmuls_with_constant_weights']} MatMuls, "
          f"{len(q['kept_float'])} kept in float; lm_head: {q['lm_head']}")
    print(f"artifact: {art.path} (check it: enginewright compare MODEL_DIR {art.path} --max-ppl-increase 2%)")
