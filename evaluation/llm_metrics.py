"""Teacher-forced LLM metrics, shared by export's parity check and ``compare``.

Run first, compare second: the reference runner's pass keeps its log-probabilities at every real
(unpadded) position and one decode step's logits; a candidate's pass is then scored against them
batch by batch, so one model is in memory at a time and only the reference's numbers are kept.
The decode step feeds every runner the same token (the reference's greedy pick), so it compares
the cache path, not two different continuations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from runtimes.base import Runner
from runtimes.generation import Decoder


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@dataclass
class ForcedBatch:
    """One batch of one runner: per text, the logits at its real positions ``[n, vocab]`` and its
    token ids ``[n]``; the logits of the decode step after the prefill ``[batch, vocab]``."""

    logits: list[np.ndarray]
    ids: list[np.ndarray]
    decode: np.ndarray
    next_tokens: np.ndarray


def forced_pass(runner: Runner, encoded: Sequence[dict], next_tokens: Sequence[np.ndarray] | None = None):
    """Yield a ``ForcedBatch`` per batch of ``encoded``: a prefill with an empty cache, then one
    decode step fed ``next_tokens[k]`` (default: this runner's own greedy pick)."""
    decoder = Decoder(runner)
    for k, enc in enumerate(encoded):
        ids, mask = enc["input_ids"], enc["attention_mask"]
        logits, past = decoder.forward(ids, mask)
        nxt = next_tokens[k] if next_tokens is not None else logits[:, -1].argmax(-1).astype(np.int64)
        step, _ = decoder.forward(nxt[:, None].astype(np.int64), np.concatenate([mask, np.ones_like(mask[:, :1])], 1), past)
        real = mask.astype(bool)
        yield ForcedBatch([logits[i][real[i]] for i in range(len(ids))], [ids[i][real[i]] for i in range(len(ids))],
                          step[:, -1], nxt)


@dataclass
class ForcedStats:
    """Accumulated teacher-forced numbers of a candidate against the reference (or of the reference
    alone, for its perplexity)."""

    positions: int = 0
    agree: int = 0
    kl_sum: float = 0.0
    max_abs: float = 0.0
    sum_abs: float = 0.0
    over_tol: int = 0
    decode_max_abs: float = 0.0
    nll_sum: float = 0.0
    nll_count: int = 0
    per_text_agree: list[float] = field(default_factory=list)

    def add_nll(self, logprobs: np.ndarray, ids: np.ndarray) -> None:
        """Negative log-likelihood of each next token (positions 0..n-2 predict 1..n-1)."""
        if len(ids) > 1:
            self.nll_sum += float(-logprobs[np.arange(len(ids) - 1), ids[1:]].sum())
            self.nll_count += len(ids) - 1

    def add_pair(self, ref_lp: np.ndarray, ref_logits: np.ndarray, cand_logits: np.ndarray, atol: float, rtol: float) -> None:
        diff = np.abs(cand_logits.astype(np.float64) - ref_logits)
        cand_lp = log_softmax(cand_logits)
        agree = ref_lp.argmax(-1) == cand_lp.argmax(-1)
        self.positions += len(agree)
        self.agree += int(agree.sum())
        self.per_text_agree.append(float(agree.mean()) if len(agree) else 1.0)
        self.kl_sum += float((np.exp(ref_lp) * (ref_lp - cand_lp)).sum())
        self.max_abs = max(self.max_abs, float(diff.max(initial=0.0)))
        self.sum_abs += float(diff.sum())
        self.over_tol += int((diff > atol + rtol * np.abs(ref_logits)).sum())

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll_sum / self.nll_count) if self.nll_count else float("nan")

    def to_dict(self, vocab: int) -> dict:
        n = max(self.positions, 1)
        return {"positions": self.positions, "top1_agreement": self.agree / n, "kl_mean": self.kl_sum / n,
                "prefill_max_abs": self.max_abs, "prefill_mean_abs": self.sum_abs / (n * max(vocab, 1)),
                "elements_beyond_tolerance": self.over_tol, "decode_max_abs": self.decode_max_abs,
                "perplexity": self.perplexity, "tokens_scored": self.nll_count}


@dataclass
class Reference:
    """The reference pass kept for scoring: log-probs and logits per text, decode logits and the
    tokens fed at the decode step, per batch."""

    batches: list[ForcedBatch]
    logprobs: list[list[np.ndarray]]
    stats: ForcedStats

    @property
    def next_tokens(self) -> list[np.ndarray]:
        return [b.next_tokens for b in self.batches]

    @property
    def vocab(self) -> int:
        return self.batches[0].decode.shape[-1] if self.batches else 0


def reference_pass(runner: Runner, encoded: Sequence[dict]) -> Reference:
    batches, logprobs, stats = [], [], ForcedStats()
    for b in forced_pass(runner, encoded):
        lps = [log_softmax(x) for x in b.logits]
        for lp, ids in zip(lps, b.ids):
            stats.add_nll(lp, ids)
        batches.append(b)
        logprobs.append(lps)
    return Reference(batches, logprobs, stats)


def score_candidate(runner: Runner, encoded: Sequence[dict], ref: Reference, *, atol: float = 1e-3,
                    rtol: float = 0.0) -> ForcedStats:
    """The candidate's teacher-forced numbers against ``ref`` (same ``encoded`` batches)."""
    stats = ForcedStats()
    for k, b in enumerate(forced_pass(runner, encoded, ref.next_tokens)):
        rb = ref.batches[k]
        for i, (logits, ids) in enumerate(zip(b.logits, b.ids)):
            stats.add_pair(ref.logprobs[k][i], rb.logits[i], logits, atol, rtol)
            stats.add_nll(log_softmax(logits), ids)
        stats.decode_max_abs = max(stats.decode_max_abs, float(np.abs(b.decode.astype(np.float64) - rb.decode).max()))
    return stats


def greedy_prefix(ref_tokens: np.ndarray, cand_tokens: np.ndarray) -> np.ndarray:
    """Per row, how many leading generated tokens the candidate shares with the reference."""
    n = min(ref_tokens.shape[1], cand_tokens.shape[1])
    same = ref_tokens[:, :n] == cand_tokens[:, :n]
    return np.where(same.all(1), n, same.argmin(1))
