"""Padding-aware parity metrics between a reference's and a candidate's outputs.

Positions that the task's padding mask (a text encoder's attention mask) marks as padding are dropped before any metric is computed:
a model may put anything there, and counting them reports false alarms. Outputs are reduced to
rows (one per real token for token-level outputs, one per sample otherwise) of features (the last
axis), gathered over all batches, then compared once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import numpy as np

from runtimes.errors import UsageError
from runtimes.specs import TensorSpec
from runtimes.tasks import SEQ_DIM_NAMES

REL_FLOOR = 1e-3  # relative error is reported only where |reference| >= this


@dataclass(frozen=True)
class Tolerance:
    """Pass when ``|cand - ref| <= atol + rtol * |ref|`` everywhere, the lowest row cosine is at
    least ``min_cosine``, and (when set) top-1 agreement is at least ``min_top1`` and, for
    token-level outputs, the mean cosine of the masked-mean-pooled vectors (one per text, the
    sentence embedding) is at least ``min_pooled_cosine``."""

    atol: float = 1e-4
    rtol: float = 1e-4
    min_cosine: float = 0.999
    min_top1: float | None = None
    min_pooled_cosine: float | None = None

    def __post_init__(self):
        for name in ("atol", "rtol"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise UsageError(f"tolerance {name} must be a finite number >= 0, got {v}")
        if not -1.0 <= self.min_cosine <= 1.0:
            raise UsageError(f"tolerance min_cosine must be within [-1, 1], got {self.min_cosine}")
        if self.min_top1 is not None and not 0.0 <= self.min_top1 <= 1.0:
            raise UsageError(f"tolerance min_top1 must be within [0, 1], got {self.min_top1}")
        if self.min_pooled_cosine is not None and not -1.0 <= self.min_pooled_cosine <= 1.0:
            raise UsageError(f"tolerance min_pooled_cosine must be within [-1, 1], got {self.min_pooled_cosine}")


def is_token_level(spec: TensorSpec | None, array: np.ndarray, mask: np.ndarray | None) -> bool:
    """True when the output has one entry per token (axes 0 and 1 are batch and sequence).

    Decided by the spec's dim name when it has one; a shape match alone is trusted only for
    rank >= 3, since ``[batch, num_labels]`` can equal ``[batch, seq]`` by chance.
    """
    if mask is None or array.ndim < 2 or array.shape[:2] != mask.shape:
        return False
    if spec is not None and len(spec.shape) >= 2 and isinstance(spec.shape[1], str):
        return spec.shape[1] in SEQ_DIM_NAMES
    return array.ndim >= 3


def valid_rows(array: np.ndarray, mask: np.ndarray | None, token_level: bool) -> np.ndarray:
    """``[rows, features]`` float64 view of the positions that count."""
    a = np.asarray(array)
    if token_level:
        a = a[mask.astype(bool)]
    elif a.ndim == 1:
        a = a[:, None]
    return a.reshape(a.shape[0], -1).astype(np.float64)


def masked_mean_pool(out: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """One float64 vector per sample: the mean over real tokens for a token-level output
    (sentence-transformers' mean pooling), the flattened row otherwise."""
    if out.ndim == 3 and mask is not None and out.shape[:2] == mask.shape:
        m = mask[..., None].astype(np.float64)
        return (out * m).sum(1) / np.maximum(m.sum(1), 1)
    return out.reshape(out.shape[0], -1).astype(np.float64)


def mean_row_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine similarity of matching rows."""
    return float(_cosines(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)).mean())


class RowCollector:
    """Gathers valid rows per output over batches (run first, compare second)."""

    def __init__(self, specs: Sequence[TensorSpec]):
        self.specs = {s.name: s for s in specs}
        self.rows: dict[str, list[np.ndarray]] = {}
        self.pooled: dict[str, list[np.ndarray]] = {}  # token-level outputs, masked-mean-pooled per sample
        self.token_level: dict[str, bool] = {}
        self.padded_positions = 0

    def add(self, outputs: Mapping[str, np.ndarray], mask: np.ndarray | None) -> None:
        if mask is not None:
            self.padded_positions += int(mask.size - mask.astype(bool).sum())
        for name, arr in outputs.items():
            tl = is_token_level(self.specs.get(name), arr, mask)
            self.token_level[name] = tl
            self.rows.setdefault(name, []).append(valid_rows(arr, mask, tl))
            if tl:
                self.pooled.setdefault(name, []).append(masked_mean_pool(arr, mask))

    def result(self) -> dict[str, np.ndarray]:
        out = {}
        for k, v in self.rows.items():
            widths = {a.shape[1] for a in v}
            if len(widths) > 1:  # per-token outputs of varying length cannot happen; guard bugs
                raise ValueError(f"output {k!r} changes feature width across batches: {sorted(widths)}")
            out[k] = np.concatenate(v, axis=0)
        return out


@dataclass
class OutputParity:
    name: str
    rows: int
    features: int
    token_level: bool
    max_abs: float
    mean_abs: float
    max_rel: float
    cos_min: float
    cos_mean: float
    top1: float | None
    violations: int
    tolerance: Tolerance
    passed: bool
    reasons: list[str] = field(default_factory=list)
    pooled_cos_mean: float | None = None  # token-level outputs: mean cosine of masked-mean-pooled vectors

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tolerance"] = asdict(self.tolerance)
        return d


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.shape[1] == 1:  # one feature per row: compare the column as one vector
        a, b = a.T, b.T
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    dot = (a * b).sum(axis=1)
    both_zero = (na == 0) & (nb == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dot / (na * nb)
    cos = np.where(both_zero, 1.0, cos)
    return np.nan_to_num(cos, nan=0.0)


def compare_rows(name: str, ref: np.ndarray, cand: np.ndarray, *, tol: Tolerance, token_level: bool,
                 is_logits: bool) -> OutputParity:
    """Metrics for one output from its gathered valid rows."""
    if ref.shape != cand.shape:
        return OutputParity(name, ref.shape[0], ref.shape[1] if ref.ndim > 1 else 1, token_level,
                            math.inf, math.inf, math.inf, -1.0, -1.0, None, -1, tol, False,
                            [f"shape differs: reference {list(ref.shape)} vs candidate {list(cand.shape)}"])
    finite = np.isfinite(cand).all()
    diff = np.abs(cand - ref)
    aref = np.abs(ref)
    rel_mask = aref >= REL_FLOOR
    max_rel = float((diff[rel_mask] / aref[rel_mask]).max()) if rel_mask.any() else 0.0
    violations = int((diff > tol.atol + tol.rtol * aref).sum()) if finite else int(diff.size)
    cos = _cosines(ref, cand)
    top1 = float((ref.argmax(axis=1) == cand.argmax(axis=1)).mean()) if is_logits and ref.shape[1] > 1 else None
    reasons = []
    if not finite:
        reasons.append("candidate has NaN or Inf")
    if violations:
        reasons.append(f"{violations} of {diff.size} values beyond atol {tol.atol:g} + rtol {tol.rtol:g}*|ref|")
    if float(cos.min()) < tol.min_cosine:
        reasons.append(f"min cosine {float(cos.min()):.6f} < {tol.min_cosine}")
    if tol.min_top1 is not None and top1 is not None and top1 < tol.min_top1:
        reasons.append(f"top-1 agreement {top1:.4f} < {tol.min_top1}")
    return OutputParity(
        name=name, rows=int(ref.shape[0]), features=int(ref.shape[1]), token_level=token_level,
        max_abs=float(diff.max()) if diff.size else 0.0, mean_abs=float(diff.mean()) if diff.size else 0.0,
        max_rel=max_rel, cos_min=float(cos.min()), cos_mean=float(cos.mean()), top1=top1,
        violations=violations, tolerance=tol, passed=not reasons, reasons=reasons,
    )


@dataclass
class ParityResult:
    """Parity of one candidate against the reference; truthy when every check passed."""

    reference: str
    candidate: str
    outputs: list[OutputParity]
    missing: list[str] = field(default_factory=list)
    padded_positions_excluded: int = 0

    def __bool__(self) -> bool:
        return not self.missing and all(o.passed for o in self.outputs)

    def __str__(self) -> str:
        head = f"{self.candidate} vs {self.reference}: {'PASS' if self else 'FAIL'}"
        lines = [head]
        for o in self.outputs:
            top1 = f", top-1 {o.top1:.4f}" if o.top1 is not None else ""
            lines.append(
                f"  {o.name}: max abs {o.max_abs:.3g}, mean abs {o.mean_abs:.3g}, max rel {o.max_rel:.3g}, "
                f"min cos {o.cos_min:.6f}{top1} [{'ok' if o.passed else '; '.join(o.reasons)}]"
            )
        for m in self.missing:
            lines.append(f"  {m}: missing from the candidate's outputs")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "passed": bool(self),
            "missing_outputs": self.missing,
            "padded_positions_excluded": self.padded_positions_excluded,
            "outputs": [o.to_dict() for o in self.outputs],
        }


def compare_collected(reference: str, candidate: str, ref: RowCollector, cand: RowCollector,
                      tolerances: Mapping[str, Tolerance] | None = None,
                      default: Tolerance = Tolerance()) -> ParityResult:
    """Compare every reference output the candidate also produced."""
    tolerances = tolerances or {}
    ref_rows, cand_rows = ref.result(), cand.result()
    results, missing = [], []
    for name, r in ref_rows.items():
        if name not in cand_rows:
            missing.append(name)
            continue
        res = compare_rows(name, r, cand_rows[name], tol=tolerances.get(name, default),
                           token_level=ref.token_level[name], is_logits=name.endswith("logits"))
        if name in ref.pooled and name in cand.pooled:
            a, b = np.concatenate(ref.pooled[name]), np.concatenate(cand.pooled[name])
            if a.shape == b.shape:
                res.pooled_cos_mean = mean_row_cosine(a, b)
        floor = res.tolerance.min_pooled_cosine
        if floor is not None and res.pooled_cos_mean is not None and res.pooled_cos_mean < floor:
            res.reasons.append(f"mean pooled cosine {res.pooled_cos_mean:.6f} < {floor}")
            res.passed = False
        results.append(res)
    return ParityResult(reference, candidate, results, missing, ref.padded_positions)
