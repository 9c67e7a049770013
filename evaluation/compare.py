"""``compare``: the same real inputs through a reference and candidates; parity per output and the
task metric. Run first (each runner over all batches, one model in memory at a time), compare second."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from evaluation.data import TextDataset, data_for_task
from evaluation.machine import describe_machine, machine_line
from evaluation.metrics import label_ids, task_metrics
from evaluation.parity import ParityResult, RowCollector, Tolerance, compare_collected
from evaluation.report import fmt, md_table, report_header
from evaluation.runset import RunnerPlan, check_sequence_length, plan_runners, processor_source
from runtimes import Artifact, load_artifact
from runtimes.errors import UsageError
from runtimes.tasks import Task, get_task


@dataclass(frozen=True)
class CompareConfig:
    batch_size: int = 16
    max_length: int = 128
    threads: int | None = None
    tolerance: Tolerance = Tolerance()
    per_output: Mapping[str, Tolerance] = field(default_factory=dict)
    provider_options: Mapping[str, Mapping] = field(default_factory=dict)  # onnxruntime device -> options
    trust_engine_code: bool = False  # TensorRT engines that carry host code (runtimes.trt.engine.engine_host_code)

    def __post_init__(self):
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.max_length < 2:
            raise UsageError(f"--max-length must be at least 2, got {self.max_length}")


@dataclass
class RunOutputs:
    plan: RunnerPlan
    rows: RowCollector
    settings: dict


@dataclass
class CompareOutcome:
    report: dict
    results: list[ParityResult]

    @property
    def passed(self) -> bool:
        return all(self.results)

    def markdown(self) -> str:
        return compare_markdown(self.report)


def encode_batches(processor, data, cfg: CompareConfig, task: Task | str | None = None) -> list[dict[str, np.ndarray]]:
    """``data`` in batches through the task's feed builder (default: a text encoder's tokenizer)."""
    return get_task(task).encode_batches(processor, data, cfg.batch_size, max_length=cfg.max_length)


def run_plan(plan: RunnerPlan, encoded: Sequence[dict[str, np.ndarray]], cfg: CompareConfig,
             progress: bool = True, torch_options: dict | None = None, task: Task | str | None = None) -> RunOutputs:
    """Run every batch through one runner; keep the valid (unpadded, as the task's mask says) rows of every output."""
    task = get_task(task)
    with plan.open(threads=cfg.threads, provider_options=cfg.provider_options, torch_options=torch_options,
                   trust_engine_code=cfg.trust_engine_code) as runner:
        rows = RowCollector(runner.output_specs())
        for enc in tqdm(encoded, desc=plan.label, unit="batch", disable=not progress, leave=False):
            rows.add(runner.infer(task.feeds_for(enc, runner.input_specs(), runner.label)), task.mask(enc))
        return RunOutputs(plan, rows, runner.describe())


def _label_map(art: Artifact) -> tuple[dict[str, int], int]:
    cfg_path = art.path / "config.json"
    if not cfg_path.is_file():
        return {}, 0
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    id2label = cfg.get("id2label") or {}
    return {str(v): int(k) for k, v in id2label.items()}, len(id2label)


def _task_metric(art: Artifact, rows: RowCollector, data: TextDataset) -> dict | None:
    if data.labels is None or not get_task(art.task).scores_labels or "logits" not in rows.rows:
        return None
    label2id, num_labels = _label_map(art)
    gold = label_ids(data.labels, label2id, num_labels or rows.result()["logits"].shape[1], data.source)
    return task_metrics(rows.result()["logits"], gold)


def _check_tolerance_names(config: CompareConfig, outputs: Sequence[str], label: str,
                           pooled: set[str] | None = None) -> None:
    """A gate that names an output the reference lacks, or a pooled-cosine gate on outputs that have
    no tokens to pool, would be dropped without a word: refuse it instead."""
    if unknown := sorted(set(config.per_output) - set(outputs)):
        raise UsageError(f"a tolerance names output {unknown[0]!r}, which {label} does not produce; its outputs "
                         f"are {sorted(outputs)}")
    if pooled is None:
        return
    default = config.tolerance.min_pooled_cosine
    for name, tol in config.per_output.items():
        if tol.min_pooled_cosine not in (None, default) and name not in pooled:
            raise UsageError(f"--min-pooled-cosine {name}=...: {name} is not a token-level output, so there is nothing "
                             "to pool; gate it with --min-cosine")
    if default is not None and not pooled:
        raise UsageError(f"--min-pooled-cosine applies to token-level outputs and {label} has none (outputs: "
                         f"{', '.join(sorted(outputs))}); gate them with --min-cosine")


def run_compare(reference: str | Artifact, candidates: Sequence[str | Artifact], data: TextDataset, *,
                runtimes: Sequence[str] | None = None, ref_runtime: str | None = None,
                config: CompareConfig = CompareConfig(), command: str | None = None,
                progress: bool = True) -> CompareOutcome:
    """Parity of every candidate runner against the reference runner on ``data``.

    Raises:
        UsageError: bad artifacts, runtimes, data or labels.
    """
    ref_art = reference if isinstance(reference, Artifact) else load_artifact(reference)
    cand_arts = [c if isinstance(c, Artifact) else load_artifact(c, task=ref_art.task) for c in candidates]
    if not cand_arts:
        raise UsageError("compare needs at least one CANDIDATE artifact after the reference")
    ref_plan = plan_runners([ref_art], [ref_runtime] if ref_runtime else None)[0]
    cand_plans = plan_runners(cand_arts, runtimes)
    task = get_task(ref_art.task)
    check_sequence_length([ref_art, *cand_arts], task, config.max_length, "--max-length")
    data = data_for_task(data, task)
    processor = task.load_processor(processor_source([ref_art, *cand_arts], task).path)
    encoded = encode_batches(processor, data, config, task)

    # an embedding export with pooling in its graph is compared with the same pooling in PyTorch
    pooling = next((c.manifest["pooling"] for c in cand_arts if c.manifest.get("pooling")), None)
    torch_options = {"pooling": pooling["mode"], "normalize": pooling["normalize"]} if pooling else None
    declared = [s.name for s in ref_art.outputs] if ref_art.outputs else None
    if declared is not None:  # known before running: say it before minutes of inference
        _check_tolerance_names(config, declared, ref_plan.label)
    ref_out = run_plan(ref_plan, encoded, config, progress, torch_options, task)
    _check_tolerance_names(config, list(ref_out.rows.rows), ref_plan.label, pooled=set(ref_out.rows.pooled))
    ref_metric = _task_metric(ref_art, ref_out.rows, data)
    results, cands = [], []
    for plan in cand_plans:
        out = run_plan(plan, encoded, config, progress, torch_options, task)
        res = compare_collected(ref_plan.label, plan.label, ref_out.rows, out.rows, config.per_output, config.tolerance)
        results.append(res)
        metric = _task_metric(ref_art, out.rows, data) if ref_metric is not None else None
        cands.append({"artifact": str(plan.artifact.path), "runtime": plan.runtime, "label": plan.label,
                      "settings": out.settings, "task_metric": metric, **res.to_dict()})

    report = report_header("compare", command, describe_machine())
    report.update({
        "data": data.describe(),
        "settings": {"batch_size": config.batch_size, "max_length": config.max_length, "threads": config.threads,
                     "padding": task.feeds_note(config.max_length),
                     "tolerance": vars(config.tolerance),
                     "per_output_tolerance": {k: vars(v) for k, v in config.per_output.items()}},
        "reference": {"artifact": str(ref_art.path), "runtime": ref_plan.runtime, "label": ref_plan.label,
                      "settings": ref_out.settings, "task_metric": ref_metric},
        "task_metric_note": None if ref_metric is not None else _no_metric_reason(ref_art, data),
        "candidates": cands,
        "passed": all(results),
    })
    return CompareOutcome(report, results)


def _no_metric_reason(art: Artifact, data: TextDataset) -> str:
    if data.labels is None:
        return "data has no labels"
    return f"task {art.task!r} has no per-sample logits to score labels against"


def _tolerance_text(tol: dict) -> str:
    text = f"atol {tol['atol']:g}, rtol {tol['rtol']:g}, cos {tol['min_cosine']:g}"
    if tol.get("min_pooled_cosine") is not None:
        text += f", pooled cos {tol['min_pooled_cosine']:g}"
    return text


def compare_markdown(report: dict) -> str:
    ref = report["reference"]
    lines = [
        "# Parity report",
        "",
        f"- reference: `{ref['label']}`",
        f"- data: {report['data']['source']} ({report['data']['rows']} rows), batch {report['settings']['batch_size']}, "
        f"{report['settings']['padding']}",
        f"- machine: {machine_line(report['machine'])}",
        f"- result: **{'PASS' if report['passed'] else 'FAIL'}**",
        "",
    ]
    rows = []
    for c in report["candidates"]:
        for o in c["outputs"]:
            tol = o["tolerance"]
            rows.append([
                c["label"], o["name"], o["rows"], fmt(o["max_abs"]), fmt(o["mean_abs"]), fmt(o["max_rel"]),
                f"{o['cos_min']:.6f}", fmt(o.get("pooled_cos_mean"), 6), fmt(o["top1"], 4), _tolerance_text(tol),
                "ok" if o["passed"] else "FAIL: " + "; ".join(o["reasons"]),
            ])
        for m in c["missing_outputs"]:
            rows.append([c["label"], m, "-", "-", "-", "-", "-", "-", "-", "-", "FAIL: missing"])
    lines.append(md_table(["candidate", "output", "rows", "max abs", "mean abs", "max rel", "min cos", "pooled cos", "top-1",
                           "tolerance", "result"], rows))
    metric_rows = []
    if ref.get("task_metric"):
        metric_rows.append([ref["label"], fmt(ref["task_metric"]["accuracy"], 4), fmt(ref["task_metric"]["macro_f1"], 4)])
        for c in report["candidates"]:
            if c.get("task_metric"):
                metric_rows.append([c["label"], fmt(c["task_metric"]["accuracy"], 4), fmt(c["task_metric"]["macro_f1"], 4)])
    lines += ["", "## Task metric", ""]
    lines.append(md_table(["runner", "accuracy", "macro-F1"], metric_rows) if metric_rows else f"none: {report['task_metric_note']}")
    return "\n".join(lines) + "\n"
