"""``bench``: latency and throughput of several runners on the same real inputs.

Runners are interleaved: each cell (batch x sequence) is timed in rounds, and in every round each
runner takes its turn in a rotated order, so machine drift (thermal, noisy neighbours) hits all
alike. The execution order is recorded in the report.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from evaluation.data import TextDataset, data_for_task
from evaluation.machine import describe_machine, instruction_set, machine_line
from evaluation.report import fmt, md_table, report_header
from evaluation.runset import RunnerPlan, check_sequence_length, plan_runners, processor_source
from runtimes.errors import UsageError
from runtimes.tasks import Task, get_task


@dataclass(frozen=True)
class BenchConfig:
    """``time_budget`` seconds of timed work per runner per cell (at least ``min_iters``
    iterations), or exactly ``iters`` iterations when that is set."""

    batches: tuple[int, ...] = (1, 8)
    seqs: tuple[int, ...] = (128,)
    warmup: int = 3
    iters: int | None = None
    min_iters: int = 10
    time_budget: float = 3.0
    rounds: int = 5
    threads: int | None = None
    natural: bool = False
    provider_options: Mapping[str, Mapping] = field(default_factory=dict)  # onnxruntime device -> options
    trust_engine_code: bool = False  # TensorRT engines that carry host code (runtimes.trt.engine.engine_host_code)

    def __post_init__(self):
        if not self.batches or any(b < 1 for b in self.batches):
            raise UsageError(f"--batch: sizes must be positive integers, got {list(self.batches)}")
        if not self.seqs or any(s < 2 for s in self.seqs):
            raise UsageError(f"--seq: lengths must be integers >= 2, got {list(self.seqs)}")
        if self.iters is not None and self.iters < 1:
            raise UsageError(f"--iters must be at least 1, got {self.iters}")
        if not (math.isfinite(self.time_budget) and self.time_budget > 0):
            raise UsageError(f"--time must be a finite number of seconds > 0, got {self.time_budget}")
        if self.rounds < 1 or self.warmup < 0 or self.min_iters < 1:
            raise UsageError("--rounds must be >= 1 and --warmup >= 0")


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@dataclass
class _Cell:
    batch: int
    seq: int | str
    inputs: list[dict[str, np.ndarray]]  # fixed: one batch; natural: the dataset's batches in order


def _cells(task: Task, processor, data: TextDataset, cfg: BenchConfig) -> list[_Cell]:
    """Fixed-shape cells per batch size and ``--seq`` (one per batch size when the task's shapes do
    not vary with a sequence length, labelled ``fixed``), or the data's own batches with ``natural``."""
    cells = []
    for b in cfg.batches:
        if cfg.natural:
            cells.append(_Cell(b, "natural", task.encode_batches(processor, data, b, max_length=max(cfg.seqs))))
        else:
            for s in cfg.seqs if task.varies_with_seq(processor) else ("fixed",):
                length = s if isinstance(s, int) else max(cfg.seqs)
                cells.append(_Cell(b, s, [task.encode(processor, data.take(b), max_length=length, pad_to_max=True)]))
    return cells


def _time_runner(runner, feeds: list[dict], start: int, n: int, task: Task | None = None) -> tuple[list[float], int, int, int]:
    """Run ``n`` iterations over ``feeds`` (cycling from ``start``).

    Returns per-iteration seconds, samples, tokens computed (padding included) and real tokens.
    """
    times, samples, computed, tokens = [], 0, 0, 0
    for i in range(n):
        f = feeds[(start + i) % len(feeds)]
        t0 = time.perf_counter()
        runner.infer(f)
        times.append(time.perf_counter() - t0)
        samples += next(iter(f.values())).shape[0]
        done, real = get_task(task).token_counts(f)
        computed += done
        tokens += real
    return times, samples, computed, tokens


def run_bench(artifacts: Sequence[str], data: TextDataset, *, runtimes: Sequence[str] | None = None,
              config: BenchConfig = BenchConfig(), command: str | None = None, progress: bool = True) -> dict:
    """Benchmark every runner on every cell; returns the report (``report.json`` content).

    Raises:
        UsageError: bad artifacts, runtimes or settings.
    """
    plans = plan_runners(artifacts, runtimes)
    task = get_task(plans[0].artifact.task)
    data = data_for_task(data, task)
    processor = task.load_processor(processor_source([p.artifact for p in plans], task).path)
    if task.varies_with_seq(processor):
        check_sequence_length([p.artifact for p in plans], task, max(config.seqs), "--seq")
    cells = _cells(task, processor, data, config)

    runners, loaded = [], []
    try:
        for plan in plans:
            before = _rss_mb()
            runner = plan.open(threads=config.threads, provider_options=config.provider_options,
                               trust_engine_code=config.trust_engine_code).activate()
            runners.append(runner)
            loaded.append(_rss_mb() - before)
        results, order_log = [], []
        total = len(cells) * len(runners)
        with tqdm(total=total, desc="bench", unit="run", disable=not progress) as bar:
            for cell in cells:
                cell_results, cell_order = _bench_cell(plans, runners, cell, config, task)
                results += cell_results
                order_log.append({"batch": cell.batch, "seq": cell.seq, "rounds": cell_order})
                bar.update(len(runners))
        settings = [
            {"label": p.label, "artifact": str(p.artifact.path), "runtime": p.runtime, "artifact_bytes": p.artifact.size_bytes(),
             "rss_at_load_mb": round(m, 1), "settings": r.describe()}
            for p, r, m in zip(plans, runners, loaded)
        ]
    finally:
        for r in runners:
            r.deactivate()
    _add_speedups(results, plans[0].label)
    report = report_header("bench", command, describe_machine())
    report.update({
        "data": data.describe(),
        "instruction_set": instruction_set(report["machine"]["cpu_features"]),
        "settings": {
            "mode": "natural lengths (each batch padded to its longest text)" if config.natural else "fixed shape (padded to --seq)",
            "batches": list(config.batches), "seqs": ["natural"] if config.natural else list(config.seqs),
            "warmup": config.warmup, "iters": config.iters, "min_iters": config.min_iters,
            "time_budget_s": None if config.iters else config.time_budget, "rounds": config.rounds, "threads": config.threads,
            "baseline": plans[0].label,
        },
        "runners": settings,
        "results": results,
        "execution_order": order_log,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    })
    return report


