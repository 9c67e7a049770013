"""INT8 post-training quantization: a safe default recipe, a measured choice (--select), or a given one

Quantize an ONNX artifact with ONNX Runtime's tools. With no --mode, the default CPU recipe (dynamic, per-channel
INT8 weights, MatMuls with a constant weight) must keep the pooled cosine loss against the float model within
--max-cosine-loss (default 0.01; classifiers also 98% top-1 agreement), else it exits 1 and writes nothing.
The default recipe smooths the normalized activations first (SmoothQuant; --smooth off for ONNX Runtime's plain recipe).
--select builds the candidate recipes (plain or fused graph, smoothed, QAttention, per-channel, reduce_range, static S8/U8),
scores them on the calibration texts, times them on this machine and keeps the fastest within the budget.
--target tensorrt gives symmetric per-channel QDQ on MatMul/Gemm inputs that TensorRT's explicit quantization
takes; --max-cosine-loss with a given --mode keeps the costliest nodes in float until met.
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
_ON_OFF = {"auto": None, "on": True, "off": False}


def add_arguments(p) -> None:
    p.add_argument("artifact", type=Path, metavar="ARTIFACT")
    p.add_argument("--mode", choices=("static", "dynamic", "weight-only"), default=None,
                   help="default: the tool's CPU recipe (dynamic, held to the accuracy budget); static for --target "
                        "tensorrt; weight-only: INT4/INT8 MatMulNBits for LLMs")
    p.add_argument("--target", choices=("cpu", "tensorrt"), default="cpu")
    p.add_argument("--select", action="store_true",
                   help="build the candidate recipes, score them on the calibration texts, time them here, keep the fastest "
                        "within --max-cosine-loss (default 0.01); the table goes into the manifest")
    p.add_argument("--select-rounds", type=int, default=5, metavar="N", help="--select: interleaved timing rounds (default 5)")
    p.add_argument("--select-seconds", type=float, default=1.0, metavar="S",
                   help="--select: seconds each candidate runs per round (default 1)")
    p.add_argument("--calib", metavar="DATA", default=None,
                   help="calibration texts (.txt/.jsonl/.csv); required for static; default: the sample sentences")
    p.add_argument("--text-column", default="text", metavar="NAME")
    p.add_argument("--pair-column", default=None, metavar="NAME")
    p.add_argument("--calib-rows", type=int, default=128, metavar="N", help="rows used to calibrate (default 128)")
    p.add_argument("--eval-rows", type=int, default=64, metavar="N", help="rows used to score nodes and recipes (default 64)")
    p.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="minmax")
    p.add_argument("--per-channel", action="store_true", help="per-channel weight scales (the default; always on for tensorrt)")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor")
    p.add_argument("--reduce-range", choices=("auto", "on", "off"), default="auto",
                   help="7-bit weights against U8S8 saturation on CPUs without VNNI; auto: off, or measured by --select")
    p.add_argument("--smooth", choices=("auto", "on", "off"), default="auto",
                   help="divide the normalized activations by per-channel factors folded into the weights (SmoothQuant) "
                        "before INT8; auto: on in the default recipe, measured by --select, off with a given --mode")
    p.add_argument("--smooth-alpha", type=float, default=0.5, metavar="A",
                   help="smoothing strength: how much of the activations' range moves to the weights (default 0.5)")
    p.add_argument("--activations", choices=("u8", "s8"), default=None, help="static on cpu: activation type (default u8)")
    p.add_argument("--all-matmuls", action="store_true", help="dynamic: also quantize activation x activation MatMuls")
    p.add_argument("--exclude", default="", metavar="NODES", help="comma-separated node names to keep in float")
    p.add_argument("--max-cosine-loss", type=float, default=None, metavar="X",
                   help="with --mode: keep the costliest nodes in float until 1 - mean pooled cosine <= X (exit 1 if not "
                        "reachable); default recipe and --select: the accuracy budget (default 0.01)")
    p.add_argument("--min-agreement", type=float, default=0.98, metavar="X",
                   help="classifiers: the top-1 agreement with the float model the budget also asks (default 0.98)")
    p.add_argument("--max-float-nodes", type=int, default=None, metavar="N", help="at most N nodes kept in float by the search")
    p.add_argument("--max-length", type=int, default=128)
    add_weight_only_args(p)
    add_output(p)


def make(o, src, out, *, force: bool, command: str, progress: bool):
    if o["mode"] == "weight-only":
        return make_weight_only(o, src, out, force=force, command=command, progress=progress)
    from evaluation.data import load_texts
    from exporter.quantize import QuantizeConfig, quantize
    from runtimes.errors import UsageError

    if o["per_channel"] and o["per_tensor"]:
        raise UsageError("--per-channel and --per-tensor contradict each other; give one")
    config = QuantizeConfig(mode=o["mode"], target=o["target"], method=o["method"],
                            per_channel=True if o["per_channel"] else False if o["per_tensor"] else None,
                            reduce_range=_ON_OFF[o["reduce_range"]], activation=o["activations"],
                            smooth=_ON_OFF[o["smooth"]], smooth_alpha=o["smooth_alpha"],
                            weight_only=not o["all_matmuls"],
                            exclude=tuple(x.strip() for x in o["exclude"].split(",") if x.strip()),
                            max_cosine_loss=o["max_cosine_loss"], max_float_nodes=o["max_float_nodes"],
                            min_agreement=o["min_agreement"], select=o["select"], select_rounds=o["select_rounds"],
                            select_seconds=o["select_seconds"],
                            calib_rows=o["calib_rows"], eval_rows=o["eval_rows"], max_length=o["max_length"])
    calib = load_texts(o["calib"], text_column=o["text_column"], pair_column=o["pair_column"]) if o["calib"] else None
    return quantize(src, out, config=config, calib=calib, force=force, command=command, progress=progress)


def selection_table(sel: dict) -> str:
    """The candidates --select chose from, one line each, the chosen one marked."""
    lines = [f"candidates (scored on {sel['scored_on_rows']} rows; timed at batch {sel['timing']['batch']}, "
             f"sequence {sel['timing']['seq']}, {sel['timing']['rounds']} interleaved rounds; "
             f"instruction set: {sel['instruction_set']}):"]
    for r in sel["candidates"]:
        speed = f"{r['samples_per_s']:8.1f} samples/s ({r['speedup_vs_float']:.2f}x float)" if "samples_per_s" in r else \
            "   not timed (misses the budget)"
        agree = f", agreement {r['agreement']:.3f}" if r["agreement"] is not None else ""
        lines.append(f"  {'*' if r['chosen'] else ' '} {r['name']:<58} cosine {r['cosine']:.4f}{agree}  {speed}")
    if sel.get("decision"):
        lines.append(f"  chosen: {sel['decision']}")
    return "\n".join(lines)


def run(args, command: str) -> int:
    art = make(vars(args), args.artifact, args.output, force=args.force, command=command, progress=not args.quiet)
    if args.mode == "weight-only":
        summarize(art, args.artifact)
        return 0
    qz = art.manifest["quantization"]
    if qz.get("selection"):
        print(selection_table(qz["selection"]))
    print(f"quantized {args.artifact} ({qz['recipe']} recipe: {qz['mode']}, {'per-channel' if qz['per_channel'] else 'per-tensor'}"
          f"{', reduce_range' if qz['reduce_range'] else ''}{', smoothed' if (qz.get('smoothing') or {}).get('tensors') else ''}, graph {qz['graph']}, target {qz['target']}, {qz['format']}): "
          f"{len(qz['quantized_nodes'])} nodes INT8, {sum(c['choice'] == 'float' for c in qz['node_choices'].values())} "
          f"quantizable nodes kept in float; mean pooled cosine vs float {art.manifest['parity']['mean_cosine']:.5f}")
    if qz["float_nodes"]:
        print("  kept in float by the search: " + ", ".join(qz["float_nodes"]))
    cosine = art.manifest["parity"]["mean_cosine"]
    if cosine < QUANTIZE_WARN_BELOW and qz["accuracy_budget"]["max_cosine_loss"] is None and args.max_cosine_loss is None:
        print(f"enginewright quantize: warning: mean pooled cosine vs float is {cosine:.3f}; --max-cosine-loss 0.01 "
              "keeps the costliest nodes in float until the loss is at most 0.01, and --select measures the recipes",
              file=sys.stderr)
    print(f"artifact: {art.path}")
    return 0
