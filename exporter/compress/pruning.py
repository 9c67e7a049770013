"""Structured pruning of BERT-family encoders: attention heads and FFN neurons, ranked by
importance measured on data, removed physically so the exported graph is smaller and faster.

Importance follows Michel et al. (2019): a mask of ones multiplies every head's output (and, with
a forward hook, every FFN neuron's activation); the absolute gradient of the task loss with
respect to each mask entry, summed over batches, scores that head or neuron. Head scores are
normalised per layer (L2) and ranked globally, keeping at least one head per layer.

Pruned models load anywhere with plain transformers: heads through ``config.pruned_heads`` (which
``from_pretrained`` re-applies), FFN neurons by keeping the same width in every layer, so that
``config.intermediate_size`` describes them all.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from exporter.training import Encoded, collate, epoch_order
from runtimes.errors import UsageError

IMPORTANCE = ("gradient", "random")


@dataclass(frozen=True)
class PruneConfig:
    """Remove ``heads`` (fraction of all attention heads) and ``ffn`` (fraction of FFN neurons,
    same width kept in every layer); or give ``flop_target``, the fraction of encoder FLOPs (at
    ``seq``) to remove, and both fractions are set equal to meet it."""

    heads: float | None = None
    ffn: float | None = None
    flop_target: float | None = None
    importance: str = "gradient"
    score_batches: int | None = 32
    batch_size: int = 16
    ffn_multiple: int = 8
    seq: int = 128
    seed: int = 0

    def __post_init__(self):
        for name, option in (("heads", "--prune-heads"), ("ffn", "--prune-ffn"), ("flop_target", "--flop-target")):
            v = getattr(self, name)
            if v is not None and not 0 < v < 1:
                raise UsageError(f"{option} {v}: the pruning fraction {name} must be within (0, 1) (exclusive)")
        if self.flop_target is not None and (self.heads is not None or self.ffn is not None):
            raise UsageError("give either a FLOP target or head/FFN fractions, not both")
        if self.heads is None and self.ffn is None and self.flop_target is None:
            raise UsageError("pruning needs heads, ffn or flop_target")
        if self.importance not in IMPORTANCE:
            raise UsageError(f"importance {self.importance!r}: choose one of {list(IMPORTANCE)}")


def _layers(model, task: str | None = None):
    """The blocks pruning edits, as the task places them (BERT-style heads and FFN inside)."""
    from runtimes.tasks import get_task

    return get_task(task).blocks(model)


def encoder_flops(config, seq: int = 128) -> int:
    """FLOPs (2 per multiply-add) of the encoder layers for one sequence of length ``seq``:
    Q/K/V/output projections, attention scores and context, and the FFN."""
    pruned = {int(k): len(v) for k, v in (config.pruned_heads or {}).items()}
    heads = [config.num_attention_heads - pruned.get(i, 0) for i in range(config.num_hidden_layers)]
    return _flops(config.hidden_size, config.hidden_size // config.num_attention_heads, heads, config.intermediate_size, seq)


def _flops(hidden: int, head_dim: int, heads_per_layer: list[int], intermediate: int, seq: int) -> int:
    total = 0
    for heads in heads_per_layer:
        a = heads * head_dim
        total += 2 * seq * hidden * a * 4 + 2 * seq * seq * a * 2 + 2 * seq * hidden * intermediate * 2
    return total


def heads_to_remove(n_layers: int, n_heads: int, fraction: float) -> int:
    """How many heads a fraction removes, leaving at least one per layer."""
    return min(int(round(fraction * n_layers * n_heads)), n_layers * (n_heads - 1))


def ffn_width_kept(width: int, fraction: float, multiple: int = 8) -> int:
    """FFN neurons kept per layer: rounded to ``multiple`` (for fast kernels) when the layer is wide enough."""
    keep = width * (1 - fraction)
    keep = int(round(keep / multiple) * multiple) if width >= 4 * multiple else int(round(keep))
    return max(1, min(width - 1, keep))


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def measure_importance(model, data: Encoded, cfg: PruneConfig, device: str = "cpu", pad_id: int = 0,
                       progress: bool = True, task: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Head scores ``[layers, heads]`` and FFN neuron scores ``[layers, intermediate]``."""
    import torch

    layers = _layers(model, task)
    n_layers, n_heads = len(layers), model.config.num_attention_heads
    if cfg.importance == "random":
        rng = np.random.default_rng(cfg.seed)
        return rng.random((n_layers, n_heads)), rng.random((n_layers, model.config.intermediate_size))
    head_mask = torch.ones(n_layers, n_heads, device=device, requires_grad=True)
    ffn_mask = torch.ones(n_layers, model.config.intermediate_size, device=device, requires_grad=True)
    hooks = [layer.intermediate.register_forward_hook(lambda mod, inp, out, i=i: out * ffn_mask[i])
             for i, layer in enumerate(layers)]
    model.to(device).eval()  # no dropout: scores must not depend on the RNG
    try:
        with _quiet_sdpa_fallback():
            head_score, ffn_score = mask_gradients(data, cfg, [head_mask, ffn_mask],
                                                   lambda batch: model(**batch, head_mask=head_mask).loss,
                                                   device=device, pad_id=pad_id, progress=progress)
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)
    return head_score.numpy(), ffn_score.numpy()


