"""FFN-neuron pruning of decoder-only causal LMs (Llama family, GPT-2): the same width removed from
every layer's MLP, chosen by importance measured on text, removed physically.

Importance is the encoders' (``exporter.compress.pruning``, after Michel et al. 2019) with the
next-token loss: a mask of ones multiplies the input of each layer's down projection (one entry
per FFN neuron, after the activation and, in a gated MLP, the gate); the absolute gradient of the
LM loss with respect to each entry, summed over batches of the training texts, scores that neuron.
In every layer the lowest-scoring neurons go: rows of ``gate_proj``/``up_proj`` (GPT-2: columns of
``c_fc``), columns of ``down_proj`` (rows of ``c_proj``). The same width in every layer keeps
``config.intermediate_size`` (GPT-2: ``n_inner``) true, so the result loads with plain transformers
and exports like any other model. The MLP is about two thirds of a Llama layer's weights, and a
decode step on the CPU reads every weight once, so the width removed is bytes not read.

Attention heads are not pruned here: with grouped-query attention a head cannot go alone (its key
and value heads serve a group), and the config holds one head count for every layer.
"""

from __future__ import annotations

import numpy as np

from exporter.compress.pruning import PruneConfig, _slice_linear, ffn_width_kept, mask_gradients, param_count
from exporter.training import Encoded
from runtimes.errors import UsageError


def _mlp(block, index: int):
    """``(kind, up-side modules, down module)`` of a decoder block's MLP.

    Raises:
        UsageError: an MLP this module does not know (fused gate/up, mixture of experts...).
    """
    mlp = getattr(block, "mlp", None)
    if mlp is not None and all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
        return "gated", (mlp.gate_proj, mlp.up_proj), mlp.down_proj
    if mlp is not None and hasattr(mlp, "c_fc") and hasattr(mlp, "c_proj"):
        return "gpt2", (mlp.c_fc,), mlp.c_proj
    raise UsageError(f"--prune-ffn: layer {index}'s MLP ({type(mlp).__name__}) is neither Llama-style "
                     "(gate_proj, up_proj, down_proj) nor GPT-2's (c_fc, c_proj); drop layers (--student-layers) instead")


def ffn_width(config) -> int:
    """The MLP width a causal LM's config says (``intermediate_size``; GPT-2's ``n_inner``, default 4 x hidden)."""
    if getattr(config, "model_type", None) == "gpt2":
        return config.n_inner or 4 * config.n_embd
    return config.intermediate_size


def check_causal(cfg: PruneConfig) -> None:
    """Raises UsageError for what causal-LM pruning does not do (heads, a FLOP target)."""
    if cfg.heads is not None or cfg.flop_target is not None:
        raise UsageError("--prune-heads and --flop-target take encoders; a causal LM prunes FFN neurons "
                         "(--prune-ffn F) and drops layers (--student-layers N)")


def ffn_importance(model, blocks, data: Encoded, cfg: PruneConfig, *, device: str = "cpu", pad_id: int = 0,
                   progress: bool = True) -> np.ndarray:
    """FFN neuron scores ``[layers, width]``: summed |d LM loss / d mask| over ``cfg.score_batches``
    batches of ``data`` (``random``: uniform noise, seeded)."""
    import torch

    width = ffn_width(model.config)
    if cfg.importance == "random":
        return np.random.default_rng(cfg.seed).random((len(blocks), width))
    downs = [_mlp(b, i)[2] for i, b in enumerate(blocks)]
    mask = torch.ones(len(blocks), width, device=device, requires_grad=True)
    hooks = [down.register_forward_pre_hook(lambda mod, args, i=i: (args[0] * mask[i], *args[1:]))
             for i, down in enumerate(downs)]
    was_training = model.training
    model.to(device).eval()  # no dropout: scores must not depend on the RNG
    try:
        [score] = mask_gradients(data, cfg, [mask], lambda batch: model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
            use_cache=False).loss, device=device, pad_id=pad_id, progress=progress)
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return score.numpy()


def _slice_conv1d(conv, keep, dim: int):
    """transformers' ``Conv1D`` (weight ``[in, out]``) keeping ``keep`` along ``dim`` (1: outputs, 0: inputs)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    w = conv.weight.detach().index_select(dim, keep.to(conv.weight.device)).clone()
    new = Conv1D(w.shape[1], w.shape[0]).to(w.device, w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        new.bias.copy_(conv.bias.detach()[keep.to(conv.bias.device)] if dim == 1 else conv.bias.detach())
    return new


def remove_ffn_neurons_(model, blocks, keep: list[list[int]]) -> None:
    """Keep only ``keep[layer]`` (the same count in every layer) of each MLP's neurons, in place;
    updates the config's width."""
    import torch

    for i, (block, kept) in enumerate(zip(blocks, keep)):
        kind, _, _ = _mlp(block, i)
        k = torch.tensor(kept, dtype=torch.long)
        mlp = block.mlp
        if kind == "gated":
            mlp.gate_proj, mlp.up_proj = (_slice_linear(lin, k, dim=0) for lin in (mlp.gate_proj, mlp.up_proj))
            mlp.down_proj = _slice_linear(mlp.down_proj, k, dim=1)
        else:
            mlp.c_fc, mlp.c_proj = _slice_conv1d(mlp.c_fc, k, dim=1), _slice_conv1d(mlp.c_proj, k, dim=0)
    width = len(keep[0])
    if getattr(model.config, "model_type", None) == "gpt2":
        model.config.n_inner = width
    else:
        model.config.intermediate_size = width


def prune_causal_ffn_(model, blocks, data: Encoded, cfg: PruneConfig, *, device: str = "cpu", pad_id: int = 0,
                      progress: bool = True) -> dict:
    """Score the FFN neurons of ``model`` on ``data`` and remove ``cfg.ffn`` of them in every layer, in
    place. Returns the manifest's record (widths, parameters, the neurons removed from each layer, the
    share of each layer's score kept)."""
    check_causal(cfg)
    for i, b in enumerate(blocks):
        _mlp(b, i)  # refuse an unknown MLP before scoring
    before_width, before_params = ffn_width(model.config), param_count(model)
    score = ffn_importance(model, blocks, data, cfg, device=device, pad_id=pad_id, progress=progress)
    width = ffn_width_kept(before_width, cfg.ffn, cfg.ffn_multiple)
    keep = [sorted(np.argsort(-s, kind="stable")[:width].tolist()) for s in score]
    remove_ffn_neurons_(model, blocks, keep)
    kept_share = [float(s[k].sum() / s.sum()) if s.sum() > 0 else None for s, k in zip(score, keep)]
    return {"technique": "ffn_pruning", "importance": cfg.importance, "fraction": cfg.ffn,
            "score_batches": cfg.score_batches, "ffn_width": {"before": before_width, "after": width},
            "params": {"before": before_params, "after": param_count(model)},
            "removed": [sorted(set(range(before_width)) - set(k)) for k in keep],
            "importance_kept_per_layer": [None if v is None else round(v, 4) for v in kept_share]}
