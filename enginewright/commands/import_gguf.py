"""turn a GGUF file into a Hugging Face model directory, once

Read FILE's architecture from its header (unsupported ones are refused before the slow load), load it
with transformers (weights de-quantized to float32) and write safetensors weights, the tokenizer and a
manifest (the file's hash, architecture and quantization) to OUT_DIR. The result exports with
`enginewright export OUT_DIR` (task text-generation).
"""

from __future__ import annotations

from pathlib import Path

from enginewright.commands._args import SET_BY_PIPELINE, add_output

NAME = "import-gguf"
STAGE = "artifact"  # the first stage of a pipeline whose model is a GGUF file
NOT_IN_PIPELINE = SET_BY_PIPELINE


def add_arguments(p) -> None:
    p.add_argument("gguf_file", type=Path, metavar="FILE", help="a .gguf model file (llama.cpp's format)")
    add_output(p)


def make(o, src, out, *, force: bool, command: str, progress: bool):
    """Import the GGUF file ``src`` to ``out``; returns the artifact."""
    from exporter.gguf import import_gguf

    if progress:
        return import_gguf(src, out, force=force, command=command)
    import functools

    from transformers import modeling_gguf_pytorch_utils as loader  # its tqdm bar has no switch of its own

    bar = loader.tqdm
    loader.tqdm = functools.partial(bar, disable=True)
    try:
        return import_gguf(src, out, force=force, command=command)
    finally:
        loader.tqdm = bar


def run(args, command: str) -> int:
    art = make(vars(args), args.gguf_file, args.output, force=args.force, command=command, progress=not args.quiet)
    src = art.manifest["source"]
    print(f"imported {args.gguf_file} ({src['architecture']}, {src['file_type']}) -> {art.path} (task {art.task}; "
          f"{art.manifest['options']['weights']})")
    return 0
