"""export a Hugging Face model to an ONNX artifact, checked against PyTorch

Export MODEL_DIR to ONNX with dynamic batch and sequence axes, then check it (onnx.checker, shape inference,
parity against PyTorch on sample texts). --module exports a PyTorch module from a factory.
"""

from __future__ import annotations

from pathlib import Path

from enginewright.commands._args import (SET_BY_PIPELINE, CliError, add_data_args, add_output, add_parity_tolerance,
                                         load_data)

NAME = "export"
STAGE = "artifact"
NEEDS_ONNXRUNTIME = True  # checked before it runs, with what to install
NOT_IN_PIPELINE = {**SET_BY_PIPELINE, "module": "a stage exports the previous stage's model",
                   "inputs": "with --module only"}


def add_arguments(p) -> None:
    from runtimes.tasks import TASKS

    p.add_argument("model_dir", type=Path, nargs="?", default=None, metavar="MODEL_DIR",
                   help="Hugging Face model directory (config.json + weights); or give --module")
    p.add_argument("--module", default=None, metavar="PACKAGE.MODULE:FACTORY",
                   help="export the torch.nn.Module this factory returns instead of MODEL_DIR")
    p.add_argument("--inputs", action="append", default=[], metavar="NAME:DIMS:DTYPE",
                   help="with --module, repeatable: an input with its dims (names are dynamic), e.g. x:batch_size,16:float32")
    p.add_argument("--task", choices=[t.name for t in TASKS if t.optimum_task], default=None, help="default: from config.json 'architectures'")
    p.add_argument("--opset", type=int, default=None, metavar="N", help="ONNX opset (default: optimum's for the model)")
    p.add_argument("--pooling", choices=("mean", "cls"), default=None,
                   help="feature-extraction: put pooling into the graph; the output is sentence_embedding")
    p.add_argument("--normalize", action="store_true", help="with --pooling: L2-normalise the embedding")
    p.add_argument("--graph", choices=("portable", "cpu"), default=None,
                   help="text-generation: portable (default), optimum's export in standard ONNX ops, the one TensorRT "
                        "takes; cpu, the project's compact Llama-family graph with ONNX Runtime's fused CPU kernels "
                        "(RMSNorm, rotary), about 30x fewer nodes, for ONNX Runtime on CPU")
    p.add_argument("--external-data", action="store_true",
                   help="store weights in model.onnx_data beside model.onnx (always done above 2 GB)")
    add_parity_tolerance(p)
    p.add_argument("--max-length", type=int, default=128, metavar="N", help="sequence length cap for the parity texts")
    add_data_args(p)
    add_output(p)


def make(o, src, out, *, force: bool, command: str, progress: bool):
    """Export ``src`` (a model directory) to ``out``; returns the artifact."""
    from evaluation.parity import Tolerance
    from exporter import export_hf

    return export_hf(src, out, task=o["task"], opset=o["opset"], external_data=o["external_data"], force=force,
                     tolerance=Tolerance(atol=o["atol"], rtol=o["rtol"]), data=load_data(o),
                     max_length=o["max_length"], command=command, progress=progress, pooling=o["pooling"],
                     normalize=o["normalize"], graph=o["graph"])


# options that describe a Hugging Face model or its text data, meaningless for --module
_NOT_WITH_MODULE = {"task": "--task", "graph": "--graph", "pooling": "--pooling", "normalize": "--normalize", "data": "--data"}


def _from_module(args, command: str):
    if args.model_dir is not None:
        raise CliError(f"give MODEL_DIR or --module, not both (got {args.model_dir} and --module {args.module})")
    if given := [flag for dest, flag in _NOT_WITH_MODULE.items() if getattr(args, dest)]:
        raise CliError(f"{given[0]} applies to MODEL_DIR exports; --module exports are checked on synthetic inputs of "
                       "the --inputs shapes")
    from evaluation.parity import Tolerance
    from exporter.factory import export_factory  # only when used: it lives in the exporter, not the CLI

    return export_factory(args.module, args.inputs, args.output, force=args.force, opset=args.opset,
                          external_data=args.external_data, tolerance=Tolerance(atol=args.atol, rtol=args.rtol),
                          command=command)


def run(args, command: str) -> int:
    if args.module is not None:
        art = _from_module(args, command)
        print(f"exported {args.module} -> {art.model_file}")
        summarize(art)
        return 0
    if args.model_dir is None:
        raise CliError("export needs MODEL_DIR or --module PACKAGE.MODULE:FACTORY")
    if args.inputs:
        raise CliError("--inputs goes with --module; a model directory's inputs come from its config")
    art = make(vars(args), args.model_dir, args.output, force=args.force, command=command, progress=not args.quiet)
    m = art.manifest
    print(f"exported {args.model_dir} -> {art.model_file} (task {m['task']}, opset {m['opset']}, "
          f"external data {'yes' if m['external_data'] else 'no'})")
    summarize(art)
    return 0


def summarize(art) -> None:
    from runtimes.tasks import get_task

    m = art.manifest
    padding = " (padding excluded)" if get_task(art.task).is_padded else ""
    if "top1_agreement" in (m.get("parity") or {}):  # a causal LM: teacher-forced logits and one decode step
        p = m["parity"]
        print(f"  parity vs {p['reference']}: prefill logits max abs {p['prefill_max_abs']:.3g}, decode step max abs "
              f"{p['decode_max_abs']:.3g}, top-1 agreement {p['top1_agreement']:.4f} over {p['positions']} positions: ok")
    for o in (m.get("parity") or {}).get("outputs", ()):
        print(f"  parity {o['name']} vs {m['parity'].get('reference', 'PyTorch')}: max abs {o['max_abs']:.3g}, "
              f"min cos {o['cos_min']:.6f} over {o['rows']} rows{padding}: ok")
