"""The bad-input catalogue: what a hostile but realistic user types, across every command.

Each case asserts the exit code, one line on stderr that names the offending file, field or option,
no traceback, and the file system unchanged (the case's directory and the shared tiny models,
before and after).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from enginewright.cli import main


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]  # {hf} tiny BERT dir, {onnx} a private copy of its ONNX export, {t} the case's directory
    words: tuple[str, ...]  # each must appear in the one error line
    setup: Callable[[Path], None] | None = None
    code: int = 2


def _write(name: str, content: str | bytes) -> Callable[[Path], None]:
    def setup(t: Path) -> None:
        p = t / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return setup


def _edit_json(rel: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def setup(t: Path) -> None:
        p = t / rel
        data = json.loads(p.read_text())
        change(data)
        p.write_text(json.dumps(data))
    return setup


def _truncate_model(t: Path) -> None:
    p = t / "onnx" / "model.onnx"
    p.write_bytes(p.read_bytes()[:500])


def _other_vocabulary_lm(t: Path) -> None:
    """``t/teacher``: a tiny Llama whose tokenizer has one token more than the shared one's."""
    from tests.conftest import make_tiny_lm

    make_tiny_lm(t / "teacher", "llama")
    tj = t / "teacher" / "tokenizer.json"
    data = json.loads(tj.read_text())
    data["model"]["vocab"]["zzqx"] = max(data["model"]["vocab"].values()) + 1
    tj.write_text(json.dumps(data))


def _relist(t: Path) -> None:
    """Record the onnx copy's files as they are now in its manifest (an edit the size and hash checks cannot see)."""
    from runtimes.artifact import file_table

    _edit_json("onnx/manifest.json", lambda m: m.update(files=file_table(t / "onnx")))(t)


def _symlink_model_out(t: Path) -> None:
    (t / "outside.onnx").write_bytes((t / "onnx" / "model.onnx").read_bytes())
    (t / "onnx" / "model.onnx").unlink()
    (t / "onnx" / "model.onnx").symlink_to(t / "outside.onnx")


def _external_data_out(t: Path) -> None:
    """The first initializer of model.onnx keeps its data in ../secret.bin, outside the artifact."""
    import onnx

    path = t / "onnx" / "model.onnx"
    model = onnx.load(str(path))
    tensor = model.graph.initializer[0]
    (t / "secret.bin").write_bytes(tensor.raw_data or onnx.numpy_helper.to_array(tensor).tobytes())
    onnx.external_data_helper.set_external_data(tensor, "../secret.bin", 0, (t / "secret.bin").stat().st_size)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    onnx.save_model(model, str(path))
    _relist(t)


def _flip_byte(rel: str) -> Callable[[Path], None]:
    def setup(t: Path) -> None:
        p = t / rel
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 1
        p.write_bytes(bytes(data))
    return setup


def _pipeline(text: str) -> Callable[[Path], None]:
    return _write("p.yaml", text)


PROGRESS = re.compile(r"\d+%\|")  # a progress bar on stderr is not an error line

