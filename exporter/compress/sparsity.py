"""N:M semi-structured sparsity (2:4 by default) for ``nn.Linear`` weights, and checks in PyTorch and ONNX.

In every group of ``m`` consecutive weights along a Linear layer's input dimension at most ``n`` are
non-zero; 2:4 is the pattern sparse tensor cores run at up to twice the dense rate. Magnitude pruning
here is one-shot: recover accuracy by fine-tuning and calling ``Sparse24Masks.apply`` after each
optimizer step. torch and onnx are imported inside the functions that use them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from exporter.passes import GraphIndex, attr
from runtimes.errors import UsageError

FilterFn = Callable[[object, str], bool]


@dataclass(frozen=True)
class Sparse24Config:
    """Keep the ``n`` largest-magnitude weights of every ``m`` consecutive inputs; 2:4 by default.

    Raises:
        UsageError: unless ``0 < n < m``.
    """

    n: int = 2
    m: int = 4

    def __post_init__(self) -> None:
        if not (isinstance(self.n, int) and isinstance(self.m, int) and 0 < self.n < self.m):
            raise UsageError(f"sparsity n:m = {self.n}:{self.m}: n and m must be integers with 0 < n < m (e.g. 2:4)")


def linear_filter(task: str | None = None, multiple_of: int = 4) -> FilterFn:
    """Selects ``nn.Linear`` layers inside the blocks ``task`` lets compression touch whose
    ``in_features`` divides by ``multiple_of``; embeddings, pooler and classifier heads stay dense."""
    from runtimes.tasks import get_task

    scope = get_task(task)

    def select(module, fqn: str) -> bool:
        import torch

        return isinstance(module, torch.nn.Linear) and scope.in_compress_scope(fqn) and module.in_features % multiple_of == 0
    return select


def default_filter(module, fqn: str) -> bool:
    """``linear_filter()`` for a text encoder and 2:4 (for another ``m`` pass ``linear_filter(task, m)``)."""
    return linear_filter()(module, fqn)


def nm_mask(weight, n: int, m: int):
    """Boolean keep-mask (True = keep) of ``weight``'s shape [out, in]: in each group of ``m`` consecutive
    weights along the last axis the ``n`` largest ``|w|`` are kept; among equal magnitudes the lower index wins.

    Raises:
        UsageError: ``weight`` is not 2-D, its last dimension is not divisible by ``m``, or not ``0 < n < m``.
    """
    import torch

    Sparse24Config(n, m)
    if weight.dim() != 2 or weight.shape[-1] % m:
        raise UsageError(f"weight of shape {tuple(weight.shape)}: n:m sparsity needs a 2-D weight whose input dimension divides by {m}")
    out, inp = weight.shape
    groups = weight.detach().abs().float().reshape(out, inp // m, m)
    # A stable sort, unlike topk, fixes which of several equal weights survives.
    keep = torch.argsort(groups, dim=-1, descending=True, stable=True)[..., :n]
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(out, inp)


@dataclass(frozen=True, eq=False)  # tensors have no single truth value, so no field-wise ==
class Sparse24Masks:
    """Keep-masks (True = keep) of the pruned layers, by fully qualified module name."""

    config: Sparse24Config
    masks: dict = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        return list(self.masks)

    def apply(self, model) -> None:
        """Zero the pruned weights of ``model`` in place; call after each optimizer step while fine-tuning.

        Raises:
            UsageError: ``model`` lacks a masked layer or its weight changed shape.
        """
        import torch

        with torch.no_grad():
            for fqn, mask in self.masks.items():
                try:
                    weight = model.get_submodule(fqn).weight
                except AttributeError:
                    raise UsageError(f"layer {fqn!r} of the sparsity masks is not in this model; apply masks to the model they came from") from None
                if weight.shape != mask.shape:
                    raise UsageError(f"layer {fqn!r}: weight {tuple(weight.shape)} does not match its mask {tuple(mask.shape)}")
                weight.masked_fill_(~mask.to(weight.device), 0)

    def to_manifest(self) -> dict:
        """JSON-ready summary: technique, n, m, layers, zeroed and total weights, sparsity of the pruned layers."""
        total = sum(mask.numel() for mask in self.masks.values())
        zeroed = sum(int((~mask).sum()) for mask in self.masks.values())
        return {"technique": "semi-structured sparsity", "n": self.config.n, "m": self.config.m,
                "layers": self.layers, "zeroed_weights": zeroed, "total_weights": total,
                "sparsity": zeroed / total if total else 0.0}


def sparsify_(model, config: Sparse24Config = Sparse24Config(), filter_fn: FilterFn = default_filter) -> Sparse24Masks:
    """Prune the ``nn.Linear`` layers ``filter_fn`` selects to ``config.n:config.m`` by magnitude, in place.

    Raises:
        UsageError: no layer matched ``filter_fn``, or a selected layer is not a Linear whose
            ``in_features`` divides by ``config.m``.
    """
    import torch

    masks = {}
    for fqn, module in model.named_modules():
        if not filter_fn(module, fqn):
            continue
        if not isinstance(module, torch.nn.Linear) or module.in_features % config.m:
            raise UsageError(f"layer {fqn!r} ({type(module).__name__}) cannot be {config.n}:{config.m} sparse; "
                             f"pass a filter_fn that selects only nn.Linear layers with in_features divisible by {config.m}")
        masks[fqn] = nm_mask(module.weight, config.n, config.m).to(module.weight.device)
    if not masks:
        raise UsageError(f"no layer of {type(model).__name__} matched the sparsity filter_fn; pass one that selects its nn.Linear layers")
    result = Sparse24Masks(config, masks)
    result.apply(model)
    return result


def _violates(groups, n: int) -> bool:
    """``groups`` is [..., m] (torch or numpy) with m along the input dimension."""
    return bool(((groups != 0).sum(-1) > n).any())


def check_nm_torch(model, n: int = 2, m: int = 4, filter_fn: FilterFn = default_filter) -> list[str]:
    """Names of the layers ``filter_fn`` selects that are not ``n:m`` sparse along the input dimension
    (a selected layer whose input dimension does not divide by ``m`` counts as violating); [] means all pass.

    Raises:
        UsageError: unless ``0 < n < m``.
    """
    Sparse24Config(n, m)
    bad = []
    for fqn, module in model.named_modules():
        if filter_fn(module, fqn):
            w = module.weight.detach()
            if w.dim() != 2 or w.shape[1] % m or _violates(w.reshape(w.shape[0], -1, m), n):
                bad.append(fqn)
    return bad


def _layer_name(node, weight: str) -> str:
    """torch.onnx names nodes by module scope ('/bert/encoder/layer.0/attention/self/query/MatMul'),
    which gives back the torch layer even when the transposed initializer is anonymous ('onnx::MatMul_302')."""
    parts = node.name.strip("/").split("/")
    return ".".join(parts[:-1]) if node.name.startswith("/") and len(parts) > 1 else weight


def check_nm_onnx(path: str | os.PathLike, n: int = 2, m: int = 4, *, min_size: int = 0) -> dict:
    """Find the n:m-sparse Linear weights of an ONNX model (external data is loaded from beside it).

    A weight is the second input of a ``MatMul`` or ``Gemm`` that is a 2-D initializer, directly or
    through a ``Transpose``. A Linear exported as MatMul stores [in, out], so groups of ``m`` run along
    axis 0; a ``Gemm`` with ``transB=1`` stores [out, in] (groups along axis 1). Each weight is named
    by its node's scope, which for torch.onnx / optimum exports is the torch module path (e.g.
    ``bert.encoder.layer.0.attention.self.query``), else by its initializer name; a weight shared by
    several nodes is reported once. Returns ``{"checked", "sparse", "violations", "skipped"}``, lists
    of names: ``sparse`` satisfy n:m, ``violations`` do not (dense layers land here), ``skipped`` have
    fewer than ``min_size`` elements or a grouped dimension that does not divide by ``m``. To verify
    an export: ``set(masks.layers) <= set(result["sparse"])``.

    Raises:
        UsageError: ``path`` is not a readable ONNX file, or not ``0 < n < m``.
    """
    import onnx
    from onnx import numpy_helper

    from google.protobuf.message import DecodeError

    Sparse24Config(n, m)
    try:
        model = onnx.load(str(path), load_external_data=True)
    except (OSError, ValueError, DecodeError) as e:
        raise UsageError(f"{path}: cannot read this ONNX model ({type(e).__name__}); pass an exported model.onnx") from None
    index = GraphIndex(model.graph)
    inits = index.initializers
    result = {"checked": [], "sparse": [], "violations": [], "skipped": []}
    seen = set()
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        name, axis = node.input[1], 0
        if node.op_type == "Gemm":
            axis = attr(node, "transB", 0)
        src = index.made_by(name, "Transpose")
        if name not in inits and src is not None and src.input[0] in inits:
            perm = list(attr(src, "perm", [1, 0]))
            name, axis = src.input[0], (1 - axis if perm == [1, 0] else axis)
        if name not in inits or name in seen or len(inits[name].dims) != 2:
            continue
        seen.add(name)
        layer, w = _layer_name(node, name), numpy_helper.to_array(inits[name])
        if w.size < min_size or w.shape[axis] % m:
            result["skipped"].append(layer)
            continue
        w = w if axis == 1 else w.T  # groups along the last axis: [out, in]
        result["checked"].append(layer)
        result["violations" if _violates(w.reshape(w.shape[0], -1, m), n) else "sparse"].append(layer)
    return result
