"""``bench`` for causal LMs: time to first token, inter-token latency, decode and prefill tokens/s.

Every runner generates greedily through the one generation loop (``runtimes/generation.py``) for
every batch of prompts, at every ``--batch`` size, in interleaved rounds: each round every runner
takes its turn in a rotated order, so machine drift hits all alike; the order is recorded. EOS is
ignored, so every row generates exactly ``max_new_tokens`` tokens and runners do the same work
whatever their numbers. The reference (the first artifact, PyTorch eager FP32 when it is a Hugging
Face model) runs the same loop with its KV cache; with ``hf_generate`` transformers' own
``model.generate()`` is timed as one more runner, ``<label> generate()``.

Per runner and batch size: TTFT (prefill and the first pick) p50/p90, inter-token latency (one
decode step of the batch) p50/p90/p99, decode tokens/s (tokens after the first over the decode
time), prefill tokens/s (real prompt tokens over TTFT), the peak process RSS sampled while it ran
and its growth within a turn, and the
speedup of decode tokens/s over the reference at the same batch size.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from evaluation.data import TextDataset
from evaluation.llm_compare import load_prompts
from evaluation.machine import describe_machine, instruction_set, machine_line
from evaluation.report import fmt, md_table, report_header
from evaluation.runset import check_sequence_length, plan_runners, processor_source
from runtimes.errors import UsageError
from runtimes.generation import Generation, GenerationConfig, generate
from runtimes.tasks import get_task

TASK = "text-generation"


@dataclass(frozen=True)
class LlmBenchConfig:
    batches: tuple[int, ...] = (1, 4)
    max_prompt_tokens: int = 128
    max_new_tokens: int = 32
    rounds: int = 3
    warmup: int = 1
    threads: int | None = None
    io_binding: bool | None = None  # None: where the runner prefers it (ONNX Runtime on a GPU)
    hf_generate: bool = False

    def __post_init__(self):
        GenerationConfig(max_new_tokens=self.max_new_tokens)  # its own one-line check
        if not self.batches or any(b < 1 for b in self.batches):
            raise UsageError(f"--batch: sizes must be positive integers, got {list(self.batches)}")
        if self.max_prompt_tokens < 1:
            raise UsageError(f"--seq {self.max_prompt_tokens}: a prompt needs at least 1 token")
        if self.rounds < 1 or self.warmup < 0:
            raise UsageError("--rounds must be >= 1 and --warmup >= 0")


class _RssPeak:
    """The process RSS sampled every few milliseconds on a thread while a runner has its turn
    (``turn(label)``): ``peak[label]`` the highest seen, ``growth[label]`` the most above the RSS at
    the start of a turn (what generating takes beyond the loaded models: cache, activations)."""

    def __init__(self, every_s: float = 0.005):
        import psutil

        self._proc, self._every, self.current, self.peak, self.growth = psutil.Process(), every_s, None, {}, {}
        self._base = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _rss(self) -> float:
        return self._proc.memory_info().rss / 2**20

    def turn(self, label: str | None) -> None:
        self.current, self._base = None, self._rss()
        self.current = label

    def _loop(self):
        while not self._stop.wait(self._every):
            label = self.current
            if label is not None:
                rss = self._rss()
                self.peak[label] = max(self.peak.get(label, 0.0), rss)
                self.growth[label] = max(self.growth.get(label, 0.0), rss - self._base)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def timed_hf_generate(model, encoded, gen: GenerationConfig) -> Generation:
    """Greedy ``model.generate()`` (transformers' loop, any model class that has it: PyTorch, or a
    peer's such as optimum's ``ORTModelForCausalLM``) of exactly ``gen.max_new_tokens`` tokens, timed
    per token by a stopping criterion called after every new token."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    stamps = []

    class _Stamp(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            stamps.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    ids = torch.from_numpy(encoded["input_ids"]).to(model.device)
    mask = torch.from_numpy(encoded["attention_mask"]).to(model.device)
    with torch.inference_mode():
        start = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=gen.max_new_tokens,
                             min_new_tokens=gen.max_new_tokens, pad_token_id=gen.pad_token_id, use_cache=True,
                             stopping_criteria=StoppingCriteriaList([_Stamp()]), num_beams=1)
    tokens = out[:, ids.shape[1]:].cpu().numpy()
    times = [start, *stamps]
    return Generation(tokens, np.full(ids.shape[0], tokens.shape[1], np.int64), times[1] - times[0],
                      [b - a for a, b in zip(times[1:], times[2:])], int(encoded["attention_mask"].sum()))


class _HfGenerate:
    """transformers' ``model.generate()`` of a PyTorch runner's model."""

    def __init__(self, runner):
        self.runner, self.label = runner, f"{runner.label} generate()"

    def __call__(self, encoded, gen: GenerationConfig) -> Generation:
        return timed_hf_generate(self.runner.model, encoded, gen)


