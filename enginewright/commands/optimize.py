"""fuse an ONNX artifact's graph for a target (ONNX Runtime CPU/CUDA, TensorRT)

cpu/cuda: ONNX Runtime's transformer fusions (contrib ops, ONNX Runtime only); tensorrt: standard ONNX ops
only. --fp16 converts weights and compute to FP16. Parity against the input is checked and recorded.
"""

from __future__ import annotations

from pathlib import Path

from enginewright.commands._args import SET_BY_PIPELINE, add_data_args, add_output, load_data

NAME = "optimize"
STAGE = "artifact"
NEEDS_ONNXRUNTIME = True  # checked before it runs, with what to install
NOT_IN_PIPELINE = SET_BY_PIPELINE


def add_arguments(p) -> None:
    p.add_argument("artifact", type=Path, metavar="ARTIFACT")
    p.add_argument("--target", choices=("cpu", "cuda", "tensorrt"), default="cpu")
    p.add_argument("--fp16", action="store_true", help="FP16 weights and compute (inputs/outputs stay FP32)")
    p.add_argument("--fp16-io", action="store_true", help="with --fp16: FP16 inputs and outputs too")
    add_data_args(p)
    add_output(p)


def make(o, src, out, *, force: bool, command: str, progress: bool):
    from exporter.optimize import optimize

    return optimize(src, out, target=o["target"], fp16=o["fp16"], keep_io_types=not o["fp16_io"], force=force,
                    data=load_data(o), command=command, progress=progress)


def run(args, command: str) -> int:
    art = make(vars(args), args.artifact, args.output, force=args.force, command=command, progress=not args.quiet)
    o = art.manifest["optimization"]
    before, after = sum(o["ops_before"].values()), sum(o["ops_after"].values())
    print(f"optimized {args.artifact} for {o['target']}{' (fp16)' if o['fp16'] else ''}: {before} -> {after} nodes")
    for name, count in (o.get("fused") or {}).items():
        print(f"  fused {name}: {count}")
    if o["contrib_ops"]:
        print(f"  contrib ops (ONNX Runtime only): {', '.join(o['contrib_ops'])}")
    parity = art.manifest["parity"]
    if "top1_agreement" in parity:  # a decoder: teacher-forced logits and one decode step
        print(f"  parity logits vs input: max abs {parity['prefill_max_abs']:.3g}, decode step {parity['decode_max_abs']:.3g}, "
              f"top-1 {parity['top1_agreement']:.4f}: ok")
    for out in parity.get("outputs", []):
        print(f"  parity {out['name']} vs input: max abs {out['max_abs']:.3g}, min cos {out['cos_min']:.6f}: ok")
    print(f"artifact: {art.path}")
    return 0
