"""Option groups and value types that several commands share, each defined once.

An option's value type parses the command line's text; the ones whose YAML spelling differs from
the text (lists, mappings) also say how a pipeline's YAML value is written as that text
(``from_yaml``), so both routes end in the same parse. ``example`` is a (command-line text, YAML
value) pair of the same meaning, for the tests that hold the two routes together.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


class CliError(Exception):
    """Bad usage the command itself detects: one line, exit 2."""

    exit_code = 2


# options whose values a command reads: no output may be, hold or lie inside one of them
_DATA_OPTIONS = ("data", "calib", "train", "eval", "baseline", "teacher")
_INPUT_OPTIONS = ("artifact", "artifacts", "model_dir", "reference", "candidates", "cache_dir", "pipeline", *_DATA_OPTIONS)


def command_inputs(o: dict) -> list:
    """The paths a command reads, from its parsed options (built-in data sets left out)."""
    values = [v for k in _INPUT_OPTIONS for v in (o.get(k) if isinstance(o.get(k), list) else [o.get(k)])]
    return [v for v in values if isinstance(v, (str, os.PathLike)) and not str(v).startswith("builtin:")]


def check_file_outputs(o: dict) -> None:
    """Check the single files a run will write (``--junit``, check's ``--json``) before its first
    expensive step, and that ``-o`` is apart from the data files; the rest of ``-o`` is checked by the
    stage's writer once its inputs are open.

    Raises:
        UsageError: what ``runtimes.outputs.check_output_file`` refuses, naming the option, the path and why.
    """
    from runtimes.outputs import check_apart, check_output_file

    inputs = command_inputs(o)
    if o.get("output") is not None:  # the data files; the stage's writer checks its artifacts once they are open
        check_apart(o["output"], [v for k, v in o.items() if k in _DATA_OPTIONS and v in inputs])
    if o.get("junit") is not None:
        check_output_file(o["junit"], force=None, inputs=inputs, flag="--junit")
    if isinstance(o.get("json"), Path):
        check_output_file(o["json"], force=bool(o.get("force")), inputs=inputs, flag="--json")


class ValueType:
    """A parser of one option's text, with the option's name in its messages."""

    example: tuple[str, object]

    def __init__(self, flag: str):
        self.flag = flag

    def __call__(self, text: str):
        raise NotImplementedError

    def from_yaml(self, value) -> list[str]:
        """The command-line texts a YAML value stands for (a list: one per repetition)."""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return [str(value)]
        raise argparse.ArgumentTypeError(f"takes {self.example[1]!r}-like values, got {value!r}")


class PositiveInt(ValueType):
    """A count that must be at least 1 (``--max-new-tokens``): refused while the options are read, so
    a pipeline says so with its file and line before any stage runs."""

    example = ("7", 7)  # unlike any default it stands in for

    def __call__(self, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{self.flag} takes a whole number, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{self.flag} {value}: must be at least 1")
        return value


class CsvInts(ValueType):
    example = ("2,16", [2, 16])

    def __call__(self, text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{self.flag} takes comma-separated integers, e.g. 1,8,32; got {text!r}") from None
        if not values or any(v < 1 for v in values):
            raise argparse.ArgumentTypeError(f"{self.flag} takes positive integers, got {text!r}")
        return values

    def from_yaml(self, value) -> list[str]:
        if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [",".join(map(str, value))]
        return super().from_yaml(value)


class ToleranceArg(ValueType):
    """``X`` (all outputs) or ``NAME=X`` (one output); in YAML a number or ``{NAME: X}``."""

    example = ("0.25", 0.25)

    def __call__(self, text: str) -> tuple[str | None, float]:
        name, sep, value = text.rpartition("=")
        try:
            return (name if sep else None), float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{self.flag} takes a number or OUTPUT=NUMBER, got {text!r}") from None

    def from_yaml(self, value) -> list[str]:
        if isinstance(value, dict):
            return [f"{k}={v}" for k, v in value.items()]
        return super().from_yaml(value)


class AccuracyLevelArg(ValueType):
    """``LEVEL`` (every MatMul) or ``MATMUL=LEVEL`` (the MatMuls whose node name contains MATMUL), LEVEL
    one of MatMulNBits' ``accuracy_level`` values 0..4; in YAML a number or ``{MATMUL: LEVEL}``."""

    example = ("lm_head=4", {"lm_head": 4})

    def __call__(self, text: str) -> tuple[str | None, int]:
        name, sep, value = text.rpartition("=")
        try:
            level = int(value)
        except ValueError:
            level = -1
        if level not in range(5) or (sep and not name):
            raise argparse.ArgumentTypeError(f"{self.flag} takes a level 0..4 or MATMUL=LEVEL (lm_head=4), got {text!r}")
        return (name if sep else None), level

    def from_yaml(self, value) -> list[str]:
        if isinstance(value, dict):
            return [f"{k}={v}" for k, v in value.items()]
        return super().from_yaml(value)


class ShapeArg(ValueType):
    """``NAME:MIN,OPT,MAX`` with dims joined by x; in YAML ``{NAME: [MIN, OPT, MAX]}``, dims as lists."""

    example = ("input_ids:1x8,8x128,32x512", {"input_ids": [[1, 8], [8, 128], [32, 512]]})

    def __call__(self, text: str) -> tuple[str, tuple[tuple[int, ...], ...]]:
        name, sep, spec = text.rpartition(":")
        try:
            dims = tuple(tuple(int(d) for d in part.split("x")) for part in spec.split(","))
        except ValueError:
            dims = ()
        if not sep or not name or len(dims) != 3:
            raise argparse.ArgumentTypeError(f"{self.flag} takes NAME:MIN,OPT,MAX with dims joined by x "
                                             f"(input_ids:1x8,8x128,32x512), got {text!r}")
        return name, dims

    def from_yaml(self, value) -> list[str]:
        if isinstance(value, dict) and all(isinstance(v, list) and all(isinstance(d, list) for d in v) for v in value.values()):
            return [f"{k}:" + ",".join("x".join(map(str, d)) for d in v) for k, v in value.items()]
        raise argparse.ArgumentTypeError(f"takes {{NAME: [MIN, OPT, MAX]}} with dims as lists, got {value!r}")


class DimArg(ValueType):
    """``NAME=MIN,OPT,MAX`` for one named dim; in YAML ``{NAME: [MIN, OPT, MAX]}``."""

    example = ("past_sequence_length=1,256,1023", {"past_sequence_length": [1, 256, 1023]})

    def __call__(self, text: str) -> tuple[str, tuple[int, int, int]]:
        name, sep, spec = text.partition("=")
        try:
            rng = tuple(int(d) for d in spec.split(","))
        except ValueError:
            rng = ()
        if not sep or not name or len(rng) != 3:
            raise argparse.ArgumentTypeError(f"{self.flag} takes NAME=MIN,OPT,MAX for a named dim "
                                             f"(past_sequence_length=1,256,1023), got {text!r}")
        return name, rng

    def from_yaml(self, value) -> list[str]:
        if isinstance(value, dict) and all(isinstance(v, list) and len(v) == 3 for v in value.values()):
            return [f"{k}=" + ",".join(map(str, v)) for k, v in value.items()]
        raise argparse.ArgumentTypeError(f"takes {{NAME: [MIN, OPT, MAX]}}, got {value!r}")


class Percent(ValueType):
    example = ("10%", 0.1)

    def __call__(self, text: str) -> float:
        try:
            value = float(text.rstrip("%")) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{self.flag} takes a percentage like 5% or a fraction like 0.05, got {text!r}") from None
        if not 0 <= value < 1:
            raise argparse.ArgumentTypeError(f"{self.flag} must be within [0%, 100%), got {text!r}")
        return value


class ProviderOption(ValueType):
    """``DEVICE:KEY=VALUE``; in YAML ``{DEVICE: {KEY: VALUE}}``."""

    example = ("cuda:device_id=1", {"cuda": {"device_id": 1}})

    def __call__(self, text: str) -> tuple[str, str, str]:
        device, _, kv = text.partition(":")
        key, sep, value = kv.partition("=")
        if not (device and key and sep):
            raise argparse.ArgumentTypeError(f"{self.flag} takes DEVICE:KEY=VALUE (e.g. cuda:device_id=1), got {text!r}")
        return device, key, value

    def from_yaml(self, value) -> list[str]:
        if isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()):
            return [f"{dev}:{k}={v}" for dev, kv in value.items() for k, v in kv.items()]
        return super().from_yaml(value)


