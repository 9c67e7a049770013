"""``quantize --mode weight-only``: the options and the summary (the library code is exporter/weight_only.py)."""

from __future__ import annotations

import sys

from enginewright.commands._args import AccuracyLevelArg
from enginewright.commands.compare import Share


def add_weight_only_args(p) -> None:
    g = p.add_argument_group("--mode weight-only (LLMs: MatMul weights to INT4/INT8 MatMulNBits, activations float; "
                             "with --target tensorrt: DequantizeLinear -> MatMul, INT4 blocked or INT8 per channel)")
    g.add_argument("--bits", type=int, default=4, metavar="4|8", help="weight bits: 4 or 8 (default 4)")
    g.add_argument("--block-size", type=int, default=None, metavar="N",
                   help="weights per scale, a power of two >= 16 (default 32; with --target tensorrt: 64 or 128, default 128)")
    g.add_argument("--asymmetric", action="store_true", help="a zero point per block (default: symmetric)")
    g.add_argument("--algorithm", choices=("rtn", "hqq", "gptq"), default="rtn",
                   help="rtn: round to nearest, blockwise (default); hqq: half-quadratic (4 bits, --asymmetric); gptq: "
                        "GPTQ on --calib texts (--calib-rows of them, one at a time): RTN's grid, codes chosen against the "
                        "inputs' Hessians")
    g.add_argument("--accuracy-level", action="append", type=AccuracyLevelArg("--accuracy-level"), default=[],
                   metavar="[MATMUL=]0|4",
                   help="MatMulNBits compute on CPU: 0 float activations (default), 4 int8 activations (faster, less "
                        "exact); repeat with MATMUL=LEVEL for the MatMuls whose name contains MATMUL (lm_head=4)")
    g.add_argument("--max-ppl-increase", type=Share("--max-ppl-increase"), default=None, metavar="X",
                   help="INT4 (RTN or GPTQ): measure each MatMul alone in INT4 on --calib, keep the costliest in INT8 "
                        "(then float) until the perplexity increase on those texts is at most X (2%% or 0.02); exit 1 "
                        "if not reachable")
    g.add_argument("--max-promoted", type=int, default=32, metavar="N", help="the search keeps at most N MatMuls out of INT4 (default 32)")
    g.add_argument("--from-gguf", default=None, metavar="FILE|source",
                   help="write this GGUF file's own blocks (Q4_0/1, Q4_K, Q5_0/1, Q5_K, Q6_K, Q8_0) instead of rounding again (exact: the "
                        "model's weights unchanged); 'source': the file the model was imported from. With "
                        "--accuracy-level 0 (default) the products are exact; 4 is faster and less exact")
    g.add_argument("--search-rows", type=int, default=8, metavar="N", help="calibration texts the search scores on (default 8)")


def make_weight_only(o, src, out, *, force: bool, command: str, progress: bool = True):
    from exporter.weight_only import WeightOnlyConfig, quantize_weights

    levels = o["accuracy_level"] or []
    default = [level for name, level in levels if name is None]
    config = WeightOnlyConfig(bits=o["bits"], block_size=o["block_size"], symmetric=not o["asymmetric"],
                              format="qdq" if o.get("target") == "tensorrt" else "matmulnbits",
                              algorithm=o["algorithm"], exclude=tuple(x.strip() for x in o["exclude"].split(",") if x.strip()),
                              accuracy_level=default[-1] if default else None,
                              accuracy_levels=tuple((name, level) for name, level in levels if name is not None),
                              max_ppl_increase=o["max_ppl_increase"],
                              max_promoted=o["max_promoted"], search_rows=o["search_rows"], gguf=o["from_gguf"],
                              **({"calib_rows": o["calib_rows"]} if o["algorithm"] == "gptq" else {}))
    calib = None
    if (config.max_ppl_increase is not None or config.algorithm == "gptq") and o.get("calib"):
        from evaluation.data import load_texts

        calib = load_texts(o["calib"], text_column=o.get("text_column") or "text")
    return quantize_weights(src, out, config, calib=calib, force=force, command=command, progress=progress,
                            log=lambda msg: print(msg, file=sys.stderr, flush=True))


def summarize(art, src) -> None:
    q = art.manifest["quantization"]
    print(f"quantized {src} ({q['kind']}): {q['quantized']} of {q['matmuls_with_constant_weights']} MatMuls, "
          f"{len(q['kept_float'])} kept in float; lm_head: {q['lm_head']}")
    if levels := q.get("accuracy_levels"):
        print(f"  accuracy level {q.get('accuracy_level', 0)}, except " + ", ".join(f"{m} at {v}" for m, v in levels.items()))
    for name, why in (q.get("kept_float_why") or {}).items():
        print(f"  float {name}: {why}")
    if s := q.get("weight_only"):
        c = s["counts"]
        print(f"search: all INT4 {s['all_int4_ppl_change_calibration']:+.2%} perplexity on {s['calibration_rows']} "
              f"calibration texts; {c['int8']} MatMuls kept INT8, {c['float']} float, {c['int4']} INT4: "
              f"{s['ppl_change_calibration']:+.2%} (budget +{s['budget_ppl_increase']:.2%}); the written model "
              f"{s['ppl_change_built']:+.2%}")
        for name, k in s["kept"].items():
            print(f"  {k['choice']:5} {name}: {k['why']}")
    print(f"artifact: {art.path} (check it: enginewright compare MODEL_DIR {art.path} --max-ppl-increase 2%)")
