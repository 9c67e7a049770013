"""build a TensorRT engine from an ONNX artifact (NVIDIA GPU and TensorRT needed)

Parse the ONNX artifact with TensorRT's parser and build an engine: precision follows the graph (FP16 or Q/DQ
INT8 artifacts build strongly typed), optimization profiles from --shapes or the manifest's dynamic dims, a
timing cache, and a manifest naming the TensorRT version and GPU the engine is for. A decoder (text-generation)
gets two profiles by default, prefill (empty past) and decode (one token); --dims changes a named dim's range.
Not yet run on a GPU.
"""

from __future__ import annotations

from pathlib import Path

from enginewright.commands._args import SET_BY_PIPELINE, CliError, DimArg, ShapeArg, add_output

NAME = "build"
STAGE = "artifact"
NOT_IN_PIPELINE = SET_BY_PIPELINE


def add_shapes(p, help: str) -> None:
    p.add_argument("--shapes", nargs="+", action="extend", type=ShapeArg("--shapes"), default=None,
                   metavar="NAME:MIN,OPT,MAX", help=help)


def add_arguments(p) -> None:
    p.add_argument("artifact", type=Path, metavar="ARTIFACT")
    add_shapes(p, "profile per input, dims joined by x, e.g. input_ids:1x1,8x128,32x512 (default: from the manifest)")
    p.add_argument("--dims", nargs="+", action="extend", type=DimArg("--dims"), default=None, metavar="NAME=MIN,OPT,MAX",
                   help="replace a named dim's range in the task's default profiles, e.g. batch_size=1,1,4 or (a decoder's "
                        "decode profile) past_sequence_length=1,512,2047")
    p.add_argument("--timing-cache", type=Path, default=None, metavar="FILE", help="read (if present) and write a timing cache")
    p.add_argument("--cache-dir", type=Path, default=None, metavar="DIR", help="engine cache: reuse an identical build")
    p.add_argument("--workspace", type=float, default=None, metavar="GiB")
    p.add_argument("--opt-level", type=int, default=None, metavar="N", help="builder optimization level 0..5")
    p.add_argument("--sparsity", action="store_true", help="allow 2:4 sparse kernels (for compress --sparse-2-4 models)")
    p.add_argument("--version-compatible", action="store_true",
                   help="engine runs on later TensorRT versions too; it embeds TensorRT's lean runtime (host code), "
                        "so running it needs --trust-engine-code (docs/guarantees.md)")
    p.add_argument("--hardware-compatible", action="store_true", help="engine runs on any Ampere or newer GPU")
    p.add_argument("--fp16", action="store_true", help="TensorRT 10 only: FP16 builder flag for an FP32 graph, or for "
                                                       "the layers outside Q/DQ of an INT8 graph (which otherwise run in FP32)")
    add_output(p)


def dims_of(o) -> dict | None:
    """``--dims`` as ``{name: (min, opt, max)}``; a name given twice is refused."""
    if not o.get("dims"):
        return None
    names = [n for n, _ in o["dims"]]
    if dup := sorted({n for n in names if names.count(n) > 1}):
        raise CliError(f"--dims gives dim {dup[0]!r} twice; give each dim once")
    return dict(o["dims"])


def make(o, src, out, *, force: bool, command: str, progress: bool):
    from exporter.trtbuild import build_engine

    return build_engine(src, out, shapes=o["shapes"], dims=dims_of(o), timing_cache=o["timing_cache"],
                        workspace_gib=o["workspace"], opt_level=o["opt_level"], sparsity=o["sparsity"],
                        version_compatible=o["version_compatible"],
                        hardware_compatible=o["hardware_compatible"], fp16_flag=o["fp16"], force=force,
                        command=command, progress=progress, cache_dir=o["cache_dir"])


def run(args, command: str) -> int:
    art = make(vars(args), args.artifact, args.output, force=args.force, command=command, progress=not args.quiet)
    m = art.manifest
    print(f"engine {art.model_file} ({m['precision']}) for TensorRT {m['tensorrt']['version']} on "
          f"{m['gpu']['name']} (compute capability {m['gpu']['compute_capability']})")
    names = m["builder"].get("profile_names") or [str(i) for i in range(len(m["profiles"]))]
    for name, profile in zip(names, m["profiles"]):
        print(f"  profile {name}: {profile}")
    return 0