@dataclass
class Peer:
    """Another tool's generation loop timed beside ours (``benchmarks/llm_speed.py``): ``generate``
    takes one encoded batch and the settings and returns a ``Generation``."""

    label: str
    runtime: str
    artifact: str
    loop: str
    generate: Callable
    describe: Callable = dict


def _prompts(data: TextDataset | None, prompts: TextDataset | None) -> TextDataset:
    if data is not None:
        texts = tuple(t for t in data.texts if t.strip())
        if not texts:
            raise UsageError(f"{data.source}: no texts to use as prompts")
        return TextDataset(source=data.source, texts=texts)
    return prompts if prompts is not None else load_prompts(None)


def run_llm_bench(artifacts: Sequence, data: TextDataset | None = None, *, prompts: TextDataset | None = None,
                  runtimes: Sequence[str] | None = None, config: LlmBenchConfig = LlmBenchConfig(),
                  command: str | None = None, progress: bool = True, peers: Sequence[Peer] = ()) -> dict:
    """Generate with every runner (and every peer loop) on every batch of prompts in interleaved rounds; returns the
    report (``report.json`` content). Prompts: ``data``'s texts (real texts, truncated to
    ``max_prompt_tokens``) or else ``prompts`` (default: the project's chat prompts).

    Raises:
        UsageError: bad artifacts, runtimes, prompts or settings; a prompt plus new tokens beyond the context.
    """
    plans = plan_runners(artifacts, runtimes)
    task = get_task(TASK)
    arts = [p.artifact for p in plans]
    if any(a.task != TASK for a in arts):
        raise UsageError("bench for LLMs: every artifact must be a text-generation model; got "
                         + ", ".join(f"{a.path} ({a.task})" for a in arts))
    source = _prompts(data, prompts)
    limit = task.max_sequence(arts[0].path)
    check_sequence_length(arts, task, config.max_new_tokens + 1, "--max-new-tokens", reserved=1)
    length = min(config.max_prompt_tokens, limit - config.max_new_tokens) if limit else config.max_prompt_tokens
    tokenizer = task.load_processor(processor_source(arts, task).path)
    cells = {b: task.encode_batches(tokenizer, source, b, max_length=length) for b in config.batches}
    gen = GenerationConfig(max_new_tokens=config.max_new_tokens, pad_token_id=tokenizer.pad_token_id)  # EOS ignored

    runners, entries = [], []  # entries: (label, runtime, artifact, callable(encoded) -> Generation)
    try:
        for plan in plans:
            runner = plan.open(threads=config.threads).activate()
            runners.append(runner)
            entries.append((plan.label, plan.runtime, str(plan.artifact.path), runner,
                            lambda enc, r=runner: generate(r, enc, gen, max_positions=limit, io_binding=config.io_binding)))
            if config.hf_generate and hasattr(runner, "model") and len(entries) == 1:
                hf = _HfGenerate(runner)
                entries.append((hf.label, plan.runtime, str(plan.artifact.path), runner, lambda enc, h=hf: h(enc, gen)))
        for peer in peers:
            entries.append((peer.label, peer.runtime, peer.artifact, peer, lambda enc, p=peer: p.generate(enc, gen)))
        by_round = {(e[0], b): [] for e in entries for b in config.batches}  # each round's generations
        order = []
        with _RssPeak() as rss, tqdm(total=config.rounds * len(entries), desc="bench", unit="run",
                                     disable=not progress) as bar:
            for label, _, _, _, fn in entries:
                rss.turn(label)
                for _ in range(config.warmup):
                    for b in config.batches:
                        fn(cells[b][0])
            for rnd in range(config.rounds):
                k = rnd % len(entries)
                turn = entries[k:] + entries[:k]
                order.append([e[0] for e in turn])
                for label, _, _, _, fn in turn:
                    rss.turn(label)
                    for b in config.batches:
                        by_round[(label, b)].append([fn(enc) for enc in cells[b]])
                    bar.update(1)
            rss.turn(None)
        settings = [{"label": e[0], "runtime": e[1], "artifact": e[2],
                     "loop": e[3].loop if isinstance(e[3], Peer) else "transformers model.generate()"
                     if e[0].endswith("generate()") else
                     "enginewright generate() with KV cache" + (", IO binding" if _binds(e[3], config.io_binding) else ""),
                     "settings": e[3].describe()} for e in entries]
    finally:
        for r in runners:
            r.deactivate()
    results = [_row(label, runtime, b, by_round[(label, b)], rss.peak.get(label), rss.growth.get(label))
               for label, runtime, *_ in entries for b in config.batches]
    _add_speedups(results, entries[0][0])
    report = report_header("bench", command, describe_machine())
    report.update({
        "kind": "llm",
        "prompts": {**source.describe(), "batches_per_size": {str(b): len(cells[b]) for b in config.batches}},
        "instruction_set": instruction_set(report["machine"]["cpu_features"]),
        "settings": {"batches": list(config.batches), "max_prompt_tokens": length,
                     "max_new_tokens": config.max_new_tokens, "rounds": config.rounds, "warmup": config.warmup,
                     "threads": config.threads, "io_binding": {None: "auto", True: "on", False: "off"}[config.io_binding], "decoding": "greedy, EOS ignored",
                     "padding": "left", "baseline": entries[0][0]},
        "runners": settings,
        "results": results,
        "execution_order": order,
    })
    return report