CASES = [
    # decoder-only LLMs ({llm}: a tiny Llama directory, {llm_onnx}: its export)
    Case("compare-llm-max-new-tokens-zero", ("compare", "{llm}", "{llm_onnx}", "--max-new-tokens", "0"), ("--max-new-tokens",)),
    Case("compare-llm-bad-ppl-budget", ("compare", "{llm}", "{llm_onnx}", "--max-ppl-increase", "lots"),
         ("--max-ppl-increase",)),
    Case("bench-llm-empty-prompts", ("bench", "{llm}", "{llm_onnx}", "--prompts", "{t}/p.txt"), ("p.txt",), _write("p.txt", "\n\n")),
    Case("quantize-weight-only-bad-bits", ("quantize", "{llm_onnx}", "-o", "{t}/out", "--mode", "weight-only", "--bits", "3"),
         ("--bits",)),
    # the TensorRT route for decoders: weight-only DequantizeLinear form, decoder profiles
    Case("quantize-weight-only-trt-asymmetric", ("quantize", "{llm_onnx}", "-o", "{t}/out", "--mode", "weight-only",
                                                 "--target", "tensorrt", "--asymmetric"), ("--asymmetric", "symmetric")),
    Case("quantize-weight-only-trt-block-32", ("quantize", "{llm_onnx}", "-o", "{t}/out", "--mode", "weight-only",
                                               "--target", "tensorrt", "--block-size", "32"), ("--block-size 32", "64 or 128")),
    Case("quantize-weight-only-trt-int8-blocks", ("quantize", "{llm_onnx}", "-o", "{t}/out", "--mode", "weight-only", "--bits",
                                                  "8", "--target", "tensorrt", "--block-size", "64"), ("--block-size", "per output channel")),
    Case("quantize-weight-only-trt-nothing-fits", ("quantize", "{llm_onnx}", "-o", "{t}/out", "--mode", "weight-only",
                                                   "--target", "tensorrt"), ("model.onnx", "no MatMul weight fits", "K = 32")),
    Case("optimize-llm-fp16", ("optimize", "{llm_onnx}", "-o", "{t}/out", "--target", "tensorrt", "--fp16"),
         ("--fp16", "decoder")),
    Case("build-llm-dims-out-of-order", ("build", "{llm_onnx}", "-o", "{t}/out", "--dims", "past_sequence_length=4,2,8"),
         ("--dims past_sequence_length", "MIN <= OPT <= MAX")),
    Case("build-llm-dims-unknown", ("build", "{llm_onnx}", "-o", "{t}/out", "--dims", "heads=1,2,4"), ("--dims", "'heads'")),
    Case("build-llm-dims-twice", ("build", "{llm_onnx}", "-o", "{t}/out", "--dims", "batch_size=1,1,1", "batch_size=1,2,2"),
         ("--dims", "twice")),
    Case("build-llm-dims-malformed", ("build", "{llm_onnx}", "-o", "{t}/out", "--dims", "past_sequence_length=1,2"),
         ("--dims", "NAME=MIN,OPT,MAX")),
    Case("build-llm-dims-and-shapes", ("build", "{llm_onnx}", "-o", "{t}/out", "--dims", "batch_size=1,1,1", "--shapes",
                                       "input_ids:1x1,1x8,1x16"), ("--dims", "--shapes")),
    # import-gguf
    Case("import-gguf-missing-file", ("import-gguf", "{t}/nope.gguf", "-o", "{t}/out"), ("nope.gguf", "no such file")),
    Case("import-gguf-not-gguf", ("import-gguf", "{t}/m.gguf", "-o", "{t}/out"), ("m.gguf", "not a readable GGUF"),
         _write("m.gguf", b"GGUF-but-not-really" * 4)),
    # export
    Case("export-missing-dir", ("export", "{t}/nope", "-o", "{t}/out"), ("nope",)),
    Case("export-bad-task", ("export", "{hf}", "-o", "{t}/out", "--task", "translation"), ("--task",)),
    Case("export-data-missing", ("export", "{hf}", "-o", "{t}/out", "--data", "{t}/d.jsonl"), ("d.jsonl", "not found")),
    Case("export-data-binary", ("export", "{hf}", "-o", "{t}/out", "--data", "{t}/d.txt"), ("d.txt", "binary"),
         _write("d.txt", b"\x00\x01\x02")),
    Case("export-data-latin1", ("export", "{hf}", "-o", "{t}/out", "--data", "{t}/d.txt"), ("d.txt", "UTF-8"),
         _write("d.txt", "caf\xe9\n".encode("latin-1"))),
    Case("export-data-no-column", ("export", "{hf}", "-o", "{t}/out", "--data", "{t}/d.jsonl"), ("d.jsonl", "no column 'text'"),
         _write("d.jsonl", '{"sentence": "x"}\n')),
    Case("export-csv-wide-row", ("export", "{hf}", "-o", "{t}/out", "--data", "{t}/d.csv"), ("d.csv", "more fields"),
         _write("d.csv", "text,label\na,b\nc,d,e\n")),
    Case("export-output-exists", ("export", "{hf}", "-o", "{t}/out"), ("out", "--force"), _write("out/keep.txt", "keep")),
    Case("export-bad-opset", ("export", "{hf}", "-o", "{t}/out", "--opset", "3"), ("opset",)),
    Case("export-max-length-zero", ("export", "{hf}", "-o", "{t}/out", "--max-length", "0"), ("--max-length",)),
    Case("export-config-wrong-type", ("export", "{t}/hf", "-o", "{t}/out"), ("config.json",),
         None),  # set up below: a copy of the tiny model with "hidden_size": "big"
    # optimize
    Case("optimize-not-onnx", ("optimize", "{hf}", "-o", "{t}/out"), ("optimize",)),
    Case("optimize-truncated-model", ("optimize", "{t}/onnx", "-o", "{t}/out"), ("model.onnx",), _truncate_model),
    Case("optimize-output-exists", ("optimize", "{onnx}", "-o", "{t}/out"), ("out", "--force"), _write("out/x", "x")),
    Case("optimize-bad-target", ("optimize", "{onnx}", "-o", "{t}/out", "--target", "tpu"), ("--target",)),
    # quantize
    Case("quantize-truncated-model", ("quantize", "{t}/onnx", "-o", "{t}/out", "--mode", "dynamic"), ("model.onnx",), _truncate_model),
    Case("quantize-calib-missing", ("quantize", "{onnx}", "-o", "{t}/out", "--mode", "static", "--calib", "{t}/c.txt"),
         ("c.txt", "not found")),
    Case("quantize-calib-markdown", ("quantize", "{onnx}", "-o", "{t}/out", "--mode", "static", "--calib", "{t}/README.md"),
         ("README.md", "unknown data file type"), _write("README.md", "# notes\n")),
    Case("quantize-bad-mode", ("quantize", "{onnx}", "-o", "{t}/out", "--mode", "int3"), ("--mode",)),
    Case("quantize-max-length-zero", ("quantize", "{onnx}", "-o", "{t}/out", "--mode", "dynamic", "--max-length", "0"),
         ("--max-length",)),
    Case("quantize-bad-cosine-loss", ("quantize", "{onnx}", "-o", "{t}/out", "--max-cosine-loss", "-1"), ("--max-cosine-loss",)),
    Case("quantize-manifest-inputs-string", ("quantize", "{t}/onnx", "-o", "{t}/out", "--mode", "dynamic"),
         ("manifest.json", "inputs"), _edit_json("onnx/manifest.json", lambda m: m.update(inputs="input_ids"))),
    # compare
    Case("compare-no-candidate", ("compare", "{hf}"), ("CANDIDATE",)),
    Case("compare-limit-zero", ("compare", "{hf}", "{onnx}", "--limit", "0"), ("--limit 0: must be at least 1",)),
    Case("compare-text-in-a-directory", ("compare", "{hf}", "{onnx}", "--data", "{t}/texts"),
         ("a.txt", "text data is one .jsonl, .csv or .txt file"), _write("texts/a.txt", "hello\n")),
    Case("compare-missing-candidate", ("compare", "{hf}", "{t}/nope"), ("nope",)),
    Case("compare-bad-runtime", ("compare", "{hf}", "{onnx}", "--on", "tflite"), ("tflite",)),
    Case("compare-bad-atol", ("compare", "{hf}", "{onnx}", "--atol", "abc"), ("--atol",)),
    Case("compare-negative-atol", ("compare", "{hf}", "{onnx}", "--atol", "-1"), ("atol",)),
    Case("compare-unknown-output-tolerance", ("compare", "{hf}", "{onnx}", "--atol", "last_hidden_states=1"),
         ("last_hidden_states",)),
    Case("compare-bad-batch-size", ("compare", "{hf}", "{onnx}", "--batch-size", "0"), ("--batch-size",)),
    Case("compare-max-length-too-long", ("compare", "{hf}", "{onnx}", "--max-length", "1024"), ("--max-length", "1024")),
    Case("compare-junit-missing-folder", ("compare", "{hf}", "{onnx}", "--junit", "{t}/no/such/dir/j.xml"), ("--junit",)),
    Case("compare-bad-fail-on", ("compare", "{hf}", "{onnx}", "--fail-on", "speed"), ("--fail-on",)),
    Case("compare-data-empty", ("compare", "{hf}", "{onnx}", "--data", "{t}/e.txt"), ("e.txt", "empty"), _write("e.txt", "\n\n")),
    Case("compare-output-exists", ("compare", "{hf}", "{onnx}", "-o", "{t}/out"), ("out", "--force"), _write("out/x", "x")),
    # bench
    Case("bench-bad-batch", ("bench", "{onnx}", "--batch", "0"), ("--batch",)),
    Case("bench-batch-not-a-number", ("bench", "{onnx}", "--batch", "eight"), ("--batch",)),
    Case("bench-seq-one", ("bench", "{onnx}", "--seq", "1"), ("--seq",)),
    Case("bench-seq-too-long", ("bench", "{onnx}", "--seq", "1024", "--iters", "1"), ("--seq", "1024")),
    Case("bench-time-nan", ("bench", "{onnx}", "--time", "nan"), ("--time",)),
    Case("bench-zero-rounds", ("bench", "{onnx}", "--rounds", "0"), ("--rounds",)),
    Case("bench-baseline-missing", ("bench", "{onnx}", "--baseline", "{t}/old.json"), ("old.json",)),
    Case("bench-baseline-not-json", ("bench", "{onnx}", "--baseline", "{t}/old.json"), ("old.json",), _write("old.json", "{oops")),
    Case("bench-baseline-malformed", ("bench", "{onnx}", "--baseline", "{t}/old.json"), ("old.json",),
         _write("old.json", json.dumps({"schema_version": 1, "results": "many"}))),
    Case("bench-bad-regression", ("bench", "{onnx}", "--max-regression", "lots"), ("--max-regression",)),
    Case("bench-zero-threads", ("bench", "{onnx}", "--threads", "0"), ("--threads",)),
    Case("bench-bad-provider-option", ("bench", "{onnx}", "--provider-option", "cuda"), ("--provider-option",)),
    # check
    Case("check-not-onnx", ("check", "{hf}"), ("check",)),
    Case("check-bad-shapes", ("check", "{onnx}", "--shapes", "input_ids:1x8"), ("--shapes",)),
    Case("check-shapes-unknown-input", ("check", "{onnx}", "--shapes", "pixels:1x8,1x8,1x8"), ("pixels",)),
    Case("check-json-exists", ("check", "{onnx}", "--json", "{t}/r.json"), ("r.json", "--force"), _write("r.json", "{}")),
    Case("check-json-is-manifest", ("check", "{t}/onnx", "--json", "{t}/onnx/manifest.json"), ("manifest.json",)),
    # build (no TensorRT here: the message says so, before anything is written)
    Case("build-no-tensorrt-or-bad-shapes", ("build", "{onnx}", "-o", "{t}/out", "--shapes", "input_ids:0x8,1x8,1x8"),
         ("build",)),
    Case("build-not-onnx", ("build", "{hf}", "-o", "{t}/out"), ("build",)),
    # triton
    Case("triton-output-exists", ("triton", "{onnx}", "-o", "{t}/repo"), ("repo", "--force"), _write("repo/keep.txt", "keep")),
    Case("triton-manifest-absolute-model-file", ("triton", "{t}/onnx", "-o", "{t}/repo"), ("model_file",),
         _edit_json("onnx/manifest.json", lambda m: m.update(model_file="/etc/hostname"))),
    Case("triton-manifest-dotdot-model-file", ("triton", "{t}/onnx", "-o", "{t}/repo"), ("model_file",),
         _edit_json("onnx/manifest.json", lambda m: m.update(model_file="../onnx/model.onnx"))),
    Case("triton-symlinked-model-file-out", ("triton", "{t}/onnx", "-o", "{t}/repo"), ("model_file", "symlink"),
         _symlink_model_out),
    Case("triton-external-data-escapes", ("triton", "{t}/onnx", "-o", "{t}/repo"), ("model.onnx", "external data", ".."),
         _external_data_out),
    Case("triton-same-size-byte-changed", ("triton", "{t}/onnx", "-o", "{t}/repo"), ("model.onnx", "changed", "sha256"),
         _flip_byte("onnx/model.onnx")),
    Case("triton-listed-file-missing", ("triton", "{t}/onnx", "-o", "{t}/repo"), ("vocab.txt", "missing"),
         lambda t: (t / "onnx" / "vocab.txt").unlink()),
    Case("triton-manifest-files-wrong-type", ("triton", "{t}/onnx", "-o", "{t}/repo"), ("manifest.json", "files"),
         _edit_json("onnx/manifest.json", lambda m: m["files"].update({"model.onnx": 163374}))),
    Case("quantize-external-data-escapes", ("quantize", "{t}/onnx", "-o", "{t}/out", "--mode", "dynamic"),
         ("external data", ".."), _external_data_out),
    Case("optimize-model-not-onnx", ("optimize", "{t}/onnx", "-o", "{t}/out"), ("model.onnx", "not a valid ONNX model"),
         lambda t: (_write("onnx/model.onnx", b"\x00garbage" * 100)(t), _relist(t))),
    Case("triton-bad-max-batch", ("triton", "{onnx}", "-o", "{t}/repo", "--max-batch-size", "-1"), ("--max-batch-size",)),
    Case("triton-decoder-batched", ("triton", "{llm_onnx}", "-o", "{t}/repo", "--max-batch-size", "8"),
         ("--max-batch-size 8", "unbatched")),
    Case("triton-decoder-ensemble", ("triton", "{llm_onnx}", "-o", "{t}/repo", "--ensemble"), ("--ensemble", "encoders")),
    # inspect
    Case("inspect-missing", ("inspect", "{t}/nope"), ("nope",)),
    Case("inspect-manifest-not-json", ("inspect", "{t}/onnx"), ("manifest.json",), _write("onnx/manifest.json", "{")),
    Case("inspect-manifest-list", ("inspect", "{t}/onnx"), ("manifest.json",), _write("onnx/manifest.json", "[1, 2]")),
    # run (pipelines)
    Case("run-missing-file", ("run", "{t}/p.yaml"), ("p.yaml",)),
    Case("run-not-yaml", ("run", "{t}/p.yaml"), ("p.yaml",), _pipeline("model: [unclosed\n")),
    Case("run-no-stages", ("run", "{t}/p.yaml"), ("p.yaml", "stages"), _pipeline("model: {hf}\nrun_dir: {t}/r\n")),
    Case("run-unknown-stage", ("run", "{t}/p.yaml"), ("p.yaml", "deploy"), _pipeline("model: {hf}\nrun_dir: {t}/r\nstages:\n  - deploy: {{}}\n")),
    Case("run-gguf-stage-with-a-model-dir", ("run", "{t}/p.yaml"), ("p.yaml:4", "import-gguf"),
         _pipeline("model: {hf}\nrun_dir: {t}/r\nstages:\n  - import-gguf: {{}}\n")),
    Case("run-unknown-option", ("run", "{t}/p.yaml"), ("p.yaml", "colour"),
         _pipeline("model: {hf}\nrun_dir: {t}/r\nstages:\n  - export: {{colour: red}}\n")),
    Case("run-stage-without-options", ("run", "{t}/p.yaml"), ("p.yaml",),
         _pipeline("model: {hf}\nrun_dir: {t}/r\nstages:\n  - export:\n  - bench: {{batch: eight}}\n")),
    Case("run-empty-run-dir", ("run", "{t}/p.yaml"), ("p.yaml", "run_dir"),
         _pipeline("model: {hf}\nrun_dir:\nstages:\n  - export: {{}}\n")),
    Case("run-bench-bad-option-value", ("run", "{t}/p.yaml"), ("p.yaml", "batch"),
         _pipeline("model: {hf}\nrun_dir: {t}/r\nstages:\n  - export: {{}}\n  - bench: {{batch: [8, 0]}}\n")),
    Case("run-from-after-to", ("run", "{t}/p.yaml", "--from", "bench", "--to", "export"), ("--from",),
         _pipeline("model: {hf}\nrun_dir: {t}/r\nstages:\n  - export: {{}}\n  - bench: {{batch: [1]}}\n")),
    # finetune / compress
    Case("finetune-train-missing", ("finetune", "{hf}", "--train", "{t}/tr.jsonl", "--eval", "{t}/tr.jsonl", "-o", "{t}/out"),
         ("tr.jsonl",)),
    Case("finetune-no-labels", ("finetune", "{hf}", "--train", "{t}/tr.jsonl", "--eval", "{t}/tr.jsonl", "-o", "{t}/out"),
         ("tr.jsonl", "label"), _write("tr.jsonl", '{"text": "a"}\n{"text": "b"}\n')),
    Case("finetune-bad-epochs", ("finetune", "{hf}", "--train", "{t}/tr.jsonl", "--eval", "{t}/tr.jsonl", "-o", "{t}/out",
                                 "--epochs", "0"), ("epochs",),
         _write("tr.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')),
    # finetune --task text-generation ({llm}: a tiny Llama; prompt/response pairs)
    Case("finetune-lm-no-response", ("finetune", "{llm}", "--task", "text-generation", "--train", "{t}/tr.jsonl",
                                     "--eval", "{t}/tr.jsonl", "-o", "{t}/out"), ("tr.jsonl:2", "'response'"),
         _write("tr.jsonl", '{"prompt": "a", "response": "b"}\n{"prompt": "c", "answer": "d"}\n')),
    Case("finetune-lm-empty-file", ("finetune", "{llm}", "--task", "text-generation", "--train", "{t}/tr.jsonl",
                                    "--eval", "{t}/tr.jsonl", "-o", "{t}/out"), ("tr.jsonl", "empty"), _write("tr.jsonl", "\n")),
    Case("finetune-lm-no-tokenizer", ("finetune", "{t}/lm", "--task", "text-generation", "--train", "{t}/tr.jsonl",
                                      "--eval", "{t}/tr.jsonl", "-o", "{t}/out"), ("lm", "no tokenizer"),
         _write("tr.jsonl", '{"prompt": "a", "response": "b"}\n')),
    Case("finetune-lm-response-cut-away", ("finetune", "{llm}", "--task", "text-generation", "--train", "{t}/tr.jsonl",
                                           "--eval", "{t}/tr.jsonl", "-o", "{t}/out", "--max-length", "8"),
         ("tr.jsonl", "row 1", "--max-length 8"),
         _write("tr.jsonl", '{"prompt": "a prompt that takes far more than eight tokens", "response": "b"}\n')),
    Case("finetune-lm-not-causal", ("finetune", "{hf}", "--task", "text-generation", "--train", "{t}/tr.jsonl",
                                    "--eval", "{t}/tr.jsonl", "-o", "{t}/out"), ("--task text-generation", "causal"),
         _write("tr.jsonl", '{"prompt": "a", "response": "b"}\n')),
    Case("finetune-lm-bad-lora-targets", ("finetune", "{llm}", "--task", "text-generation", "--train", "{t}/tr.jsonl",
                                          "--eval", "{t}/tr.jsonl", "-o", "{t}/out", "--lora", "--lora-targets", "nope"),
         ("--lora-targets nope",), _write("tr.jsonl", '{"prompt": "a", "response": "b"}\n')),
    Case("compress-nothing-asked", ("compress", "{hf}", "-o", "{t}/out"), ("compress",)),
    Case("compress-bad-fraction", ("compress", "{hf}", "--train", "{t}/tr.jsonl", "--eval", "{t}/tr.jsonl", "-o", "{t}/out",
                                   "--prune-heads", "1.5"), ("--prune-heads",),
         _write("tr.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')),
    # compress of a causal LM ({llm}: 2 layers)
    Case("compress-llm-drop-every-layer", ("compress", "{llm}", "--train", "{t}/tr.jsonl", "--eval", "{t}/tr.jsonl",
                                           "-o", "{t}/out", "--student-layers", "0", "--distill"), ("student layers", "0"),
         _write("tr.jsonl", '{"text": "the quick brown fox"}\n')),
    Case("compress-llm-no-layer-dropped", ("compress", "{llm}", "--train", "{t}/tr.jsonl", "--eval", "{t}/tr.jsonl",
                                           "-o", "{t}/out", "--student-layers", "2", "--distill"), ("fewer layers", "2"),
         _write("tr.jsonl", '{"text": "the quick brown fox"}\n')),
    Case("compress-llm-empty-text-file", ("compress", "{llm}", "--train", "{t}/tr.txt", "--eval", "{t}/tr.txt",
                                          "-o", "{t}/out", "--student-layers", "1", "--distill"), ("tr.txt",),
         _write("tr.txt", "")),
    Case("compress-llm-no-text-to-score", ("compress", "{llm}", "--train", "{t}/tr.jsonl", "--eval", "{t}/tr.jsonl",
                                           "-o", "{t}/out", "--student-layers", "1", "--distill"), ("tr.jsonl", "2 tokens"),
         _write("tr.jsonl", '{"text": "a"}\n{"text": "b"}\n')),
    Case("compress-llm-teacher-other-vocabulary", ("compress", "{llm}", "--train", "{t}/tr.jsonl", "--eval", "{t}/tr.jsonl",
                                                   "-o", "{t}/out", "--student-layers", "1", "--distill", "--teacher", "{t}/teacher"),
         ("teacher", "tokenizer"), lambda t: (_write("tr.jsonl", '{"text": "the quick brown fox"}\n')(t), _other_vocabulary_lm(t))),
    Case("check-hf", ("check", "{llm}"), ("check --target tensorrt takes an ONNX artifact", "'hf'")),
    Case("triton-llm-hf", ("triton", "{llm}", "-o", "{t}/repo"), ("this is a 'hf' artifact; run enginewright export on it first",)),
    Case("compress-llm-pruning", ("compress", "{llm}", "--train", "{t}/tr.jsonl", "--eval", "{t}/tr.jsonl",
                                  "-o", "{t}/out", "--prune-heads", "0.5"), ("--prune-heads", "causal LM prunes FFN neurons"),
         _write("tr.jsonl", '{"text": "the quick brown fox"}\n')),
]


def _snapshot(*roots: Path) -> dict[str, str]:
    files = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                files[str(p)] = hashlib.sha1(p.read_bytes()).hexdigest()
            elif p.is_dir():
                files[str(p)] = "dir"
    return files


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tiny_bert, tiny_onnx, tiny_llama, tiny_llama_onnx, tmp_path, capsys):
    t = tmp_path / "case"
    t.mkdir()
    shutil.copytree(tiny_onnx, t / "onnx")
    if case.id == "export-config-wrong-type":
        shutil.copytree(tiny_bert, t / "hf")
        _edit_json("hf/config.json", lambda c: c.update(hidden_size="big"))(t)
    if case.id == "finetune-lm-no-tokenizer":  # a causal LM's weights and config, without its tokenizer files
        (t / "lm").mkdir()
        for name in ("config.json", "model.safetensors"):
            shutil.copy2(tiny_llama / name, t / "lm" / name)
    fill = {"hf": str(tiny_bert), "onnx": str(t / "onnx"), "t": str(t), "llm": str(tiny_llama),
            "llm_onnx": str(tiny_llama_onnx)}
    if case.setup is not None:
        case.setup(t)
        pipeline = t / "p.yaml"
        if pipeline.exists():
            pipeline.write_text(pipeline.read_text().format(**fill))
    before = _snapshot(t, tiny_bert, tiny_onnx, tiny_llama, tiny_llama_onnx)
    try:
        code = main([a.format(**fill) for a in case.argv])
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    out, err = capsys.readouterr()
    lines = [x for x in re.split(r"[\r\n]", err) if x.strip() and not x.startswith("warning:") and not PROGRESS.search(x)]
    assert "Traceback" not in err, err
    assert code == case.code, f"exit {code}, expected {case.code}: {err}"
    assert len(lines) == 1, f"expected one error line, got: {err}"
    for w in case.words:
        assert w.format(**fill) in lines[0], f"{w!r} not in {lines[0]!r}"
    assert _snapshot(t, tiny_bert, tiny_onnx, tiny_llama, tiny_llama_onnx) == before, "the command changed the file system"


def test_the_catalogue_covers_every_command():
    assert len(CASES) >= 60
    from enginewright.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices) - {"env"}
    assert commands <= {c.argv[0] for c in CASES}
