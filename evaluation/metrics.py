"""Task metrics from logits and labels: accuracy, F1 reports, entity-level scores, bootstrap intervals;
and the sign test that paired timings are judged by.

Pure numpy and stdlib. Reports are plain dicts (JSON-ready for a manifest) shaped as
``{"classes": {name: {precision, recall, f1, support}}, "micro": {...}, "macro": {...}, ...}``;
class names live under ``"classes"`` so a class called ``micro`` or ``accuracy`` cannot collide
with the averages. Ill-defined ratios are 0.0: precision of a class never predicted, recall of a
class never seen, F1 when both are 0 (as sklearn with ``zero_division=0``).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from runtimes.errors import UsageError

_PREFIXES = ("B", "I", "E", "S")


def label_ids(labels: Sequence, label2id: Mapping[str, int], num_labels: int, source: str) -> np.ndarray:
    """Map data labels (names or integer ids) onto the model's label ids.

    Raises:
        UsageError: a label is neither a known name nor an id within ``num_labels``.
    """
    ids = []
    for i, lab in enumerate(labels):
        if isinstance(lab, str) and lab in label2id:
            ids.append(label2id[lab])
        elif isinstance(lab, int) and 0 <= lab < num_labels:
            ids.append(lab)
        elif isinstance(lab, str) and lab.strip().isdigit() and int(lab) < num_labels:
            ids.append(int(lab))
        else:
            known = ", ".join(sorted(label2id)) if label2id else f"ids 0..{num_labels - 1}"
            raise UsageError(f"{source}: row {i + 1} label {lab!r} is not one of the model's labels ({known})")
    return np.asarray(ids, dtype=np.int64)


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float((pred == gold).mean()) if gold.size else 0.0


def macro_f1(pred: np.ndarray, gold: np.ndarray, num_labels: int) -> float:
    """Unweighted mean of per-class F1 over classes present in gold or predictions."""
    f1s = []
    for c in range(num_labels):
        tp = int(((pred == c) & (gold == c)).sum())
        fp = int(((pred == c) & (gold != c)).sum())
        fn = int(((pred != c) & (gold == c)).sum())
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else 0.0


def task_metrics(logits: np.ndarray, gold: np.ndarray) -> dict:
    pred = logits.argmax(axis=-1)
    return {"accuracy": accuracy(pred, gold), "macro_f1": macro_f1(pred, gold, logits.shape[-1]), "rows": int(gold.size)}


def _scores(tp: int, n_pred: int, n_gold: int) -> dict:
    return {
        "precision": tp / n_pred if n_pred else 0.0,
        "recall": tp / n_gold if n_gold else 0.0,
        "f1": 2 * tp / (n_pred + n_gold) if n_pred + n_gold else 0.0,
        "support": n_gold,
    }


def _averages(counts: dict[str, tuple[int, int, int]]) -> tuple[dict, dict, dict]:
    """Per-class scores, micro average (pooled counts) and macro average (unweighted mean over
    classes that occur in gold or predictions, the same set ``macro_f1`` averages over)."""
    classes = {name: _scores(*c) for name, c in counts.items()}
    tp, n_pred, n_gold = (sum(c[k] for c in counts.values()) for k in range(3))
    micro = _scores(tp, n_pred, n_gold)
    seen = [classes[n] for n, c in counts.items() if c[1] or c[2]]
    macro = {k: float(np.mean([s[k] for s in seen])) if seen else 0.0 for k in ("precision", "recall", "f1")}
    macro["support"] = n_gold
    return classes, micro, macro


def classification_report(pred: np.ndarray, gold: np.ndarray, labels: Sequence[str]) -> dict:
    """Per-class precision, recall, F1 and support for single-label predictions.

    ``pred`` and ``gold`` hold ids that index ``labels``. Every class in ``labels`` appears, with
    zeros if it was neither predicted nor seen; the macro average skips such classes (as
    ``macro_f1`` does). For single-label data micro precision = recall = F1 = accuracy.

    Returns:
        ``{"classes": {name: {...}}, "micro": {...}, "macro": {...}, "accuracy": float, "rows": int}``.

    Raises:
        UsageError: an id is outside ``labels``, or ``labels`` repeats a name.
        ValueError: ``pred`` and ``gold`` differ in shape.
    """
    pred, gold = np.asarray(pred).ravel(), np.asarray(gold).ravel()
    if pred.shape != gold.shape:
        raise ValueError(f"pred has {pred.size} rows but gold has {gold.size}")
    if len(set(labels)) != len(labels):
        raise UsageError(f"label names repeat ({', '.join(map(str, labels))}); give each class id one distinct name")
    for what, ids in (("prediction", pred), ("gold label", gold)):
        bad = np.flatnonzero((ids < 0) | (ids >= len(labels)))
        if bad.size:
            raise UsageError(
                f"row {bad[0] + 1} {what} id {ids[bad[0]]} has no name ({len(labels)} labels given); "
                "pass one name per model label"
            )
    n_pred = np.bincount(pred, minlength=len(labels)) if pred.size else np.zeros(len(labels), np.int64)
    n_gold = np.bincount(gold, minlength=len(labels)) if gold.size else np.zeros(len(labels), np.int64)
    tp = np.bincount(gold[pred == gold], minlength=len(labels)) if gold.size else np.zeros(len(labels), np.int64)
    counts = {str(name): (int(tp[i]), int(n_pred[i]), int(n_gold[i])) for i, name in enumerate(labels)}
    classes, micro, macro = _averages(counts)
    return {"classes": classes, "micro": micro, "macro": macro, "accuracy": accuracy(pred, gold), "rows": int(gold.size)}


def format_report(report: dict, *, digits: int = 3) -> str:
    """A fixed-width text table of a ``classification_report`` or ``entity_report``, for a terminal."""
    rows = [(str(n), s) for n, s in report["classes"].items()] + [("micro avg", report["micro"]), ("macro avg", report["macro"])]
    name_w = max(len(n) for n, _ in rows)
    col_w = max(digits + 2, len("precision"))
    head = " " * name_w + "".join(f"{h:>{col_w + 1}}" for h in ("precision", "recall", "f1-score", "support"))
    lines = [head, ""]

    def line(name: str, s: dict) -> str:
        nums = "".join(f"{s[k]:>{col_w + 1}.{digits}f}" for k in ("precision", "recall", "f1"))
        return f"{name:>{name_w}}{nums}{s['support']:>{col_w + 1}}"

    lines += [line(n, s) for n, s in rows[:-2]] + [""]
    if "accuracy" in report:
        pad = " " * (2 * (col_w + 1))
        lines.append(f"{'accuracy':>{name_w}}{pad}{report['accuracy']:>{col_w + 1}.{digits}f}{report['rows']:>{col_w + 1}}")
    lines += [line(n, s) for n, s in rows[-2:]]
    return "\n".join(lines)


def _split_tag(tag: str, where: str) -> tuple[str, str]:
    if tag == "O":
        return "O", ""
    prefix, sep, kind = tag.partition("-")
    if not sep or prefix not in _PREFIXES or not kind:
        raise UsageError(f"{where}: tag {tag!r} is not BIO/IOBES; use O or B-, I-, E-, S- followed by a type (B-PER)")
    return prefix, kind


def _spans(tags: Sequence[str], where: str) -> set[tuple[str, int, int]]:
    spans: set[tuple[str, int, int]] = set()
    start, prev, prev_kind = None, "O", ""
    for i, tag in enumerate(tags):
        prefix, kind = _split_tag(tag, f"{where}token {i + 1}")
        # conlleval's chunk boundaries: a span ends after E/S, before B/S/O, or at a change of type;
        # one starts at B/S, at a change of type, or at an I/E that follows O, E or S.
        ends = prev in ("E", "S") or (prev in ("B", "I") and prefix in ("B", "S", "O")) or (prev != "O" and kind != prev_kind)
        if start is not None and ends:
            spans.add((prev_kind, start, i))
            start = None
        begins = prefix in ("B", "S") or (prefix in ("I", "E") and prev in ("O", "E", "S")) or (prefix != "O" and kind != prev_kind)
        if begins:
            start = i
        prev, prev_kind = prefix, kind
    if start is not None:
        spans.add((prev_kind, start, len(tags)))
    return spans


def bio_spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """Entity spans ``(type, start, end_exclusive)`` from one sentence's BIO/IOB2 or IOBES tags.

    Chunking follows conlleval (and seqeval's default mode): an ``I-`` that does not continue a span
    of its own type starts a new span, a change of type ends a span, ``E-`` closes a span and ``S-``
    is a one-token span.

    Raises:
        UsageError: a tag is neither ``O`` nor ``B-``/``I-``/``E-``/``S-`` plus a type.
    """
    return _spans(tags, "")


def entity_report(pred_tags: Sequence[Sequence[str]], gold_tags: Sequence[Sequence[str]]) -> dict:
    """Entity-level exact-match precision, recall and F1 per type, like seqeval's default mode.

    A predicted span counts only if its type, start and end all match a gold span in the same
    sentence. Support is the number of gold spans; types found only in predictions appear with
    support 0. The macro average covers every type found in gold or predictions.

    Returns:
        ``{"classes": {type: {...}}, "micro": {...}, "macro": {...}, "sentences": int}``.

    Raises:
        UsageError: sentence counts or lengths differ, or a tag is not BIO/IOBES.
    """
    if len(pred_tags) != len(gold_tags):
        raise UsageError(f"{len(pred_tags)} predicted sentences but {len(gold_tags)} gold; predict one tag sequence per sentence")
    pred_spans, gold_spans = set(), set()
    for s, (p, g) in enumerate(zip(pred_tags, gold_tags)):
        if len(p) != len(g):
            raise UsageError(f"sentence {s + 1}: {len(p)} predicted tags but {len(g)} gold; predict one tag per word")
        pred_spans |= {(s, *span) for span in _spans(p, f"sentence {s + 1} predicted ")}
        gold_spans |= {(s, *span) for span in _spans(g, f"sentence {s + 1} gold ")}
    hits = pred_spans & gold_spans
    kinds = sorted({sp[1] for sp in pred_spans | gold_spans})
    count = lambda spans, k: sum(1 for sp in spans if sp[1] == k)  # noqa: E731
    counts = {k: (count(hits, k), count(pred_spans, k), count(gold_spans, k)) for k in kinds}
    classes, micro, macro = _averages(counts)
    return {"classes": classes, "micro": micro, "macro": macro, "sentences": len(gold_tags)}


def bootstrap_ci(correct: np.ndarray, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap ``1 - alpha`` interval of the mean of a 0/1 array; same seed, same interval.

    A resample's mean of 0/1 values is exactly Binomial(n, mean) / n, so the ``n_boot`` resamples
    are drawn as binomials: the same distribution as resampling rows, in O(n_boot) memory.
    An empty array gives ``(0.0, 1.0)``: no rows, no information.

    Raises:
        ValueError: values other than 0/1, ``n_boot`` < 1, or ``alpha`` outside (0, 1).
    """
    correct = np.asarray(correct).ravel()
    if n_boot < 1 or not 0.0 < alpha < 1.0:
        raise ValueError(f"need n_boot >= 1 and 0 < alpha < 1, got n_boot={n_boot}, alpha={alpha}")
    if not np.isin(correct, (0, 1)).all():
        raise ValueError("bootstrap_ci takes a 0/1 (or bool) array, one value per row")
    if correct.size == 0:
        return 0.0, 1.0
    n = correct.size
    means = np.random.default_rng(seed).binomial(n, float(correct.mean()), size=n_boot) / n
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def accuracy_with_ci(pred: np.ndarray, gold: np.ndarray, *, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Accuracy with its percentile bootstrap interval: ``{accuracy, ci_low, ci_high, rows}``.

    Raises:
        ValueError: ``pred`` and ``gold`` differ in shape, or bad ``n_boot``/``alpha``.
    """
    pred, gold = np.asarray(pred), np.asarray(gold)
    if pred.shape != gold.shape:
        raise ValueError(f"pred has shape {pred.shape} but gold has {gold.shape}")
    low, high = bootstrap_ci(pred == gold, n_boot=n_boot, seed=seed, alpha=alpha)
    return {"accuracy": accuracy(pred, gold), "ci_low": low, "ci_high": high, "rows": int(gold.size)}


def sign_test(ahead: int, rounds: int) -> float:
    """One-sided sign test: the chance of at least ``ahead`` wins in ``rounds`` fair coin tosses."""
    return sum(math.comb(rounds, k) for k in range(ahead, rounds + 1)) / 2 ** rounds
