"""``enginewright`` command line. Only argparse is imported up front, so ``--help`` is instant;
each subcommand imports what it needs when it runs.

Exit codes: 0 ok, 1 a check failed (parity, accuracy), 2 bad usage or input, 3 a crash (a bug).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

TASK_CHOICES = ("feature-extraction", "text-classification", "token-classification")


class CliError(Exception):
    exit_code = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _csv_ints(flag: str):
    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes comma-separated integers, e.g. 1,8,32; got {text!r}") from None
        if not values or any(v < 1 for v in values):
            raise argparse.ArgumentTypeError(f"{flag} takes positive integers, got {text!r}")
        return values

    return parse


def _tolerance_arg(flag: str):
    """``X`` (all outputs) or ``NAME=X`` (one output)."""

    def parse(text: str) -> tuple[str | None, float]:
        name, sep, value = text.rpartition("=")
        try:
            return (name if sep else None), float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes a number or OUTPUT=NUMBER, got {text!r}") from None

    return parse


def _shape_arg(text: str) -> tuple[str, tuple[tuple[int, ...], ...]]:
    name, sep, spec = text.rpartition(":")
    try:
        dims = tuple(tuple(int(d) for d in part.split("x")) for part in spec.split(","))
    except ValueError:
        dims = ()
    if not sep or not name or len(dims) != 3:
        raise argparse.ArgumentTypeError(f"--shapes takes NAME:MIN,OPT,MAX with dims joined by x (input_ids:1x8,8x128,32x512), got {text!r}")
    return name, dims


def _percent(text: str) -> float:
    try:
        value = float(text.rstrip("%")) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--max-regression takes a percentage like 5% or a fraction like 0.05, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"--max-regression must be within [0%, 100%), got {text!r}")
    return value


def _provider_option(text: str) -> tuple[str, str, str]:
    device, _, kv = text.partition(":")
    key, sep, value = kv.partition("=")
    if not (device and key and sep):
        raise argparse.ArgumentTypeError(f"--provider-option takes DEVICE:KEY=VALUE (e.g. cuda:device_id=1), got {text!r}")
    return device, key, value


def _provider_options(items) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for device, key, value in items:
        out.setdefault(device, {})[key] = value
    return out


def _add_force_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _add_data_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--data", metavar="FILE", required=required,
                   help="texts: .txt (one per line), .jsonl or .csv with columns text[, text_pair, label] "
                        "(default: the project's own sample sentences)")
    p.add_argument("--text-column", default="text", metavar="NAME")
    p.add_argument("--pair-column", default=None, metavar="NAME", help="second text column (default: text_pair if present)")
    p.add_argument("--label-column", default=None, metavar="NAME", help="label column (default: label if present)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="use the first N rows only")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--on", action="append", metavar="RUNTIME", dest="runtimes",
                   help="runtime for the candidates, repeatable: torch[:cpu|:cuda], onnxruntime[:cpu|:cuda|:tensorrt], "
                        "tensorrt[:cuda] (default: torch for Hugging Face models, onnxruntime:cpu for ONNX, "
                        "tensorrt:cuda for engines)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="intra-op threads for every runtime (default: the usable cores)")
    p.add_argument("--provider-option", action="append", type=_provider_option, default=[], metavar="DEVICE:KEY=VALUE",
                   help="onnxruntime provider option, repeatable, e.g. cuda:device_id=1 or tensorrt:trt_fp16_enable=True")
    p.add_argument("-o", "--output", type=Path, default=None, metavar="DIR", help="write report.json, report.md and report.html here")
    _add_force_quiet(p)


def _add_train_args(p: argparse.ArgumentParser, epochs: int, lr: float) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=epochs, help=f"maximum epochs (default {epochs})")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--lr", type=float, default=lr, help=f"peak learning rate of AdamW (default {lr:g})")
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--warmup-ratio", type=float, default=0.1, help="fraction of steps of linear warm-up (default 0.1)")
    g.add_argument("--max-grad-norm", type=float, default=1.0)
    g.add_argument("--max-length", type=int, default=64, help="truncation length in tokens (default 64)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--patience", type=int, default=2, help="stop after N epochs without eval improvement (0: never)")
    g.add_argument("--precision", choices=("fp32", "bf16", "fp16", "auto"), default="fp32",
                   help="fp32 (default); auto: bf16/fp16 on CUDA GPUs, fp32 on CPUs")
    g.add_argument("--checkpoint-every", type=int, default=50, metavar="STEPS")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT.ckpt")
    p.add_argument("--train", required=True, metavar="DATA", help="training data (.jsonl/.csv; CoNLL for token-classification)")
    p.add_argument("--eval", required=True, metavar="DATA", help="evaluation data for early stopping and the report")
    p.add_argument("--label-column", default=None, metavar="NAME", help="label column (default: label)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_DIR")
    p.add_argument("--force", action="store_true", help="replace an existing output (and an old checkpoint)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _train_config(args):
    from exporter.training import TrainConfig

    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                       warmup_ratio=args.warmup_ratio, max_grad_norm=args.max_grad_norm, max_length=args.max_length,
                       seed=args.seed, patience=args.patience or None, precision=args.precision,
                       checkpoint_every=args.checkpoint_every)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="enginewright",
        description="Turn a PyTorch / Hugging Face model into a verified, benchmarked deployment artifact.",
        epilog="Exit codes: 0 ok, 1 a check failed (parity, accuracy), 2 bad usage or input, 3 a crash (a bug).",
    )
    parser.add_argument("--version", action="version", version="enginewright 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    p = sub.add_parser("finetune", help="fine-tune a Hugging Face encoder on labelled data",
                       description="Fine-tune MODEL_DIR for a classification task with AdamW, warm-up and decay, "
                                   "early stopping on --eval, and checkpoints to resume; writes an artifact that "
                                   "export takes as is, with a per-class evaluation report in its manifest.")
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR")
    p.add_argument("--task", choices=("text-classification", "token-classification"), default="text-classification")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (peft) and merge them into the weights")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=16)
    _add_train_args(p, epochs=3, lr=5e-5)

    p = sub.add_parser("compress", help="prune, distil or 2:4-sparsify a fine-tuned classifier",
                       description="Apply the techniques given (in this order: layer drop, pruning, 2:4 sparsity), "
                                   "then recover with a short fine-tune, or distillation with --distill.")
    p.add_argument("artifact", type=Path, metavar="ARTIFACT", help="a fine-tuned classifier (enginewright finetune output)")
    g = p.add_argument_group("techniques")
    g.add_argument("--prune-heads", type=float, default=None, metavar="F", help="fraction of attention heads to remove")
    g.add_argument("--prune-ffn", type=float, default=None, metavar="F", help="fraction of FFN neurons to remove (every layer)")
    g.add_argument("--flop-target", type=float, default=None, metavar="F",
                   help="fraction of encoder FLOPs (seq 128) to remove, split equally over heads and FFN")
    g.add_argument("--importance", choices=("gradient", "random"), default="gradient",
                   help="rank heads and neurons by gradient importance on --train (default) or at random")
    g.add_argument("--student-layers", type=int, default=None, metavar="N", help="keep N evenly spaced encoder layers")
    g.add_argument("--sparse-2-4", action="store_true", help="2:4 semi-structured sparsity of the encoder's Linear weights")
    g.add_argument("--qat", action="store_true",
                   help="quantization-aware training (INT8 fake quantization of the encoder's Linear layers); "
                        "export then writes Q/DQ pairs in the --target tensorrt placement")
    g.add_argument("--qat-percentile", type=float, default=None, metavar="P",
                   help="with --qat: activation scales from the P-th percentile of |x| (e.g. 99.99) instead of the maximum")
    g.add_argument("--qat-float-layers", type=int, default=None, metavar="N",
                   help="with --qat: keep the N layers whose quantization alone moves the logits most (on calibration "
                        "batches) in float (default 0)")
    g.add_argument("--qat-dropout", action="store_true",
                   help="with --qat: keep dropout on during the QAT fine-tune (off by default)")
    g.add_argument("--qat-attention", action="store_true",
                   help="with --qat: fake-quantize the attention's activation x activation MatMuls too (Q.K^T, P.V)")
    g.add_argument("--qat-float-attention", type=int, default=None, metavar="N",
                   help="with --qat-attention: keep the N attention MatMuls whose quantization alone moves the logits "
                        "most (on calibration batches) in float (default 0)")
    g.add_argument("--distill", action="store_true", help="recover by distillation from the teacher")
    g.add_argument("--teacher", type=Path, default=None, help="teacher model (default: ARTIFACT itself)")
    g.add_argument("--temperature", type=float, default=2.0)
    g.add_argument("--alpha", type=float, default=0.5, help="weight of the distillation term against cross-entropy")
    g.add_argument("--hidden-loss", type=float, default=0.0, metavar="W", help="weight of a hidden-state MSE term")
    g.add_argument("--no-recovery", action="store_true", help="skip recovery training")
    _add_train_args(p, epochs=2, lr=5e-5)

    p = sub.add_parser("export", help="export a Hugging Face model to an ONNX artifact, checked against PyTorch",
                       description="Export MODEL_DIR to ONNX with dynamic batch and sequence axes, then check it "
                                   "(onnx.checker, shape inference, parity against PyTorch on sample texts).")
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="Hugging Face model directory (config.json + weights)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_DIR")
    p.add_argument("--task", choices=TASK_CHOICES, default=None, help="default: from config.json 'architectures'")
    p.add_argument("--opset", type=int, default=None, metavar="N", help="ONNX opset (default: optimum's for the model)")
    p.add_argument("--pooling", choices=("mean", "cls"), default=None,
                   help="feature-extraction: put pooling into the graph; the output is sentence_embedding")
    p.add_argument("--normalize", action="store_true", help="with --pooling: L2-normalise the embedding")
    p.add_argument("--external-data", action="store_true",
                   help="store weights in model.onnx_data beside model.onnx (always done above 2 GB)")
    p.add_argument("--atol", type=float, default=1e-4, help="parity tolerance, absolute (default 1e-4)")
    p.add_argument("--rtol", type=float, default=1e-4, help="parity tolerance, relative (default 1e-4)")
    p.add_argument("--max-length", type=int, default=128, metavar="N", help="sequence length cap for the parity texts")
    _add_data_args(p)
    _add_force_quiet(p)

    p = sub.add_parser("optimize", help="fuse an ONNX artifact's graph for a target (ONNX Runtime CPU/CUDA, TensorRT)",
                       description="cpu/cuda: ONNX Runtime's transformer fusions (contrib ops, ONNX Runtime only); "
                                   "tensorrt: standard ONNX ops only. --fp16 converts weights and compute to FP16. "
                                   "Parity against the input is checked and recorded.")
    p.add_argument("artifact", type=Path, metavar="ARTIFACT")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_DIR")
    p.add_argument("--target", choices=("cpu", "cuda", "tensorrt"), default="cpu")
    p.add_argument("--fp16", action="store_true", help="FP16 weights and compute (inputs/outputs stay FP32)")
    p.add_argument("--fp16-io", action="store_true", help="with --fp16: FP16 inputs and outputs too")
    _add_data_args(p)
    _add_force_quiet(p)

    p = sub.add_parser("quantize", help="INT8 post-training quantization (static QDQ or dynamic) with accuracy-driven exclusion",
                       description="Quantize an ONNX artifact with ONNX Runtime's tools. --target tensorrt gives "
                                   "symmetric per-channel QDQ on MatMul/Gemm inputs that TensorRT's explicit "
                                   "quantization takes; --max-cosine-loss keeps the costliest nodes in float until met.")
    p.add_argument("artifact", type=Path, metavar="ARTIFACT")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_DIR")
    p.add_argument("--mode", choices=("static", "dynamic"), default="static")
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
    _add_force_quiet(p)

    p = sub.add_parser("check", help="readiness of an ONNX artifact for TensorRT, without a GPU",
                       description="Check operators, types, Q/DQ placement and profile coverage against TensorRT's "
                                   "ONNX parser support (table from onnx-tensorrt's operators.md). Exit 1 when the "
                                   "model cannot build.")
    p.add_argument("artifact", type=Path, metavar="ARTIFACT")
    p.add_argument("--target", choices=("tensorrt",), default="tensorrt")
    p.add_argument("--shapes", nargs="+", action="extend", type=_shape_arg, default=None, metavar="NAME:MIN,OPT,MAX",
                   help="optimization profile per input, dims joined by x, e.g. input_ids:1x8,8x128,32x512")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the findings as JSON")

    p = sub.add_parser("build", help="build a TensorRT engine from an ONNX artifact (NVIDIA GPU and TensorRT needed)",
                       description="Parse the ONNX artifact with TensorRT's parser and build an engine: precision follows "
                                   "the graph (FP16 or Q/DQ INT8 artifacts build strongly typed), optimization profiles "
                                   "from --shapes or the manifest's dynamic dims, a timing cache, and a manifest naming "
                                   "the TensorRT version and GPU the engine is for. Not yet run on a GPU.")
    p.add_argument("artifact", type=Path, metavar="ARTIFACT")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_DIR")
    p.add_argument("--shapes", nargs="+", action="extend", type=_shape_arg, default=None, metavar="NAME:MIN,OPT,MAX",
                   help="profile per input, dims joined by x, e.g. input_ids:1x1,8x128,32x512 (default: from the manifest)")
    p.add_argument("--timing-cache", type=Path, default=None, metavar="FILE", help="read (if present) and write a timing cache")
    p.add_argument("--cache-dir", type=Path, default=None, metavar="DIR", help="engine cache: reuse an identical build")
    p.add_argument("--workspace", type=float, default=None, metavar="GiB")
    p.add_argument("--opt-level", type=int, default=None, metavar="N", help="builder optimization level 0..5")
    p.add_argument("--sparsity", action="store_true", help="allow 2:4 sparse kernels (for compress --sparse-2-4 models)")
    p.add_argument("--version-compatible", action="store_true", help="engine runs on later TensorRT versions too")
    p.add_argument("--hardware-compatible", action="store_true", help="engine runs on any Ampere or newer GPU")
    p.add_argument("--fp16", action="store_true", help="TensorRT 10 only: FP16 builder flag for an FP32 graph, or for the layers outside Q/DQ of an "
                        "INT8 graph (which otherwise run in FP32)")
    _add_force_quiet(p)

    p = sub.add_parser("run", help="run a pipeline file (stages, options, data, gates) with step caching",
                       description="Validate PIPELINE.yaml, then run its stages in order; unchanged stages are reused "
                                   "from the run directory, a changed one reruns with everything after it.")
    p.add_argument("pipeline", type=Path, metavar="PIPELINE.yaml")
    p.add_argument("--from", dest="start", default=None, metavar="STAGE", help="rerun from this stage on")
    p.add_argument("--to", dest="stop", default=None, metavar="STAGE", help="stop after this stage")
    p.add_argument("--force", action="store_true", help="rerun every stage")
    p.add_argument("--junit", type=Path, default=None, metavar="FILE", help="write the compare stage's checks as JUnit XML")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("triton", help="write a Triton Inference Server model repository from ONNX/TensorRT artifacts",
                       description="One model per artifact: config.pbtxt (validated with Triton's ModelConfig schema) "
                                   "and the model file in version folder 1.")
    p.add_argument("artifacts", type=Path, nargs="+", metavar="ARTIFACT")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="MODEL_REPOSITORY")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--no-dynamic-batching", action="store_true")
    p.add_argument("--max-queue-delay-us", type=int, default=100)
    p.add_argument("--instances", type=int, default=1, help="instances per model (instance_group count)")
    p.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    p.add_argument("--tensorrt-accelerator", action="store_true", help="ONNX models: ONNX Runtime's TensorRT EP in Triton")
    p.add_argument("--fp16-accelerator", action="store_true", help="with --tensorrt-accelerator: FP16 precision mode")
    p.add_argument("--cuda-graphs", action="store_true", help="TensorRT engines: CUDA graphs in Triton")
    p.add_argument("--ensemble", action="store_true",
                   help="also write NAME_tokenizer (Python backend) and NAME_ensemble: raw texts in, model outputs out")
    p.add_argument("--ensemble-max-length", type=int, default=128, metavar="N", help="tokens per text in the ensemble")
    p.add_argument("--force", action="store_true", help="replace an existing output")

    p = sub.add_parser("inspect", help="what an artifact is, where it came from and what was measured")
    p.add_argument("artifact", type=Path, metavar="ARTIFACT")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = sub.add_parser("env", help="library versions, ONNX Runtime providers, CUDA, TensorRT and CPU features")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = sub.add_parser("compare", help="padding-aware parity of candidates against a reference on real texts",
                       description="Run the same texts through REF and every CANDIDATE; report per-output errors "
                                   "(padded positions excluded), cosine, top-1 agreement and the task metric "
                                   "when the data has labels. Exit 1 when a check fails.")
    p.add_argument("reference", type=Path, metavar="REF")
    p.add_argument("candidates", type=Path, nargs="+", metavar="CANDIDATE")
    p.add_argument("--ref-on", default=None, metavar="RUNTIME", help="runtime for REF (default: by its kind)")
    _add_data_args(p)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    for flag, helptext in (("--atol", "absolute tolerance (default 1e-4)"), ("--rtol", "relative tolerance (default 1e-4)"),
                           ("--min-cosine", "lowest row cosine (default 0.999)"), ("--min-top1", "lowest top-1 agreement for logits (default: not checked)"),
                           ("--min-pooled-cosine", "token-level outputs: lowest mean cosine of the masked-mean-pooled "
                                                   "vectors, one per text (default: not checked)")):
        p.add_argument(flag, action="append", type=_tolerance_arg(flag), default=[], metavar="[OUTPUT=]X",
                       help=helptext + "; repeat with OUTPUT=X for one output")
    p.add_argument("--fail-on", default="parity,accuracy", metavar="CHECKS",
                   help="which checks set exit 1: comma-separated from parity, accuracy, or none (default parity,accuracy)")
    p.add_argument("--max-accuracy-drop", type=float, default=1.0, metavar="POINTS",
                   help="accuracy gate: candidates may trail the reference by this many points (default 1)")
    p.add_argument("--junit", type=Path, default=None, metavar="FILE", help="write each check as a JUnit test case")
    _add_run_args(p)

    p = sub.add_parser("bench", help="latency and throughput of artifacts on runtimes, interleaved",
                       description="Time every ARTIFACT on its runtimes over a batch x sequence sweep (or real texts "
                                   "at natural lengths with --natural); runners take turns so drift hits all alike.")
    p.add_argument("artifacts", type=Path, nargs="+", metavar="ARTIFACT")
    _add_data_args(p)
    p.add_argument("--batch", type=_csv_ints("--batch"), default=(1, 8), metavar="B[,B...]", help="batch sizes (default 1,8)")
    p.add_argument("--seq", type=_csv_ints("--seq"), default=(128,), metavar="S[,S...]",
                   help="sequence lengths (default 128); with --natural, the truncation length")
    p.add_argument("--natural", action="store_true", help="feed the data's texts at their natural lengths")
    p.add_argument("--iters", type=int, default=None, metavar="N", help="timed iterations per runner and cell")
    p.add_argument("--time", type=float, default=3.0, metavar="S", dest="time_budget",
                   help="timed seconds per runner and cell when --iters is not given (default 3)")
    p.add_argument("--warmup", type=int, default=3, metavar="N")
    p.add_argument("--rounds", type=int, default=5, metavar="N", help="interleaved rounds per cell (default 5)")
    p.add_argument("--baseline", type=Path, default=None, metavar="REPORT",
                   help="a previous bench report.json: exit 1 when throughput falls more than --max-regression")
    p.add_argument("--max-regression", type=_percent, default=0.05, metavar="PCT", help="allowed throughput drop (default 5%%)")
    p.add_argument("--junit", type=Path, default=None, metavar="FILE", help="write each throughput check as a JUnit test case")
    _add_run_args(p)
    return parser


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _load_data(args):
    from evaluation.data import load_texts

    if args.limit is not None and args.limit < 1:
        raise CliError(f"--limit must be at least 1, got {args.limit}")
    return load_texts(args.data, text_column=args.text_column, pair_column=args.pair_column,
                      label_column=args.label_column, limit=args.limit)


def _tolerances(args):
    from evaluation.parity import Tolerance

    fields = {"atol": args.atol, "rtol": args.rtol, "min_cosine": args.min_cosine, "min_top1": args.min_top1,
              "min_pooled_cosine": args.min_pooled_cosine}
    default_kw = {k: v for k, items in fields.items() for name, v in items if name is None}
    default = Tolerance(**default_kw)
    per_output: dict[str, dict] = {}
    for k, items in fields.items():
        for name, v in items:
            if name is not None:
                per_output.setdefault(name, {})[k] = v
    return default, {n: Tolerance(**{**vars(default), **kw}) for n, kw in per_output.items()}


def cmd_export(args, command: str) -> int:
    from evaluation.parity import Tolerance
    from exporter import export_hf

    data = _load_data(args)
    art = export_hf(args.model_dir, args.output, task=args.task, opset=args.opset, external_data=args.external_data,
                    force=args.force, tolerance=Tolerance(atol=args.atol, rtol=args.rtol), data=data,
                    max_length=args.max_length, command=command, progress=not args.quiet, pooling=args.pooling,
                    normalize=args.normalize)
    m = art.manifest
    out = m["parity"]["outputs"]
    print(f"exported {args.model_dir} -> {art.model_file} (task {m['task']}, opset {m['opset']}, "
          f"external data {'yes' if m['external_data'] else 'no'})")
    for o in out:
        print(f"  parity {o['name']} vs {m['parity'].get('reference', 'PyTorch')}: max abs {o['max_abs']:.3g}, "
              f"min cos {o['cos_min']:.6f} over {o['rows']} rows (padding excluded): ok")
    return 0


def cmd_optimize(args, command: str) -> int:
    from exporter.optimize import optimize

    art = optimize(args.artifact, args.output, target=args.target, fp16=args.fp16, keep_io_types=not args.fp16_io,
                   force=args.force, data=_load_data(args), command=command, progress=not args.quiet)
    o = art.manifest["optimization"]
    before, after = sum(o["ops_before"].values()), sum(o["ops_after"].values())
    print(f"optimized {args.artifact} for {o['target']}{' (fp16)' if o['fp16'] else ''}: {before} -> {after} nodes")
    for name, count in (o.get("fused") or {}).items():
        print(f"  fused {name}: {count}")
    if o["contrib_ops"]:
        print(f"  contrib ops (ONNX Runtime only): {', '.join(o['contrib_ops'])}")
    for out in art.manifest["parity"]["outputs"]:
        print(f"  parity {out['name']} vs input: max abs {out['max_abs']:.3g}, min cos {out['cos_min']:.6f}: ok")
    print(f"artifact: {art.path}")
    return 0


def cmd_quantize(args, command: str) -> int:
    from evaluation.data import load_texts
    from exporter.quantize import QuantizeConfig, quantize

    config = QuantizeConfig(mode=args.mode, target=args.target, method=args.method, per_channel=args.per_channel,
                            reduce_range={"auto": None, "on": True, "off": False}[args.reduce_range],
                            weight_only=not args.all_matmuls,
                            exclude=tuple(x.strip() for x in args.exclude.split(",") if x.strip()),
                            max_cosine_loss=args.max_cosine_loss, max_float_nodes=args.max_float_nodes,
                            calib_rows=args.calib_rows, eval_rows=args.eval_rows, max_length=args.max_length)
    calib = load_texts(args.calib, text_column=args.text_column, pair_column=args.pair_column) if args.calib else None
    art = quantize(args.artifact, args.output, config=config, calib=calib, force=args.force, command=command,
                   progress=not args.quiet)
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


QUANTIZE_WARN_BELOW = 0.98  # mean pooled cosine: all-MiniLM-L6-v2's --target tensorrt without the search gives 0.82


def cmd_build(args, command: str) -> int:
    from exporter.trtbuild import build_engine

    art = build_engine(args.artifact, args.output, shapes=args.shapes, timing_cache=args.timing_cache,
                       workspace_gib=args.workspace, opt_level=args.opt_level, sparsity=args.sparsity,
                       version_compatible=args.version_compatible, hardware_compatible=args.hardware_compatible,
                       fp16_flag=args.fp16, force=args.force, command=command, progress=not args.quiet,
                       cache_dir=args.cache_dir)
    m = art.manifest
    print(f"engine {art.model_file} ({m['precision']}) for TensorRT {m['tensorrt']['version']} on "
          f"{m['gpu']['name']} (compute capability {m['gpu']['compute_capability']}); profiles: {m['profiles']}")
    return 0


def cmd_run(args, command: str) -> int:
    from enginewright.pipeline import load_pipeline, run_pipeline

    pipe = load_pipeline(args.pipeline)
    results = run_pipeline(pipe, start=args.start, stop=args.stop, force=args.force, progress=not args.quiet,
                           junit=args.junit)
    print(f"pipeline {args.pipeline}: done ({', '.join(results)}); run directory {pipe.run_dir}")
    return 0


def cmd_triton(args, command: str) -> int:
    from exporter.triton import TritonConfig, write_repository

    cfg = TritonConfig(max_batch_size=args.max_batch_size, dynamic_batching=not args.no_dynamic_batching,
                       max_queue_delay_us=args.max_queue_delay_us, instance_count=args.instances, device=args.device,
                       tensorrt_accelerator=args.tensorrt_accelerator, fp16_accelerator=args.fp16_accelerator,
                       cuda_graphs=args.cuda_graphs, ensemble=args.ensemble, ensemble_max_length=args.ensemble_max_length)
    repo = write_repository(args.artifacts, args.output, config=cfg, force=args.force)
    for d in sorted(p for p in repo.iterdir() if p.is_dir()):
        print(f"{d}/config.pbtxt, {d}/1/{next((d / '1').iterdir(), Path('(ensemble: no model file)')).name}")
    print(f"serve with: tritonserver --model-repository={repo.resolve()}")
    return 0


def cmd_inspect(args, command: str) -> int:
    import json

    from benchmarks.inspect_env import artifact_text, describe_artifact

    info = describe_artifact(args.artifact)
    print(json.dumps(info, indent=2) if args.json else artifact_text(info))
    return 0


def cmd_env(args, command: str) -> int:
    import json

    from benchmarks.inspect_env import describe_env, env_text

    env = describe_env()
    print(json.dumps(env, indent=2) if args.json else env_text(env))
    return 0


def cmd_check(args, command: str) -> int:
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


def cmd_compare(args, command: str) -> int:
    from evaluation.compare import CompareConfig, run_compare
    from evaluation.report import write_report
    from runtimes.artifact import check_output_free

    fail_on = {x.strip() for x in args.fail_on.split(",") if x.strip()}
    if not fail_on <= {"parity", "accuracy", "none"} or ("none" in fail_on and len(fail_on) > 1):
        raise CliError(f"--fail-on {args.fail_on!r}: give parity, accuracy (comma-separated) or none")
    if args.output is not None:
        check_output_free(args.output, args.force)
    default, per_output = _tolerances(args)
    config = CompareConfig(batch_size=args.batch_size, max_length=args.max_length,
                           threads=args.threads or _usable_cores(), tolerance=default, per_output=per_output,
                           provider_options=_provider_options(args.provider_option))
    outcome = run_compare(args.reference, args.candidates, _load_data(args), runtimes=args.runtimes,
                          ref_runtime=args.ref_on, config=config, command=command, progress=not args.quiet)
    md = outcome.markdown()
    print(md)
    if args.output is not None:
        write_report(args.output, outcome.report, md, force=args.force)
        print(f"report: {args.output / 'report.md'}")
    from benchmarks.gates import metric_checks, parity_checks, summary, write_junit

    checks = {"parity": parity_checks(outcome.report), "accuracy": metric_checks(outcome.report, args.max_accuracy_drop)}
    if args.junit is not None:
        write_junit(args.junit, checks["parity"] + checks["accuracy"], "compare")
    gated = [c for kind in fail_on - {"none"} for c in checks[kind]]
    if checks["accuracy"]:
        print(f"accuracy gate (max drop {args.max_accuracy_drop:g} points): {summary(checks['accuracy'])}")
    if any(not c.passed for c in gated):
        print(f"compare FAILED ({', '.join(sorted(fail_on))}): {summary(gated)}", file=sys.stderr)
        return 1
    return 0


def cmd_bench(args, command: str) -> int:
    from evaluation.report import write_report
    from benchmarks.throughput import BenchConfig, bench_markdown, run_bench
    from runtimes.artifact import check_output_free

    if args.output is not None:
        check_output_free(args.output, args.force)
    baseline = None
    if args.baseline is not None:
        from benchmarks.gates import load_baseline

        baseline = load_baseline(args.baseline)
    config = BenchConfig(batches=args.batch, seqs=args.seq, warmup=args.warmup, iters=args.iters,
                         time_budget=args.time_budget, rounds=args.rounds, threads=args.threads or _usable_cores(),
                         natural=args.natural, provider_options=_provider_options(args.provider_option))
    report = run_bench(args.artifacts, _load_data(args), runtimes=args.runtimes, config=config, command=command,
                       progress=not args.quiet)
    md = bench_markdown(report)
    print(md)
    if args.output is not None:
        write_report(args.output, report, md, force=args.force)
        print(f"report: {args.output / 'report.md'}")
    if baseline is None:
        return 0
    from benchmarks.gates import regression_checks, summary, write_junit

    checks = regression_checks(report, baseline, args.max_regression)
    if args.junit is not None:
        write_junit(args.junit, checks, "bench")
    print(f"throughput against {args.baseline}: {summary(checks)}")
    for c in checks:
        if c.skipped:
            print(f"  skipped {c.name}: {c.message}")
    return 0 if all(c.passed for c in checks) else 1


def cmd_finetune(args, command: str) -> int:
    from evaluation.metrics import format_report
    from exporter.finetune import LoraSettings, finetune

    lora = LoraSettings(r=args.lora_r, alpha=args.lora_alpha) if args.lora else None
    art = finetune(args.model_dir, args.output, train_data=args.train, eval_data=args.eval, task=args.task,
                   config=_train_config(args), lora=lora, device=args.device, label_column=args.label_column,
                   force=args.force, resume=args.resume, command=command, progress=not args.quiet)
    _print_eval(art.manifest["eval"], format_report)
    t = art.manifest["training"]
    print(f"best epoch {t['best_epoch']} of {t['epochs_run']}{' (stopped early)' if t['stopped_early'] else ''}; "
          f"artifact: {art.path}")
    return 0


def _print_eval(report: dict, format_report) -> None:
    if report["metric"] == "accuracy":
        print(format_report(report["per_class"]))
        print(f"accuracy {report['accuracy']:.4f} (95% CI {report['ci_low']:.4f}-{report['ci_high']:.4f}, {report['rows']} rows)")
    else:
        print("token level:\n" + format_report(report["token_level"]))
        print("entity level:\n" + format_report(report["entity_level"]))


def cmd_compress(args, command: str) -> int:
    from evaluation.metrics import format_report
    from exporter.compress import DistillConfig, LayerDropConfig, PruneConfig, QATConfig, Sparse24Config, compress

    techniques = []
    if args.student_layers is not None:
        techniques.append(LayerDropConfig(args.student_layers))
    if any(v is not None for v in (args.prune_heads, args.prune_ffn, args.flop_target)):
        techniques.append(PruneConfig(heads=args.prune_heads, ffn=args.prune_ffn, flop_target=args.flop_target,
                                      importance=args.importance, seed=args.seed))
    if args.sparse_2_4:
        techniques.append(Sparse24Config())
    if args.qat:
        techniques.append(QATConfig(act_percentile=args.qat_percentile, float_layers=args.qat_float_layers or 0,
                                    dropout=args.qat_dropout, attention=args.qat_attention,
                                    float_attention=args.qat_float_attention or 0))
    else:
        given = [f for f, v in (("--qat-percentile", args.qat_percentile), ("--qat-float-layers", args.qat_float_layers),
                                ("--qat-dropout", args.qat_dropout or None),
                                ("--qat-attention", args.qat_attention or None),
                                ("--qat-float-attention", args.qat_float_attention)) if v is not None]
        if given:
            raise CliError(f"{given[0]} needs --qat")
    if args.distill:
        techniques.append(DistillConfig(temperature=args.temperature, alpha=args.alpha, hidden_weight=args.hidden_loss))
    if not techniques:
        raise CliError("compress needs a technique: --prune-heads/--prune-ffn/--flop-target, --student-layers, --sparse-2-4, --qat or --distill")
    art = compress(args.artifact, args.output, techniques, train_data=args.train, eval_data=args.eval,
                   recovery=None if args.no_recovery else _train_config(args), teacher=args.teacher, device=args.device,
                   label_column=args.label_column, force=args.force, resume=args.resume, command=command,
                   progress=not args.quiet)
    m = art.manifest
    _print_eval(m["after"]["eval"], format_report)
    b, a = m["before"], m["after"]
    print(f"params {b['params']:,} -> {a['params']:,}; encoder FLOPs (seq 128) {b['encoder_flops_seq128']:,} -> "
          f"{a['encoder_flops_seq128']:,} ({1 - a['encoder_flops_seq128'] / b['encoder_flops_seq128']:.1%} fewer); "
          f"eval {b['eval']['metric']} {_headline(b['eval']):.4f} -> {_headline(a['eval']):.4f}; artifact: {art.path}")
    t = m.get("training")
    if m.get("qat") and t:
        kept = "the calibrated model before training" if t["best_epoch"] == 0 else f"epoch {t['best_epoch']} of {t['epochs_run']}"
        print(f"QAT: kept {kept}, by agreement with the input model's predictions on --eval ({t['best_metric']:.4f})")
    return 0


def _headline(report: dict) -> float:
    return report["accuracy"] if report["metric"] == "accuracy" else report["entity_micro_f1"]


# Commands that always use onnxruntime (it comes from the `cpu` or `gpu` extra); compare and bench
# need it only for ONNX artifacts, and its runner says so.
_NEEDS_ORT = {"export", "optimize", "quantize", "run"}
INTERNAL_ERROR = 3  # a crash: distinct from 1 (a check failed) and 2 (bad input or environment)


def _require_onnxruntime() -> None:
    import importlib.util

    from runtimes.errors import UsageError
    from runtimes.onnxrt.runner import ORT_MISSING

    if importlib.util.find_spec("onnxruntime") is None:
        raise UsageError(ORT_MISSING)


COMMANDS = {"finetune": cmd_finetune, "compress": cmd_compress, "export": cmd_export, "optimize": cmd_optimize,
            "quantize": cmd_quantize, "check": cmd_check, "build": cmd_build, "run": cmd_run, "triton": cmd_triton, "inspect": cmd_inspect, "env": cmd_env, "compare": cmd_compare, "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None) is not None and args.threads < 1:
        print(f"enginewright: error: --threads must be at least 1, got {args.threads}", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched from a hub at run time
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from runtimes.errors import EnginewrightError

    command = shlex.join(["enginewright", *argv])
    try:
        if args.command in _NEEDS_ORT:
            _require_onnxruntime()
        return COMMANDS[args.command](args, command)
    except (EnginewrightError, CliError) as e:
        print(f"enginewright {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except (OSError, MemoryError) as e:  # the machine, not the program: disk, permissions, memory
        print(f"enginewright {args.command}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if type(e).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch here
            print(f"enginewright {args.command}: error: out of GPU memory ({str(e).splitlines()[0][:200]}); use a smaller "
                  "batch or sequence length", file=sys.stderr)
            return 2
        # a bug: the traceback, then an exit code no check uses, so CI cannot read it as a failed check
        import traceback

        traceback.print_exc()
        print(f"enginewright {args.command}: unexpected error (the traceback above; please report it), exit {INTERNAL_ERROR}",
              file=sys.stderr)
        return INTERNAL_ERROR
    except KeyboardInterrupt:
        hint = "; continue with --resume" if args.command in ("finetune", "compress") else ""
        print(f"enginewright {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
