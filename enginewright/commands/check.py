"""readiness of an ONNX artifact for TensorRT, without a GPU

Check operators, types, Q/DQ placement and profile coverage against TensorRT's ONNX parser support (table from
onnx-tensorrt's operators.md). Exit 1 when the model cannot build.
"""

from __future__ import annotations

from pathlib import Path

from enginewright.commands._args import CliError
from enginewright.commands.build import add_shapes

NAME = "check"
STAGE = None


def add_arguments(p) -> None:
    p.add_argument("artifact", type=Path, metavar="ARTIFACT")
    p.add_argument("--target", choices=("tensorrt",), default="tensorrt")
    add_shapes(p, "optimization profile per input, dims joined by x, e.g. input_ids:1x8,8x128,32x512")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the findings as JSON")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")


def run(args, command: str) -> int:
    from exporter.trtcheck import check_tensorrt
    from runtimes.artifact import write_json_atomic

    shapes = dict(args.shapes) if args.shapes else None
    if shapes is not None and len(shapes) != len(args.shapes):
        names = [n for n, _ in args.shapes]
        raise CliError(f"--shapes names input {next(n for n in names if names.count(n) > 1)!r} twice; give each input once")
    report = check_tensorrt(args.artifact, shapes=shapes)
    print(report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.json, report.to_dict())
    return 0 if report else 1