def _binds(runner, io_binding: bool | None) -> bool:
    if not hasattr(runner, "kv_step"):
        return False
    return getattr(runner, "prefers_kv_step", False) if io_binding is None else io_binding


def _pct(values, q) -> float | None:
    return float(np.percentile(values, q) * 1e3) if len(values) else None


def _decode_rate(gens: list[Generation]) -> float | None:
    steps = sum(sum(g.step_s) for g in gens)
    return sum(int(g.lengths.sum()) - len(g.lengths) for g in gens) / steps if steps else None


def _row(label: str, runtime: str, batch: int, rounds: list[list[Generation]], peak_rss: float | None,
         growth: float | None) -> dict:
    gens = [g for r in rounds for g in r]
    ttft = [g.first_token_s for g in gens]
    itl = [s for g in gens for s in g.step_s]
    new = sum(int(g.lengths.sum()) for g in gens)
    decode = sum(int(g.lengths.sum()) - len(g.lengths) for g in gens)  # every token after each row's first
    prompt = sum(g.prompt_tokens for g in gens)
    return {
        "label": label, "runtime": runtime, "batch": batch, "generations": len(gens), "new_tokens": new,
        "decode_tokens": decode, "prompt_tokens": prompt,
        "ttft_p50_ms": _pct(ttft, 50), "ttft_p90_ms": _pct(ttft, 90),
        "itl_p50_ms": _pct(itl, 50), "itl_p90_ms": _pct(itl, 90), "itl_p99_ms": _pct(itl, 99),
        "decode_tokens_per_s": decode / sum(itl) if itl else None,
        "decode_tokens_per_s_by_round": [_decode_rate(r) for r in rounds],
        "prefill_tokens_per_s": prompt / sum(ttft),
        "peak_rss_mb": round(peak_rss, 1) if peak_rss else None,
        "run_rss_growth_mb": round(growth, 1) if growth is not None else None,  # per runner, all batch sizes
    }


def _add_speedups(results: list[dict], baseline: str) -> None:
    base = {r["batch"]: r["decode_tokens_per_s"] for r in results if r["label"] == baseline}
    for r in results:
        b, mine = base.get(r["batch"]), r["decode_tokens_per_s"]
        r["decode_speedup"] = mine / b if b and mine else None


def llm_bench_markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        "# LLM throughput report", "",
        f"- machine: {machine_line(report['machine'])}",
        f"- instruction set: **{report['instruction_set']}**",
        f"- prompts: {report['prompts']['source']} ({report['prompts']['rows']} texts, at most {s['max_prompt_tokens']} "
        f"tokens, left-padded per batch); {s['max_new_tokens']} new tokens per row, {s['decoding']}",
        f"- {s['warmup']} warm-up generation per runner and batch size, then {s['rounds']} interleaved round{'s' * (s['rounds'] != 1)} "
        f"(order in report.json); threads: {s['threads'] or 'library default'}",
        f"- reference for speedup (decode tokens/s at the same batch): `{s['baseline']}`",
        "- ITL: one decode step of the whole batch; peak RSS: the whole process (every runner stays loaded), sampled "
        "while the runner ran; RSS growth: the most above the RSS at the start of its turn", "",
    ]
    rows = [[r["label"], r["batch"], r["generations"], fmt(r["ttft_p50_ms"]), fmt(r["ttft_p90_ms"]), fmt(r["itl_p50_ms"]),
             fmt(r["itl_p90_ms"]), fmt(r["itl_p99_ms"]), fmt(r["decode_tokens_per_s"]), fmt(r["prefill_tokens_per_s"]),
             fmt(r["peak_rss_mb"]), fmt(r["run_rss_growth_mb"]),
             fmt(r["decode_speedup"], 3) + ("x" if r["decode_speedup"] else "")] for r in report["results"]]
    lines.append(md_table(["runner", "batch", "gens", "TTFT p50 ms", "TTFT p90 ms", "ITL p50 ms", "ITL p90 ms",
                           "ITL p99 ms", "decode tok/s", "prefill tok/s", "peak RSS MiB", "RSS growth MiB", "speedup"], rows))
    lines += ["", "## Runners", ""]
    lines.append(md_table(["runner", "loop", "settings"], [
        [x["label"], x["loop"], ", ".join(f"{k}={v}" for k, v in x["settings"].items() if k not in ("backend", "device"))]
        for x in report["runners"]]))
    return "\n".join(lines) + "\n"