def mask_gradients(data: Encoded, cfg: PruneConfig, masks: list, loss_of, *, device: str, pad_id: int,
                   progress: bool) -> list:
    """Michel et al.'s importance: ``|d loss / d mask|`` summed over ``cfg.score_batches`` batches of
    ``data`` (``cfg.batch_size`` rows, in the seeded order), one CPU tensor per mask; ``loss_of(batch)``
    runs the model, whose hooks apply ``masks``."""
    import torch

    scores = [torch.zeros(m.shape) for m in masks]
    order = epoch_order(len(data), cfg.seed, 0)
    steps = -(-len(data) // cfg.batch_size)
    if cfg.score_batches:
        steps = min(steps, cfg.score_batches)
    for b in tqdm(range(steps), desc="importance", unit="batch", disable=not progress, leave=False):
        idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        batch = {k: v.to(device) for k, v in collate(data, idx, pad_id).items()}
        loss = loss_of(batch)
        for m in masks:
            m.grad = None
        loss.backward()
        for score, m in zip(scores, masks):
            score += m.grad.detach().abs().cpu()
    return scores


@contextlib.contextmanager
def _quiet_sdpa_fallback():
    """SDPA attention falls back to the eager path when given a head mask and says so; that is intended here."""
    logger = logging.getLogger("transformers.models.bert.modeling_bert")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@dataclass
class PrunePlan:
    heads: dict[int, list[int]]  # layer -> heads to remove
    ffn_keep: dict[int, list[int]]  # layer -> neuron indices to keep (same count in every layer)

    def to_dict(self) -> dict:
        return {"heads_removed": {str(k): v for k, v in self.heads.items()},
                "ffn_width": len(next(iter(self.ffn_keep.values()))) if self.ffn_keep else None}


def plan_pruning(head_score: np.ndarray, ffn_score: np.ndarray, heads: float | None, ffn: float | None,
                 ffn_multiple: int = 8) -> PrunePlan:
    """Choose what to remove: the lowest-scoring heads globally (per-layer L2-normalised scores,
    at least one head left per layer) and, in every layer, the lowest-scoring FFN neurons."""
    n_layers, n_heads = head_score.shape
    plan = PrunePlan({}, {})
    if heads:
        norm = head_score / (np.linalg.norm(head_score, axis=1, keepdims=True) + 1e-12)
        n_remove = heads_to_remove(n_layers, n_heads, heads)
        left = {layer: n_heads for layer in range(n_layers)}
        for flat in np.argsort(norm, axis=None, kind="stable"):
            if n_remove == 0:
                break
            layer, head = divmod(int(flat), n_heads)
            if left[layer] > 1:
                plan.heads.setdefault(layer, []).append(head)
                left[layer] -= 1
                n_remove -= 1
    if ffn:
        keep = ffn_width_kept(ffn_score.shape[1], ffn, ffn_multiple)
        for layer in range(n_layers):
            plan.ffn_keep[layer] = sorted(np.argsort(-ffn_score[layer], kind="stable")[:keep].tolist())
    return plan


def apply_plan(model, plan: PrunePlan, task: str | None = None) -> None:
    """Remove the planned heads and FFN neurons in place; updates ``config.pruned_heads`` and
    ``config.intermediate_size``."""
    import torch

    if plan.heads:
        model.prune_heads({layer: sorted(h) for layer, h in plan.heads.items()})
    if plan.ffn_keep:
        for layer_idx, layer in enumerate(_layers(model, task)):
            keep = torch.tensor(plan.ffn_keep[layer_idx], dtype=torch.long)
            layer.intermediate.dense = _slice_linear(layer.intermediate.dense, keep, dim=0)
            layer.output.dense = _slice_linear(layer.output.dense, keep, dim=1)
        model.config.intermediate_size = len(plan.ffn_keep[0])


def _slice_linear(lin, keep, dim: int):
    import torch

    w = lin.weight.detach().index_select(dim, keep.to(lin.weight.device)).clone()
    out_f, in_f = w.shape
    new = torch.nn.Linear(in_f, out_f, bias=lin.bias is not None).to(w.device, w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if lin.bias is not None:
            new.bias.copy_(lin.bias.detach() if dim == 1 else lin.bias.detach()[keep.to(lin.bias.device)])
    return new


def solve_flop_target(config, target: float, seq: int, ffn_multiple: int = 8) -> float:
    """The smallest equal head and FFN fraction whose pruning (with the same rounding as
    :func:`plan_pruning`) removes at least ``target`` of the encoder FLOPs.

    Raises:
        UsageError: the target cannot be met while keeping a head and a neuron per layer.
    """
    L, H = config.num_hidden_layers, config.num_attention_heads
    d = config.hidden_size // H
    base = encoder_flops(config, seq)

    def removed(f: float) -> float:
        gone = heads_to_remove(L, H, f)
        per_layer = [H - gone // L - (1 if i < gone % L else 0) for i in range(L)]  # FLOPs depend only on the count
        return 1 - _flops(config.hidden_size, d, per_layer, ffn_width_kept(config.intermediate_size, f, ffn_multiple), seq) / base

    grid = [i / 1000 for i in range(1, 1000)]
    for f in grid:
        if removed(f) >= target:
            return f
    raise UsageError(f"a FLOP target of {target:.0%} cannot be met by pruning heads and FFN neurons "
                     f"(at most {removed(grid[-1]):.0%}); lower it or add --student-layers")


def prune_(model, data: Encoded, cfg: PruneConfig, device: str = "cpu", pad_id: int = 0, progress: bool = True,
           task: str | None = None) -> dict:
    """Measure importance on ``data``, then remove heads and FFN neurons from ``model`` in place; ``task``
    says where the blocks are (default: a BERT-style text encoder's).

    Returns what goes into the manifest: the plan, the scores, FLOPs and parameters before and after.
    """
    if model.config.pruned_heads:  # the head mask used for importance needs every head in place
        raise UsageError("this model was pruned already; prune once, from the fine-tuned model")
    flops_before, params_before = encoder_flops(model.config, cfg.seq), param_count(model)
    heads, ffn = cfg.heads, cfg.ffn
    if cfg.flop_target is not None:
        heads = ffn = solve_flop_target(model.config, cfg.flop_target, cfg.seq, cfg.ffn_multiple)
    head_score, ffn_score = measure_importance(model, data, cfg, device, pad_id, progress, task)
    plan = plan_pruning(head_score, ffn_score, heads, ffn, cfg.ffn_multiple)
    apply_plan(model, plan, task)
    flops_after = encoder_flops(model.config, cfg.seq)
    return {
        "technique": "structured_pruning", "importance": cfg.importance, "fractions": {"heads": heads, "ffn": ffn},
        **plan.to_dict(),
        "head_importance": np.round(head_score, 6).tolist(),
        "ffn_importance": np.round(ffn_score, 6).tolist(),
        "encoder_flops": {"seq": cfg.seq, "before": flops_before, "after": flops_after,
                          "removed_fraction": 1 - flops_after / flops_before},
        "params": {"before": params_before, "after": param_count(model)},
    }