def provider_options(items) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for device, key, value in items:
        out.setdefault(device, {})[key] = value
    return out


# What a pipeline sets itself for every artifact stage (see each command's NOT_IN_PIPELINE).
SET_BY_PIPELINE = {"output": "the pipeline names each stage's directory", "force": "the pipeline decides what reruns",
                   "quiet": "run's own --quiet"}
# ... and for a check stage (compare, bench)
REPORTS_BY_PIPELINE = {**SET_BY_PIPELINE, "output": "the pipeline writes its own summary", "junit": "run's own --junit"}


# --- option groups ---------------------------------------------------------------------------

def add_output(p: argparse.ArgumentParser, *, required: bool = True, metavar: str = "OUT_DIR", help: str | None = None,
               force_help: str = "replace an existing output", quiet: bool = True) -> None:
    """``-o/--output``, ``--force`` and (with ``quiet``) ``-q/--quiet``."""
    p.add_argument("-o", "--output", type=Path, required=required, default=None, metavar=metavar, help=help)
    p.add_argument("--force", action="store_true", help=force_help)
    if quiet:
        add_quiet(p)


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="FILE", default=None,
                   help="texts: .txt (one per line), .jsonl or .csv with columns text[, text_pair, label] "
                        "(default: the project's own sample sentences)")
    p.add_argument("--text-column", default="text", metavar="NAME")
    p.add_argument("--pair-column", default=None, metavar="NAME", help="second text column (default: text_pair if present)")
    p.add_argument("--label-column", default=None, metavar="NAME", help="label column (default: label if present)")
    p.add_argument("--limit", type=PositiveInt("--limit"), default=None, metavar="N", help="use the first N rows only")


