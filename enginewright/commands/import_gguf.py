"""turn a GGUF file into a Hugging Face model directory, once

Read FILE's architecture from its header (unsupported ones are refused before the slow load), load it
with transformers (weights de-quantized to float32) and write safetensors weights, the tokenizer and a
manifest (the file's hash, architecture and quantization) to OUT_DIR. The result exports with
`enginewright export OUT_DIR` (task text-generation).
"""

from __future__ import annotations

from pathlib import Path

from enginewright.commands._args import add_output

NAME = "import-gguf"
STAGE = None


def add_arguments(p) -> None:
    p.add_argument("gguf_file", type=Path, metavar="FILE", help="a .gguf model file (llama.cpp's format)")
    add_output(p, quiet=False)


def run(args, command: str) -> int:
    from exporter.gguf import import_gguf

    art = import_gguf(args.gguf_file, args.output, force=args.force, command=command)
    src = art.manifest["source"]
    print(f"imported {args.gguf_file} ({src['architecture']}, {src['file_type']}) -> {art.path} (task {art.task}; "
          f"{art.manifest['options']['weights']})")
    return 0
