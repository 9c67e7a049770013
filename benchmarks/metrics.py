"""Task metrics (accuracy, macro-F1) from logits and labels."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from runtimes.errors import UsageError


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