def add_parity_tolerance(p: argparse.ArgumentParser) -> None:
    """``--atol``/``--rtol`` of a stage that checks its own output against its input."""
    p.add_argument("--atol", type=float, default=1e-4, help="parity tolerance, absolute (default 1e-4)")
    p.add_argument("--rtol", type=float, default=1e-4, help="parity tolerance, relative (default 1e-4)")


TOLERANCE_FLAGS = (
    ("--atol", "absolute tolerance (default 1e-4)"), ("--rtol", "relative tolerance (default 1e-4)"),
    ("--min-cosine", "lowest row cosine (default 0.999)"),
    ("--min-top1", "lowest top-1 agreement for logits (default: not checked)"),
    ("--min-pooled-cosine", "token-level outputs: lowest mean cosine of the masked-mean-pooled vectors, one per text "
                            "(default: not checked)"),
)


def add_tolerances(p: argparse.ArgumentParser) -> None:
    """Per-output tolerances of compare: each flag repeatable, ``X`` or ``OUTPUT=X``."""
    for flag, helptext in TOLERANCE_FLAGS:
        p.add_argument(flag, action="append", type=ToleranceArg(flag), default=[], metavar="[OUTPUT=]X",
                       help=helptext + "; repeat with OUTPUT=X for one output")


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    """Where candidates run: ``--on``, ``--threads``, ``--provider-option``."""
    p.add_argument("--on", action="append", metavar="RUNTIME", dest="runtimes",
                   help="runtime for the candidates, repeatable: torch[:cpu|:cuda], onnxruntime[:cpu|:cuda|:tensorrt], "
                        "tensorrt[:cuda], llama.cpp (a model imported from a GGUF: the file itself, batch 1 for generation) "
                        "(default: torch for Hugging Face models, onnxruntime:cpu for ONNX, tensorrt:cuda for engines)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="intra-op threads for every runtime (default: the usable cores)")
    p.add_argument("--provider-option", action="append", type=ProviderOption("--provider-option"), default=[],
                   metavar="DEVICE:KEY=VALUE",
                   help="onnxruntime provider option, repeatable, e.g. cuda:device_id=1 or tensorrt:trt_fp16_enable=True")
    p.add_argument("--trust-engine-code", action="store_true",
                   help="let TensorRT load the host code an engine carries (version-compatible engines embed TensorRT's "
                        "lean runtime; plugin engines their libraries); refused without it. Only for engines you built "
                        "or trust (docs/guarantees.md)")


def add_report_args(p: argparse.ArgumentParser, junit_help: str) -> None:
    """What a report-writing command (compare, bench) writes: report dir, JUnit file."""
    p.add_argument("--junit", type=Path, default=None, metavar="FILE", help=junit_help)
    add_runtime_args(p)
    add_output(p, required=False, metavar="DIR", help="write report.json, report.md and report.html here")


def add_train_args(p: argparse.ArgumentParser, epochs: int, lr: float) -> None:
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
    add_output(p, force_help="replace an existing output (and an old checkpoint)")


# --- from options to library objects ---------------------------------------------------------

def train_config(o):
    from exporter.training import TrainConfig

    return TrainConfig(epochs=o["epochs"], batch_size=o["batch_size"], lr=o["lr"], weight_decay=o["weight_decay"],
                       warmup_ratio=o["warmup_ratio"], max_grad_norm=o["max_grad_norm"], max_length=o["max_length"],
                       seed=o["seed"], patience=o["patience"] or None, precision=o["precision"],
                       checkpoint_every=o["checkpoint_every"])


def threads(o) -> int:
    """``--threads``, else the usable cores. Raises CliError below 1."""
    from runtimes import usable_cores

    if o["threads"] is not None and o["threads"] < 1:
        raise CliError(f"--threads must be at least 1, got {o['threads']}")
    return o["threads"] or usable_cores()


def load_data(o):
    """The texts of the data options. Raises UsageError for a bad file."""
    from evaluation.data import load_texts

    return load_texts(o["data"], text_column=o["text_column"], pair_column=o["pair_column"],
                      label_column=o["label_column"], limit=o["limit"])


def print_eval(report: dict) -> None:
    from evaluation.metrics import format_report

    if report["metric"] == "accuracy":
        print(format_report(report["per_class"]))
        print(f"accuracy {report['accuracy']:.4f} (95% CI {report['ci_low']:.4f}-{report['ci_high']:.4f}, {report['rows']} rows)")
    else:
        print("token level:\n" + format_report(report["token_level"]))
        print("entity level:\n" + format_report(report["entity_level"]))
