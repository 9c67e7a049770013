"""``compare`` for causal LMs: every candidate against the reference (PyTorch FP32) on the same texts.

Teacher-forced on ``data`` (quotations, say): perplexity and its relative change, the mean KL
divergence of the next-token distributions, top-1 agreement. Free-running on ``prompts``: each runner
generates ``max_new_tokens`` greedily through the one generation loop (``runtimes/generation.py``),
and the report gives the mean and minimum length of the prefix each candidate shares with the
reference. Gates: ``max_ppl_increase`` (relative), ``min_top1_agreement``, ``min_greedy_prefix``
(tokens, on the minimum over prompts).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from evaluation.data import BUILTIN, TextDataset, load_texts
from evaluation.llm_metrics import greedy_prefix, reference_pass, score_candidate
from evaluation.machine import describe_machine, machine_line
from evaluation.report import fmt, md_table, report_header
from evaluation.runset import check_sequence_length, plan_runners, processor_source
from runtimes import Artifact, load_artifact
from runtimes.errors import UsageError
from runtimes.generation import GenerationConfig, generate
from runtimes.tasks import get_task

PROMPTS = Path(__file__).resolve().parent / "samples" / "chat_prompts.txt"
TASK = "text-generation"


@dataclass(frozen=True)
class LlmCompareConfig:
    """Settings and gates; a gate left None is reported, not enforced."""

    batch_size: int = 4
    max_length: int = 128
    max_new_tokens: int = 16
    threads: int | None = None
    max_ppl_increase: float | None = None  # relative: 0.02 is 2%
    min_top1_agreement: float | None = None
    min_greedy_prefix: int | None = None

    def __post_init__(self):
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.max_length < 2:
            raise UsageError(f"--max-length must be at least 2, got {self.max_length}")
        GenerationConfig(max_new_tokens=self.max_new_tokens)  # its own one-line check
        if self.max_ppl_increase is not None and not self.max_ppl_increase >= 0:
            raise UsageError(f"--max-ppl-increase {self.max_ppl_increase}: give a relative increase >= 0 (2% or 0.02)")
        if self.min_top1_agreement is not None and not 0 <= self.min_top1_agreement <= 1:
            raise UsageError(f"--min-top1-agreement {self.min_top1_agreement}: give a share within [0, 1]")
        if self.min_greedy_prefix is not None and not 0 <= self.min_greedy_prefix <= self.max_new_tokens:
            raise UsageError(f"--min-greedy-prefix {self.min_greedy_prefix}: give 0 to --max-new-tokens "
                             f"({self.max_new_tokens}) tokens")


def parse_share(text: str) -> float:
    """``2%`` or ``0.02`` -> 0.02 (argparse type of ``--max-ppl-increase``)."""
    s = str(text).strip()
    try:
        return float(s[:-1]) / 100 if s.endswith("%") else float(s)
    except ValueError:
        raise ValueError(f"{text!r} is not a number or a percentage") from None


def load_prompts(path: str | Path | None, limit: int | None = None) -> TextDataset:
    """The prompts (one per line of a ``.txt``, or a ``.jsonl``/``.csv`` text column; None: the
    project's chat prompts), the first ``limit`` of them when given.

    Raises:
        UsageError: the file holds no prompts.
    """
    data = load_texts(PROMPTS if path in (None, BUILTIN) else path)
    texts = tuple(t for t in data.texts if t.strip())[:limit]
    if not texts:
        raise UsageError(f"{path}: no prompts in this file; write one prompt per line")
    return TextDataset(source=data.source, texts=texts)


def _chat(tokenizer, prompts: Sequence[str]) -> list[str]:
    """Prompts in the model's chat template when it has one (an instruct model answers what it is
    asked), else as they are."""
    if not getattr(tokenizer, "chat_template", None):
        return list(prompts)
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts]


def _greedy(plan, encoded, cfg: LlmCompareConfig, gen: GenerationConfig, limit: int | None) -> np.ndarray:
    with plan.open(threads=cfg.threads) as runner:
        rows = [generate(runner, enc, gen, max_positions=limit).tokens for enc in encoded]
    width = gen.max_new_tokens
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1])), constant_values=gen.pad_token_id) for r in rows])


def continuation_agreement(plan, encoded, ref_tokens: np.ndarray, eos: Sequence[int], threads) -> float:
    """Teacher-forced on the reference's greedy continuations: the share of generated positions (up to
    and including a row's first EOS) where the candidate's next-token pick is the reference's token.
    Unlike the greedy prefix, one near-tie does not end the count."""
    from runtimes.generation import Decoder

    hits = total = 0
    row = 0
    with plan.open(threads=threads) as runner:
        decoder = Decoder(runner, io_binding=False)
        for enc in encoded:
            ids, mask = enc["input_ids"], enc["attention_mask"]
            n = ids.shape[0]
            cont = ref_tokens[row:row + n]
            row += n
            valid = np.ones(cont.shape, bool)
            for i in range(n):  # positions after the first EOS are padding
                ends = np.flatnonzero(np.isin(cont[i], eos))
                if ends.size:
                    valid[i, ends[0] + 1:] = False
            full = np.concatenate([ids, cont[:, :-1]], axis=1)
            full_mask = np.concatenate([mask, np.ones((n, cont.shape[1] - 1), mask.dtype)], axis=1)
            logits, _ = decoder.forward(full, full_mask)
            picks = logits[:, ids.shape[1] - 1:].argmax(-1)
            hits += int(((picks == cont) & valid).sum())
            total += int(valid.sum())
    return hits / total if total else float("nan")


def run_llm_compare(reference: str | Artifact, candidates: Sequence[str | Artifact], data: TextDataset | None, *,
                    prompts: TextDataset | None = None, runtimes: Sequence[str] | None = None,
                    ref_runtime: str | None = None, config: LlmCompareConfig = LlmCompareConfig(),
                    command: str | None = None) -> "LlmCompareOutcome":
    """Teacher-forced and greedy comparison of each candidate runner against the reference runner.

    Raises:
        UsageError: bad artifacts, runtimes, data or prompts; a prompt plus new tokens beyond the context.
    """
    ref_art = reference if isinstance(reference, Artifact) else load_artifact(reference)
    cand_arts = [c if isinstance(c, Artifact) else load_artifact(c, task=TASK) for c in candidates]
    if not cand_arts:
        raise UsageError("compare needs at least one CANDIDATE artifact after the reference")
    ref_plan = plan_runners([ref_art], [ref_runtime] if ref_runtime else None)[0]
    cand_plans = plan_runners(cand_arts, runtimes)
    one_at_a_time = [p.label for p in (ref_plan, *cand_plans) if p.runtime.startswith("llama.cpp")]
    if one_at_a_time and config.batch_size > 1:  # said before any model loads, not at its first batch
        raise UsageError(f"--batch-size {config.batch_size}: {one_at_a_time[0]} runs one sequence at a time (llama.cpp "
                         "keeps its KV cache inside); pass --batch-size 1")
    task = get_task(TASK)
    check_sequence_length([ref_art, *cand_arts], task, config.max_length, "--max-length")
    limit = task.max_sequence(ref_art.path)
    length = min(config.max_length, limit - 1) if limit else config.max_length  # the decode step takes one more
    data = data if data is not None else load_texts(None)
    prompts = prompts if prompts is not None else load_prompts(None)
    tokenizer = task.load_processor(processor_source([ref_art, *cand_arts], task).path)
    encoded = task.encode_batches(tokenizer, data, config.batch_size, max_length=length)
    chat = TextDataset(source=prompts.source, texts=tuple(_chat(tokenizer, prompts.texts)))
    prompt_batches = task.encode_batches(tokenizer, chat, config.batch_size, max_length=config.max_length)
    eos = tuple(sorted({t for t in (tokenizer.eos_token_id, _config_eos(ref_art)) if isinstance(t, int)}))
    gen = GenerationConfig(max_new_tokens=config.max_new_tokens, eos_token_ids=eos, pad_token_id=tokenizer.pad_token_id)

    with ref_plan.open(threads=config.threads) as runner:
        ref = reference_pass(runner, encoded)
    ref_tokens = _greedy(ref_plan, prompt_batches, config, gen, limit)
    cands = []
    for plan in cand_plans:
        with plan.open(threads=config.threads) as runner:
            stats = score_candidate(runner, encoded, ref, atol=1e-3)
        prefix = greedy_prefix(ref_tokens, _greedy(plan, prompt_batches, config, gen, limit))
        row = stats.to_dict(ref.vocab)
        row["continuation_top1"] = continuation_agreement(plan, prompt_batches, ref_tokens, eos, config.threads)
        row["ppl_change"] = row["perplexity"] / ref.stats.perplexity - 1
        row.update(greedy_prefix_mean=float(prefix.mean()), greedy_prefix_min=int(prefix.min()),
                   greedy_full_match=float((prefix == config.max_new_tokens).mean()))
        row["reasons"] = _reasons(row, config)
        cands.append({"artifact": str(plan.artifact.path), "runtime": plan.runtime, "label": plan.label,
                      "passed": not row["reasons"], **row})
    report = report_header("compare", command, describe_machine())
    report.update({
        "kind": "llm",
        "data": data.describe(), "prompts": {**prompts.describe(), "chat_template": chat.texts != prompts.texts},
        "settings": {"batch_size": config.batch_size, "max_length": config.max_length,
                     "max_new_tokens": config.max_new_tokens, "threads": config.threads, "eos_token_ids": list(eos),
                     "padding": task.feeds_note(config.max_length),
                     "gates": {"max_ppl_increase": config.max_ppl_increase, "min_top1_agreement": config.min_top1_agreement,
                               "min_greedy_prefix": config.min_greedy_prefix}},
        "reference": {"artifact": str(ref_art.path), "runtime": ref_plan.runtime, "label": ref_plan.label,
                      "perplexity": ref.stats.perplexity, "tokens_scored": ref.stats.nll_count},
        "candidates": cands,
        "passed": all(c["passed"] for c in cands),
    })
    return LlmCompareOutcome(report)


def _config_eos(art: Artifact):
    import json

    try:
        value = json.loads((art.path / "config.json").read_text(encoding="utf-8")).get("eos_token_id")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def _reasons(row: dict, cfg: LlmCompareConfig) -> list[str]:
    reasons = []
    if cfg.max_ppl_increase is not None and not row["ppl_change"] <= cfg.max_ppl_increase:
        reasons.append(f"perplexity {row['ppl_change']:+.2%} beyond +{cfg.max_ppl_increase:.2%}")
    if cfg.min_top1_agreement is not None and row["top1_agreement"] < cfg.min_top1_agreement:
        reasons.append(f"top-1 agreement {row['top1_agreement']:.4f} below {cfg.min_top1_agreement:g}")
    if cfg.min_greedy_prefix is not None and row["greedy_prefix_min"] < cfg.min_greedy_prefix:
        reasons.append(f"greedy prefix min {row['greedy_prefix_min']} below {cfg.min_greedy_prefix} tokens")
    return reasons


@dataclass
class LlmCompareOutcome:
    report: dict

    @property
    def passed(self) -> bool:
        return self.report["passed"]

    def markdown(self) -> str:
        r, s = self.report, self.report["settings"]
        ref = r["reference"]
        lines = [
            "# LLM comparison", "",
            f"- reference: `{ref['label']}`, perplexity {ref['perplexity']:.4g} over {ref['tokens_scored']} tokens",
            f"- teacher-forced on {r['data']['source']} ({r['data']['rows']} texts), {s['padding']}",
            f"- greedy on {r['prompts']['source']} ({r['prompts']['rows']} prompts"
            f"{', chat template' if r['prompts']['chat_template'] else ''}), {s['max_new_tokens']} new tokens",
            f"- machine: {machine_line(r['machine'])}",
            f"- result: **{'PASS' if r['passed'] else 'FAIL'}**", "",
        ]
        rows = [[c["label"], fmt(c["perplexity"], 4), f"{c['ppl_change']:+.2%}", fmt(c["kl_mean"], 4),
                 f"{c['top1_agreement']:.4f}", fmt(c["prefill_max_abs"]), f"{c['continuation_top1']:.4f}",
                 f"{c['greedy_prefix_mean']:.1f}",
                 c["greedy_prefix_min"], "ok" if c["passed"] else "FAIL: " + "; ".join(c["reasons"])]
                for c in r["candidates"]]
        lines.append(md_table(["candidate", "perplexity", "change", "KL mean", "top-1", "logits max abs",
                               "top-1 on greedy continuations", "greedy prefix mean", "min", "result"], rows))
        return "\n".join(lines) + "\n"
