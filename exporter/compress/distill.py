"""Knowledge distillation: a student learns from a teacher's logits (and optionally hidden states).

loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)
       + hidden_weight * mean MSE(student hidden state, teacher hidden state) over mapped layers
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from runtimes.errors import UsageError


@dataclass(frozen=True)
class DistillConfig:
    temperature: float = 2.0
    alpha: float = 0.5
    hidden_weight: float = 0.0

    def __post_init__(self):
        if self.temperature <= 0:
            raise UsageError(f"distillation temperature must be > 0, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise UsageError(f"distillation alpha must be within [0, 1], got {self.alpha}")
        if self.hidden_weight < 0:
            raise UsageError(f"hidden-state loss weight must be >= 0, got {self.hidden_weight}")


@dataclass(frozen=True)
class LayerDropConfig:
    """A student with ``layers`` encoder layers, initialised from evenly spaced teacher layers."""

    layers: int

    def __post_init__(self):
        if self.layers < 1:
            raise UsageError(f"student layers must be >= 1, got {self.layers}")


def kept_layers(n_teacher: int, n_student: int) -> list[int]:
    """Evenly spaced teacher layers, always including the last one."""
    if n_student >= n_teacher:
        raise UsageError(f"a student needs fewer layers than the teacher's {n_teacher}, got {n_student}")
    step = n_teacher / n_student
    return [int(round((i + 1) * step)) - 1 for i in range(n_student)]


def drop_layers_(model, cfg: LayerDropConfig, task: str | None = None) -> dict:
    """Keep ``cfg.layers`` evenly spaced blocks of ``model`` in place (where ``task`` places them)."""
    from runtimes.tasks import get_task

    layers = get_task(task).blocks(model)
    keep = kept_layers(len(layers), cfg.layers)
    get_task(task).set_blocks(model, [layers[i] for i in keep])
    # decoder attention indexes its KV cache by layer_idx: renumbered as from_pretrained numbers them
    for j, i in enumerate(keep):
        for module in layers[i].modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = j
    pruned = getattr(model.config, "pruned_heads", None) or {}
    model.config.pruned_heads = {j: pruned[i] for j, i in enumerate(keep) if i in pruned}
    types = getattr(model.config, "layer_types", None)
    if isinstance(types, list) and len(types) == len(layers):
        model.config.layer_types = [types[i] for i in keep]
    model.config.num_hidden_layers = cfg.layers
    return {"technique": "layer_drop", "teacher_layers_kept": keep, "layers": cfg.layers}


def _freeze(teacher) -> None:
    """The teacher in eval mode, no gradients."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)


def _hidden_mse(s, t, mask, layer_map: list[int] | None):
    """Mean squared error between the student's hidden states and the teacher's it maps to (the
    embeddings to the embeddings, student layer i to teacher layer ``layer_map[i]``), real tokens only."""
    mapping = layer_map or list(range(len(s.hidden_states) - 1))
    mask = mask.unsqueeze(-1).to(s.hidden_states[0].dtype)
    pairs = [(0, 0)] + [(i + 1, j + 1) for i, j in enumerate(mapping)]
    return sum(((s.hidden_states[i] - t.hidden_states[j]) ** 2 * mask).sum() / (mask.sum() * s.hidden_states[i].shape[-1])
               for i, j in pairs) / len(pairs)


def distill_loss(teacher, cfg: DistillConfig, layer_map: list[int] | None = None):
    """A ``loss_fn(student, batch)`` for :func:`exporter.training.train`."""
    import torch
    import torch.nn.functional as F

    _freeze(teacher)
    want_hidden = cfg.hidden_weight > 0

    def loss_fn(student, batch):
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            t = teacher(**inputs, output_hidden_states=want_hidden)
        s = student(**inputs, output_hidden_states=want_hidden)
        T = cfg.temperature
        valid = labels != -100
        s_logits, t_logits = s.logits[valid], t.logits[valid]  # token tasks: real tokens only
        kd = F.kl_div(F.log_softmax(s_logits / T, -1), F.softmax(t_logits / T, -1), reduction="batchmean") * T * T
        ce = F.cross_entropy(s_logits, labels[valid])
        loss = cfg.alpha * kd + (1 - cfg.alpha) * ce
        if want_hidden:
            loss = loss + cfg.hidden_weight * _hidden_mse(s, t, inputs["attention_mask"], layer_map)
        return loss

    return loss_fn


def causal_distill_loss(teacher, cfg: DistillConfig, layer_map: list[int] | None = None):
    """A ``loss_fn(student, batch)`` for a causal LM: the mean over real tokens of
    ``T^2 * KL(teacher's next-token distribution / T || student's / T)``, mixed by ``cfg.alpha`` with
    the LM loss (next-token cross-entropy); padding (``attention_mask`` 0, ``labels`` -100) counts
    nowhere. Batches are right-padded, so no real token attends to a padded one."""
    import torch
    import torch.nn.functional as F

    _freeze(teacher)
    want_hidden = cfg.hidden_weight > 0

    def loss_fn(student, batch):
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        if next(teacher.parameters()).device != labels.device:  # each of several processes has its own device
            teacher.to(labels.device)
        with torch.no_grad():
            t = teacher(**inputs, output_hidden_states=want_hidden, use_cache=False)
        s = student(**inputs, output_hidden_states=want_hidden, use_cache=False)
        T = cfg.temperature
        valid = inputs["attention_mask"].bool()
        s_lp = F.log_softmax(s.logits[valid].float() / T, -1)
        t_lp = F.log_softmax(t.logits[valid].float() / T, -1)
        kd = (t_lp.exp() * (t_lp - s_lp)).sum(-1).mean() * T * T
        loss = cfg.alpha * kd
        if cfg.alpha < 1:
            targets = labels[:, 1:]
            ce = F.cross_entropy(s.logits[:, :-1].reshape(-1, s.logits.shape[-1]).float(), targets.reshape(-1),
                                 ignore_index=-100) if bool((targets != -100).any()) else s.logits.sum() * 0
            loss = loss + (1 - cfg.alpha) * ce
        if want_hidden:
            loss = loss + cfg.hidden_weight * _hidden_mse(s, t, valid, layer_map)
        return loss

    return loss_fn


def same_labels(teacher_config, student_config) -> bool:
    return {int(k): v for k, v in teacher_config.id2label.items()} == {int(k): v for k, v in student_config.id2label.items()}


def clone(model):
    return copy.deepcopy(model)
