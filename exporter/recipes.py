"""Recipe selection for ``quantize --select``: build candidate INT8 recipes, score each on the
calibration texts, time the ones within the accuracy budget on this machine in interleaved rounds,
and keep the fastest. Also what every quantizable node became, and why (the manifest's record)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from evaluation.machine import describe_machine, instruction_set
from evaluation.metrics import sign_test
from exporter.quantizer import Quantizer, Scorer, file_artifact
from runtimes import open_runner, usable_cores


@dataclass(frozen=True)
class Candidate:
    """One recipe: which float graph (the input or its ``optimize --target cpu`` fusion) and the
    quantizer settings that differ between candidates."""

    graph: str  # "input" or "fused"
    mode: str
    per_channel: bool
    reduce_range: bool
    attention: bool = True  # dynamic on a fused graph: the Attention nodes as QAttention
    activation: str = "u8"
    smooth: bool = False  # the normalized activations smoothed first (exporter.smoothing)

    @property
    def name(self) -> str:
        parts = [self.graph if self.graph == "input" else ("fused+QAttention" if self.attention else "fused, Attention float"),
                 self.mode if self.mode == "dynamic" else f"static QDQ {self.activation.upper()}S8",
                 "per-channel" if self.per_channel else "per-tensor", "reduce_range" if self.reduce_range else "8-bit"]
        return ", ".join(parts + ["smoothed"] * self.smooth)

    def config(self, base):
        return replace(base, mode=self.mode, per_channel=self.per_channel, reduce_range=self.reduce_range,
                       attention=self.attention, activation=self.activation, smooth=self.smooth)


DEFAULT = Candidate("input", "dynamic", True, False, smooth=True)  # the tool's own recipe, kept unless clearly beaten


def candidates(cfg, graphs: Sequence[str], has_attention: dict[str, bool], static: bool) -> list[Candidate]:
    """Every combination of the axes the user left open: graph, smoothed or not, per-channel,
    reduce_range, and for a fused graph QAttention or not; static QDQ (U8 and S8 activations) on
    the input graph when there is calibration data and no ``--mode`` was given. A value the user
    gave fixes its axis."""
    pcs = (True, False) if cfg.per_channel is None else (cfg.per_channel,)
    rrs = (False, True) if cfg.reduce_range is None else (cfg.reduce_range,)
    sms = (True, False) if cfg.smooth is None else (cfg.smooth,)
    out = []
    if cfg.mode in (None, "dynamic"):
        for g in graphs:
            for att in ((True, False) if has_attention.get(g) else (True,)):
                out += [Candidate(g, "dynamic", pc, rr, att, smooth=sm) for sm in sms for pc in pcs for rr in rrs]
    if cfg.mode == "static" or (cfg.mode is None and static):
        acts = ("u8", "s8") if cfg.mode is None or cfg.activation is None else (cfg.activation,)
        out += [Candidate(graphs[0], "static", pc, False, True, a, smooth=sm) for sm in sms for pc in pcs for a in acts]
    return out


def time_interleaved(paths: Sequence[Path], feed: dict, *, rounds: int, seconds: float, threads: int | None = None,
                     warmup_calls: int = 2) -> list[list[float]]:
    """Samples/s of each model on one fixed batch, per round: every round each model runs for
    ``seconds`` (at least 2 calls, after ``warmup_calls`` untimed ones) in a rotated order, so drift
    of a shared machine hits all alike.
    ``threads`` defaults to the usable cores, as ``bench`` times (ONNX Runtime's own default is the
    physical cores, which on a 2-vCPU machine can be one, and ranks recipes differently)."""
    batch = next(iter(feed.values())).shape[0]
    threads = threads or usable_cores()
    runners = [open_runner(file_artifact(p), "onnxruntime:cpu", threads=threads).activate() for p in paths]
    try:
        by_round = [[] for _ in runners]
        for k in range(rounds):
            for i in list(range(k % len(runners), len(runners))) + list(range(k % len(runners))):
                # untimed calls first: a session just switched to ran up to a sixth slower for a
                # while, which put whichever ran second in a round behind (2026-11-30)
                for _ in range(warmup_calls):
                    runners[i].infer(feed)
                n, t0 = 0, time.perf_counter()
                while n < 2 or time.perf_counter() - t0 < seconds:
                    runners[i].infer(feed)
                    n += 1
                by_round[i].append(n * batch / (time.perf_counter() - t0))
        return by_round
    finally:
        for r in runners:
            r.deactivate()


def select(quantizers: dict[tuple[str, bool], Quantizer], cands: list[Candidate], base_cfg, scorer: Scorer, feed: dict, *,
           budget: float, min_agreement: float, float_path: Path, progress: bool) -> tuple[Candidate | None, dict]:
    """Build, score and time ``cands``; returns the chosen one (None if none is within the budget)
    and the table (the manifest's ``quantization.selection``).

    The tool's default recipe (the input graph, dynamic, per-channel, 8-bit, smoothed) is kept
    unless the fastest other candidate within the budget (by its median ratio to the default over
    the interleaved rounds of all of them) then beats it in a duel of the two alone, ``4 *
    select_rounds`` rounds of half a window, by a sign test at p < ``MAX_P`` (so at least 2 select
    rounds are needed to replace it): a shared machine's speed jumps for seconds at a time, recipes
    a few percent apart swap places from run to run, and a choice should not be a coin toss."""
    rows, paths = [], {}
    for c in tqdm(cands, desc="select: build and score", unit="recipe", disable=not progress):
        q = quantizers[c.graph, c.smooth].with_config(c.config(base_cfg))
        path = q.run(q.nodes())
        s = scorer.score(path)
        ok = 1.0 - s["cosine"] <= budget and (s["agreement"] is None or s["agreement"] >= min_agreement)
        rows.append({"name": c.name, "recipe": vars(c), "cosine": s["cosine"], "agreement": s["agreement"],
                     "meets_budget": ok, "quantized_nodes": len(q.nodes())})
        paths[c.name] = path
    timed = [r for r in rows if r["meets_budget"]]
    rounds, seconds = base_cfg.select_rounds, base_cfg.select_seconds
    if timed:
        by_round = time_interleaved([float_path] + [paths[r["name"]] for r in timed], feed, rounds=rounds, seconds=seconds)
        ref = float(np.median(by_round[0]))
        for r, sps in zip(timed, by_round[1:]):
            r.update(samples_per_s_by_round=sps, samples_per_s=float(np.median(sps)), speedup_vs_float=float(np.median(sps)) / ref)

    def duel(a: dict, b: dict) -> tuple[list[float], list[float]]:
        # short windows: this machine jumps between speeds for seconds at a time, and the two
        # should see the same state in a round
        return tuple(time_interleaved([paths[a["name"]], paths[b["name"]]], feed, rounds=4 * rounds, seconds=seconds / 2))

    best, decision, duel_record = _choose(timed, replace(DEFAULT, smooth=bool(base_cfg.smooth)).name, duel)
    for r in rows:
        r["chosen"] = r is best
    features = describe_machine()["cpu_features"]
    shape = {k: int(v) for k, v in zip(("batch", "seq"), next(iter(feed.values())).shape)}
    table = {"budget": {"max_cosine_loss": budget, "min_agreement": min_agreement if scorer.task.scores_labels else None},
             "scored_on_rows": scorer.rows, "timing": {**shape, "rounds": rounds, "seconds_per_round": seconds},
             "float_samples_per_s_by_round": by_round[0] if timed else None,
             "cpu_features": features, "instruction_set": instruction_set(features), "candidates": rows, "chosen": best["name"] if best else None,
             "decision": decision, "duel": duel_record}
    chosen = next((c for c in cands if c.name == best["name"]), None) if best else None
    return chosen, table


MAX_P = 0.01  # the duel's sign test: a challenger must win at least 16 of 20 rounds (p = 0.006)
TIE = 0.03  # stage one cannot order recipes closer than this (smoothed or not, reduce_range or not)


def _choose(timed: list[dict], default: str, duel) -> tuple[dict | None, str, dict | None]:
    """The candidate to keep, why (in words), and the duel's record.

    The challenger is the other candidate with the highest median per-round ratio to the default
    (of those within ``TIE`` of it, the most accurate); it is kept if ``duel(default_row,
    challenger_row)`` (samples/s per round of each, the two timed alone) has it ahead in so many
    rounds that a sign test gives p < ``MAX_P``, else the default is. Without the default among
    ``timed``, the fastest by median."""
    if not timed:
        return None, "no candidate meets the accuracy budget", None
    base = next((r for r in timed if r["name"] == default), None)
    if base is None:
        return (max(timed, key=lambda r: r["samples_per_s"]),
                "the fastest candidate within the budget (the default recipe is not among them)", None)
    # against the default round by round: a jump of the machine's speed during one candidate's
    # window moves its median over all rounds, much less its ratio to the default in each round
    others = [r for r in timed if r is not base]
    vs_default = {r["name"]: float(np.median([a / b for a, b in zip(r["samples_per_s_by_round"], base["samples_per_s_by_round"])]))
                  for r in others}
    top = max(vs_default.values(), default=0.0)
    if top <= 1:
        return base, "the default recipe is the fastest", None
    # recipes within TIE of the fastest are as fast as this timing can tell: the most accurate of them
    challenger = max((r for r in others if vs_default[r["name"]] >= top * (1 - TIE)),
                     key=lambda r: (r["cosine"], vs_default[r["name"]]))
    ours, theirs = duel(base, challenger)
    ahead, n = sum(b > a for a, b in zip(ours, theirs)), len(ours)
    p = sign_test(ahead, n)
    record = {"challenger": challenger["name"], "default_samples_per_s_by_round": list(ours),
              "challenger_samples_per_s_by_round": list(theirs), "challenger_ahead_in": ahead, "rounds": n,
              "sign_test_p": p}
    if p < MAX_P:
        return challenger, f"faster than the default recipe in {ahead} of {n} rounds of a duel of the two (sign test p = {p:.3f})", record
    return base, (f"the default recipe: the fastest against it ({challenger['name']}) was ahead of it in only "
                  f"{ahead} of {n} rounds of a duel of the two (sign test p = {p:.3f}, needs < {MAX_P})"), record


def node_choices(q: Quantizer, quantized: Sequence[str], excluded: Sequence[str], searched_float: Sequence[str]) -> dict:
    """Every quantizable node of the float graph (MatMul, Gemm, fused Attention) and what it became:
    ``{"op", "choice": "int8" | "float", "why"}``."""
    g, quantized, recipe = q.graph, set(quantized), set(q.nodes())
    out = {}
    for n in g.candidates:
        op = g.op_of[n]
        if n in quantized:
            why = "quantized"
        elif n in excluded:
            why = "excluded (--exclude)"
        elif n in searched_float:
            why = "kept float by the search (--max-cosine-loss)"
        elif op not in q.op_types:
            why = "Attention kept float by the recipe" if op == "Attention" else f"{op} not quantized by the recipe"
        elif n not in recipe:
            why = "weight not constant (activation x activation product; --all-matmuls quantizes it)"
        else:
            why = "not quantized"
        out[n] = {"op": op, "choice": "int8" if n in quantized else "float", "why": why}
    return out