def _bench_cell(plans: Sequence[RunnerPlan], runners, cell: _Cell, cfg: BenchConfig, task: Task):
    feeds = [[task.feeds_for(x, r.input_specs(), r.label) for x in cell.inputs] for r in runners]
    per_iter = []
    for r, f in zip(runners, feeds):
        _time_runner(r, f, 0, max(cfg.warmup, 1), task)
        t, *_ = _time_runner(r, f, 0, 1, task)
        per_iter.append(max(t[0], 1e-6))
    if cfg.iters:
        chunks = [math.ceil(cfg.iters / cfg.rounds)] * len(runners)
        targets = [cfg.iters] * len(runners)
    else:
        targets = [max(cfg.min_iters, math.ceil(cfg.time_budget / t)) for t in per_iter]
        chunks = [max(1, math.ceil(n / cfg.rounds)) for n in targets]
    times = [[] for _ in runners]
    samples = [0] * len(runners)
    tokens = [0] * len(runners)
    computed = [0] * len(runners)
    by_round = [[] for _ in runners]  # samples/s of each runner in each round, for paired comparisons
    order = []
    rnd = 0
    while any(len(times[i]) < targets[i] for i in range(len(runners))):
        k = rnd % len(runners)
        turn = list(range(k, len(runners))) + list(range(k))
        order.append([plans[i].label for i in turn if len(times[i]) < targets[i]])
        for i in turn:
            n = min(chunks[i], targets[i] - len(times[i]))
            if n <= 0:
                continue
            t, s, comp, tok = _time_runner(runners[i], feeds[i], len(times[i]), n, task)
            by_round[i].append(s / max(sum(t), 1e-12))
            times[i] += t
            samples[i] += s
            computed[i] += comp
            tokens[i] += tok
        rnd += 1
    out = []
    for i, p in enumerate(plans):
        t = np.asarray(times[i])
        total = float(t.sum())
        out.append({
            "label": p.label, "artifact": str(p.artifact.path), "runtime": p.runtime,
            "batch": cell.batch, "seq": cell.seq, "iters": int(t.size),
            "p50_ms": float(np.percentile(t, 50) * 1e3), "p90_ms": float(np.percentile(t, 90) * 1e3),
            "p99_ms": float(np.percentile(t, 99) * 1e3), "mean_ms": float(t.mean() * 1e3),
            "samples_per_s": samples[i] / total,
            "tokens_per_s": computed[i] / total,  # tokens computed, padding included
            "real_tokens_per_s": tokens[i] / total,  # tokens under the padding mask (samples for tasks without tokens)
            "samples_per_s_by_round": by_round[i],
        })
    return out, order


def _add_speedups(results: list[dict], baseline: str) -> None:
    base = {(r["batch"], r["seq"]): r["samples_per_s"] for r in results if r["label"] == baseline}
    for r in results:
        b = base.get((r["batch"], r["seq"]))
        r["speedup_vs_baseline"] = r["samples_per_s"] / b if b else None


def bench_markdown(report: dict) -> str:
    s = report["settings"]
    budget = f"{s['iters']} iterations" if s["iters"] else f"{s['time_budget_s']} s (min {s['min_iters']} iterations)"
    lines = [
        "# Throughput report",
        "",
        f"- machine: {machine_line(report['machine'])}",
        f"- instruction set: **{instruction_set(report['machine']['cpu_features'])}** "
        f"(CPU flags: {' '.join(report['machine']['cpu_features']) or 'none'})",
        f"- mode: {s['mode']}; data: {report['data']['source']} ({report['data']['rows']} rows)",
        f"- per runner and cell: {s['warmup']} warm-up, then {budget} in {s['rounds']} interleaved rounds",
        f"- threads: {s['threads'] or 'library default'}; baseline for speedup: `{s['baseline']}`",
        f"- peak process RSS: {report['peak_rss_mb']} MiB",
        "",
    ]
    rows = [[r["label"], r["batch"], r["seq"], r["iters"], fmt(r["p50_ms"]), fmt(r["p90_ms"]), fmt(r["p99_ms"]),
             fmt(r["samples_per_s"]), fmt(r["tokens_per_s"]), fmt(r["real_tokens_per_s"]),
             fmt(r["speedup_vs_baseline"], 3) + "x"]
            for r in report["results"]]
    lines.append(md_table(["runner", "batch", "seq", "iters", "p50 ms", "p90 ms", "p99 ms", "samples/s",
                           "tokens/s", "real tokens/s", "speedup"], rows))
    lines += ["", "## Runners", ""]
    lines.append(md_table(
        ["runner", "model MiB", "RSS growth at load MiB", "settings"],
        [[x["label"], fmt(x["artifact_bytes"] / 2**20), x["rss_at_load_mb"],
          ", ".join(f"{k}={v}" for k, v in x["settings"].items() if k not in ("backend", "device"))] for x in report["runners"]],
    ))
    return "\n".join(lines) + "\n"
