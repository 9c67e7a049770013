"""Tasks: one object per model family and head, asked for what the family needs.

``TASKS`` is a plain tuple, read top to bottom; adding a family is adding a module and a line here.
"""

from __future__ import annotations

from runtimes.errors import UsageError
from runtimes.tasks.base import BATCH_DIM, SEQ_DIM, SEQ_DIM_NAMES, Task, is_seq_dim
from runtimes.tasks.generation import TEXT_GENERATION
from runtimes.tasks.module import MODULE
from runtimes.tasks.text import FEATURE_EXTRACTION, TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION
from runtimes.tasks.vision import IMAGE_CLASSIFICATION

TASKS: tuple[Task, ...] = (FEATURE_EXTRACTION, TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION, IMAGE_CLASSIFICATION,
                           TEXT_GENERATION, MODULE)
DEFAULT = FEATURE_EXTRACTION  # an artifact that names no task (a bare model.onnx) is fed as a text encoder

__all__ = ["BATCH_DIM", "DEFAULT", "SEQ_DIM", "SEQ_DIM_NAMES", "TASKS", "Task", "get_task", "is_seq_dim",
           "processor_files", "task_for_architectures", "task_names"]


def task_names(*, trainable: bool = False) -> tuple[str, ...]:
    """Every task's name, or only those finetune and compress can train."""
    return tuple(t.name for t in TASKS if t.trainable or not trainable)


def get_task(name: "str | Task | None") -> Task:
    """The task called ``name`` (a ``Task`` is returned as it is; None gives ``DEFAULT``).

    Raises:
        UsageError: no task has that name.
    """
    if isinstance(name, Task):
        return name
    if name is None:
        return DEFAULT
    for t in TASKS:
        if t.name == name:
            return t
    raise UsageError(f"unknown task {name!r}; choose one of {', '.join(task_names())}")


def task_for_architectures(architectures) -> str | None:
    """The task a ``config.json`` ``architectures`` entry means (``BertModel`` -> feature-extraction);
    the longest matching suffix wins, so ``ViTForImageClassification`` is not a ``...Model``."""
    suffixes = sorted(((s, t.name) for t in TASKS for s in t.arch_suffixes), key=lambda x: -len(x[0]))
    for arch in architectures or []:
        for suffix, name in suffixes:
            if arch.endswith(suffix):
                return name
    return None


def processor_files() -> tuple[str, ...]:
    """Every file any task's feed builder reads, in task order, each once."""
    return tuple(dict.fromkeys(f for t in TASKS for f in t.processor_files))
