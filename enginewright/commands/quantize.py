"""INT8 post-training quantization (static QDQ or dynamic) with accuracy-driven exclusion

Quantize an ONNX artifact with ONNX Runtime's tools. --target tensorrt gives symmetric per-channel QDQ on
MatMul/Gemm inputs that TensorRT's explicit quantization takes; --max-cosine-loss keeps the costliest nodes in
float until met.
"""

from __future__ import annotations

import sys
from pathlib import Path

from enginewright.commands._args import SET_BY_PIPELINE, add_output
from enginewright.commands._weight_only import add_weight_only_args, make_weight_only, summarize

NAME = "quantize"
STAGE = "artifact"
NEEDS_ONNXRUNTIME = True  # checked before it runs, with what to install
NOT_IN_PIPELINE = SET_BY_PIPELINE
QUANTIZE_WARN_BELOW = 0.98  # mean pooled cosine: all-MiniLM-L6-v2's --target tensorrt without the search gives 0.82


def add_arguments(p) -> None:
    p.add_argument("artifact", type=Path, metavar="ARTIFACT")
    p.add_argument("--mode", choices=("static", "dynamic", "weight-only"), default="static")
    p.add_argument("--target", choices=("cpu", "tensorrt"), default="cpu")
    p.add_argument("--calib", metavar="DATA", default=None, help="calibration texts (.txt/.jsonl/.csv); required for static")
    p.add_argument("--text-column", default="text", metavar="NAME")
    p.add_argument("--pair-column", default=None, metavar="NAME")
    p.add_argument("--calib-rows", type=int, default=128, metavar="N", help="rows used to calibrate (default 128)")
    p.add_argument("--eval-rows", type=int, default=64, metavar="N", help="rows used to score nodes (default 64)")
    p.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="minmax")
    p.add_argument("--per-channel", action="store_true", help="per-channel weight scales (always on for tensorrt)")
    p.add_argument("--reduce-range", choices=("auto", "on", "off"), default="auto",
                   help="7-bit weights against U8S8 saturation; auto: on where the CPU lacks VNNI")
    p.add_argument("--all-matmuls", action="store_true", help="dynamic: also quantize activation x activation MatMuls")
    p.add_argument("--exclude", default="", metavar="NODES", help="comma-separated node names to keep in float")
    p.add_argument("--max-cosine-loss", type=float, default=None, metavar="X",
                   help="keep the costliest nodes in float until 1 - mean pooled cosine <= X (exit 1 if not reachable)")
    p.add_argument("--max-float-nodes", type=int, default=None, metavar="N", help="at most N nodes kept in float by the search")
    p.add_argument("--max-length", type=int, default=128)
    add_weight_only_args(p)
    add_output(p)


def make(o, src, out, *, force: bool, command: str, progress: bool):
    if o["mode"] == "weight-only":
        return make_weight_only(o, src, out, force=force, command=command)
    from evaluation.data import load_texts
    from exporter.quantize import QuantizeConfig, quantize

    config = QuantizeConfig(mode=o["mode"], target=o["target"], method=o["method"], per_channel=o["per_channel"],
                            reduce_range={"auto": None, "on": True, "off": False}[o["reduce_range"]],
                            weight_only=not o["all_matmuls"],
                            exclude=tuple(x.strip() for x in o["exclude"].split(",") if x.strip()),
                            max_cosine_loss=o["max_cosine_loss"], max_float_nodes=o["max_float_nodes"],
                            calib_rows=o["calib_rows"], eval_rows=o["eval_rows"], max_length=o["max_length"])
    calib = load_texts(o["calib"], text_column=o["text_column"], pair_column=o["pair_column"]) if o["calib"] else None
    return quantize(src, out, config=config, calib=calib, force=force, command=command, progress=progress)


def run(args, command: str) -> int:
    art = make(vars(args), args.artifact, args.output, force=args.force, command=command, progress=not args.quiet)
    if args.mode == "weight-only":
        summarize(art, args.artifact)
        return 0
    qz = art.manifest["quantization"]
    print(f"quantized {args.artifact} ({qz['mode']}, target {qz['target']}, {qz['format']}): "
          f"{len(qz['quantized_nodes'])} nodes INT8, {len(qz['float_nodes']) + len(qz['user_excluded'])} kept in float; "
          f"mean pooled cosine vs float {art.manifest['parity']['mean_cosine']:.5f}")
    if qz["float_nodes"]:
        print("  kept in float by the search: " + ", ".join(qz["float_nodes"]))
    cosine = art.manifest["parity"]["mean_cosine"]
    if cosine < QUANTIZE_WARN_BELOW and args.max_cosine_loss is None:
        print(f"enginewright quantize: warning: mean pooled cosine vs float is {cosine:.3f}; --max-cosine-loss 0.01 "
              "keeps the costliest nodes in float until the loss is at most 0.01", file=sys.stderr)
    print(f"artifact: {art.path}")
    return 0
