"""Re-quantize a GGUF file with llama.cpp's own quantizer, to measure the carry-over of other types.

    python -m benchmarks.gguf_requant Q4_K_M -o runs/kq/smollm2-q4km.gguf
    python -m benchmarks.gguf_requant Q5_K_M -o runs/k5/smollm2-q5km.gguf

The input (``--gguf``, default the packaged SmolLM2-135M-Instruct Q4_1) goes through
``llama_model_quantize`` of llama-cpp-python (requantizing allowed), the way llama.cpp's
``llama-quantize`` tool writes a file, so the K-quant measurements of docs/llm.md start from a file
llama.cpp itself wrote. The file is written beside ``-o`` under a temporary name and renamed when
complete; prints the tensor types it holds.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from collections import Counter
from pathlib import Path


def requantize(src: Path, out: Path, file_type: str, threads: int) -> dict[str, int]:
    """Write ``src`` re-quantized to llama.cpp's ``file_type`` (``Q4_K_M``, ``Q8_0``...) at ``out``;
    returns the count of each tensor type in the result.

    Raises:
        UsageError: llama-cpp-python missing, or a file type llama.cpp does not know.
    """
    from runtimes.errors import UsageError

    try:
        import llama_cpp
    except ImportError:
        raise UsageError("gguf_requant needs llama-cpp-python: pip install -e '.[dev]' (it builds llama.cpp)") from None
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{file_type.upper()}", None)
    if ftype is None:
        known = sorted(n.removeprefix("LLAMA_FTYPE_MOSTLY_") for n in dir(llama_cpp) if n.startswith("LLAMA_FTYPE_MOSTLY_"))
        raise UsageError(f"file type {file_type!r}: llama.cpp knows {', '.join(known)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = ftype, True, threads
    tmp = out.with_name(f".{out.name}.partial")
    try:
        if llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
            raise RuntimeError(f"llama_model_quantize failed on {src}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    from gguf import GGUFReader

    return dict(sorted(Counter(t.tensor_type.name for t in GGUFReader(str(out)).tensors).items()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gguf_requant", description=__doc__.split("\n\n")[0])
    p.add_argument("file_type", help="llama.cpp's file type: Q4_K_M, Q5_K_M, Q8_0 ...")
    p.add_argument("-o", "--output", type=Path, required=True, help="the GGUF file to write")
    p.add_argument("--gguf", type=Path, default=None, help="the input (default: the packaged SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    args = p.parse_args(argv)

    from benchmarks.llm_speed import packaged_gguf
    from runtimes import usable_cores
    from runtimes.errors import UsageError
    from runtimes.outputs import check_output_file

    src = args.gguf or packaged_gguf()
    if not src.is_file():
        raise UsageError(f"--gguf {src}: no such file")
    check_output_file(args.output, force=args.force, inputs=[src], flag="-o", owned=None)  # any file the user names
    types = requantize(src, args.output, args.file_type, usable_cores())
    print(f"wrote {args.output} ({args.file_type.upper()}): " + ", ".join(f"{n} {t}" for t, n in types.items()))
    return 0


if __name__ == "__main__":
    from benchmarks.compression import run_main

    sys.exit(run_main(main, None))
