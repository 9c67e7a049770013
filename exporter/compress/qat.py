"""Quantization-aware training: fake INT8 on the encoder's Linear layers, exported as QDQ.

Weights are fake-quantized per output channel, symmetric (scale = max |w| / 127, recomputed from
the current weights at every step); each Linear's input activation per tensor, symmetric, with a
scale set by calibration (max |x| / 127 over calibration batches) and then held fixed while the
weights adapt to it. Gradients pass the rounding straight through. The placement is the one
``quantize --target tensorrt`` uses for MatMul/Gemm inputs: Q/DQ on the activation and on the
weight of every quantized Linear.

The model's state dict is untouched (the fake quantization is attached by replacing the layers'
``forward``), so the artifact holds ordinary float weights plus ``qat_scales.json``; ``export``
sees the manifest's ``qat`` entry, attaches the same fake quantization and writes Q/DQ pairs with
exactly these scales.
"""

from __future__ import annotations

import functools
import json
import types
from dataclasses import dataclass
from pathlib import Path

from runtimes.errors import UsageError

QMAX = 127
SCALES_FILE = "qat_scales.json"


@dataclass(frozen=True)
class QATConfig:
    """``act_percentile``: activation scales from that percentile of |x| (averaged over the
    calibration batches) instead of the maximum, which clips rare outliers for finer steps.
    ``float_layers``: keep that many of the costliest layers in float, ranked on the first
    ``sensitivity_batches`` calibration batches (see ``layer_sensitivity``).
    ``dropout``: keep dropout on during the QAT fine-tune. Off by default: the model is already
    fine-tuned, and on the quotes-topics classifier dropout's noise made the short fine-tune drift
    away from the float model (agreement 96.2% with it, 98.4% without).
    ``attention``: fake-quantize the attention's activation x activation MatMuls too (Q.K^T and
    P.V, both operands per tensor), as ``quantize --target tensorrt`` does; needs eager attention.
    ``float_attention``: with ``attention``, keep that many of those MatMuls in float, the ones
    whose quantization moves the logits most (see ``attention_sensitivity``)."""

    calib_batches: int = 16
    act_percentile: float | None = None
    float_layers: int = 0
    sensitivity_batches: int = 4
    dropout: bool = False
    attention: bool = False
    float_attention: int = 0

    def __post_init__(self):
        if self.float_layers < 0:
            raise UsageError(f"QAT float layers must be >= 0, got {self.float_layers}")
        if self.float_attention < 0:
            raise UsageError(f"QAT float attention MatMuls must be >= 0, got {self.float_attention}")
        if self.float_attention and not self.attention:
            raise UsageError("QAT float attention MatMuls need the attention MatMuls quantized (attention=True, --qat-attention)")
        if self.sensitivity_batches < 1:
            raise UsageError(f"QAT sensitivity batches must be >= 1, got {self.sensitivity_batches}")
        if self.calib_batches < 1:
            raise UsageError(f"QAT calibration batches must be >= 1, got {self.calib_batches}")
        if self.act_percentile is not None and not 90 <= self.act_percentile < 100:
            raise UsageError(f"QAT activation percentile must be within [90, 100), got {self.act_percentile}")


def qat_filter(module, fqn: str) -> bool:
    """A text encoder's block Linear layers (classifier head, pooler and embeddings stay float); for
    another task pass ``sparsity.linear_filter(task, 1)``."""
    from exporter.compress.sparsity import linear_filter

    return linear_filter(None, 1)(module, fqn)


def weight_scales(weight):
    """Per-output-channel symmetric scales of a Linear weight ``[out, in]``."""
    return (weight.detach().abs().amax(dim=1) / QMAX).clamp(min=1e-8).float()


def onnx_fake_quant(x, scale):
    """Quantize-dequantize exactly as ONNX's QuantizeLinear/DequantizeLinear do (divide by the
    scale, round half to even, saturate to INT8). PyTorch's fake-quantize ops multiply by 1/scale
    instead, which rounds values on a step boundary to the neighbouring step."""
    import torch

    return torch.clamp(torch.round(x / scale), -QMAX - 1, QMAX) * scale


def _fake_quant(x, scale: float, training: bool):
    """Per-tensor symmetric INT8 fake quantization: the fused op (straight-through gradient, and
    Q/DQ in export) in training and export, ONNX's rounding in evaluation."""
    import torch

    if training or torch.onnx.is_in_onnx_export():
        s = torch.tensor(scale, dtype=torch.float32, device=x.device)
        return torch.fake_quantize_per_tensor_affine(x, s, 0, -QMAX - 1, QMAX)
    return onnx_fake_quant(x, scale)


def _qat_forward(self, x):
    import torch
    import torch.nn.functional as F

    xq = _fake_quant(x, self._ew_act_scale, self.training)
    ws = self._ew_w_scale if self._ew_w_scale is not None else weight_scales(self.weight)
    if self.training or torch.onnx.is_in_onnx_export():
        # training: the fused op with its straight-through gradient; export: it becomes Q/DQ
        zp = torch.zeros_like(ws, dtype=torch.int32)
        wq = torch.fake_quantize_per_channel_affine(self.weight, ws, zp, 0, -QMAX - 1, QMAX)
    else:  # evaluation, and the reference the exported graph is checked against
        wq = onnx_fake_quant(self.weight, ws[:, None])
    return F.linear(xq, wq, self.bias)


def attach(model, act_scales: dict[str, float], *, freeze_weights: bool = False) -> list[str]:
    """Fake-quantize the Linear layers named in ``act_scales`` (their forward is replaced).

    ``freeze_weights`` fixes the weight scales at their current values (for export, so that they
    become constants in the graph, as TensorRT requires); in training they follow the weights.
    """
    modules = dict(model.named_modules())
    missing = sorted(set(act_scales) - set(modules))
    if missing:
        raise UsageError(f"QAT scales name layers the model does not have: {missing[:3]}; the artifact is inconsistent")
    for name, scale in act_scales.items():
        m = modules[name]
        m._ew_act_scale = float(scale)
        m._ew_w_scale = weight_scales(m.weight) if freeze_weights else None
        m.forward = types.MethodType(_qat_forward, m)
    return sorted(act_scales)


def attention_modules(model) -> list[str]:
    """The eager self-attention modules (BERT family: ``*SelfAttention`` classes, which compute the
    scores and the context with ``torch.matmul``)."""
    if getattr(model.config, "_attn_implementation", "eager") != "eager":
        raise UsageError("QAT of the attention MatMuls needs the model loaded with attn_implementation='eager'")
    names = [n for n, m in model.named_modules() if type(m).__name__.endswith("SelfAttention")]
    if not names:
        raise UsageError(f"{type(model).__name__}: no BERT-style self-attention module to quantize the attention MatMuls of")
    return names


@functools.cache
def _matmul_mode_class():
    """A TorchFunctionMode that hands the first two ``torch.matmul`` calls of one attention forward
    (scores = Q.K^T, context = P.V) to ``module._ew_attn_quant``; everything else runs as is.
    Built on first use, so that importing this module does not import torch."""
    import torch
    from torch.overrides import TorchFunctionMode

    class MatMulFakeQuant(TorchFunctionMode):
        def __init__(self, module):
            super().__init__()
            self.module, self.calls = module, 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.matmul and self.calls < 2:
                i, self.calls = self.calls, self.calls + 1
                a, b = self.module._ew_attn_quant(i, args[0], args[1])
                return func(a, b, *args[2:], **kwargs)
            return func(*args, **kwargs)

    return MatMulFakeQuant


def _attn_forward(self, *args, **kwargs):
    with _matmul_mode_class()(self):
        return type(self).forward(self, *args, **kwargs)


def _attn_quant(self, i: int, a, b):
    if self._ew_attn_scales is None:  # calibration: record max |x| of both operands
        seen = self._ew_attn_max
        seen[2 * i] = max(seen[2 * i], float(a.detach().abs().max()))
        seen[2 * i + 1] = max(seen[2 * i + 1], float(b.detach().abs().max()))
        return a, b
    sa, sb = self._ew_attn_scales[2 * i], self._ew_attn_scales[2 * i + 1]
    if sa is None:  # this MatMul stays float
        return a, b
    return _fake_quant(a, sa, self.training), _fake_quant(b, sb, self.training)


def attach_attention(model, scales: dict[str, list[float | None]] | None = None) -> list[str]:
    """Fake-quantize both operands of the attention's two activation x activation MatMuls
    (per tensor, symmetric) in every self-attention module, with ``scales[name] = [q, k, probs, v]``
    (``None`` for both operands of a MatMul that stays float); with ``scales=None`` the modules only
    record the operands' maxima (see ``calibrate_attention``)."""
    names = attention_modules(model)
    modules = dict(model.named_modules())
    if scales is not None and sorted(scales) != sorted(names):
        raise UsageError(f"QAT attention scales name {sorted(scales)[:2]}..., the model has {names[:2]}...; the artifact is inconsistent")
    for name in names:
        m = modules[name]
        m._ew_attn_scales = None if scales is None else [None if v is None else float(v) for v in scales[name]]
        m._ew_attn_max = [0.0] * 4
        m._ew_attn_quant = types.MethodType(_attn_quant, m)
        m.forward = types.MethodType(_attn_forward, m)
    return names


def calibrate_attention(model, batches, device: str = "cpu") -> dict[str, list[float]]:
    """Scales (max |x| / 127 over ``batches``) of Q, K, the attention probabilities and V; the
    attention modules are left fake-quantized with them, ready for the QAT fine-tune."""
    import torch

    names = attach_attention(model, None)
    model.to(device).eval()
    with torch.inference_mode():
        for batch in batches:
            model(**_model_inputs(batch, device))
    modules = dict(model.named_modules())
    scales = {n: [max(v, 1e-8) / QMAX for v in modules[n]._ew_attn_max] for n in names}
    attach_attention(model, scales)
    return scales


ATTENTION_MATMULS = ("scores", "context")  # Q.K^T and P.V, in the order of ``scales[name]``'s pairs


def quantized_attention_matmuls(scales: dict[str, list[float | None]]) -> int:
    return sum(v[2 * i] is not None for v in scales.values() for i in range(2))


def attention_sensitivity(model, scales: dict[str, list[float]], batches, device: str = "cpu",
                          progress: bool = True) -> dict[str, float]:
    """Each attention MatMul's cost when it alone is fake-quantized on top of whatever else the model
    has attached (the Linear layers' fake quantization, in ``compress``): the relative squared error
    of the logits against the same model with every attention MatMul float, averaged over
    ``batches``. Keys are ``"<module>:scores"`` and ``"<module>:context"``."""
    import torch
    from tqdm.auto import tqdm

    model.to(device).eval()
    feeds = [_model_inputs(b, device) for b in batches]
    floating = {n: [None] * 4 for n in scales}
    cost = {}
    try:
        with torch.inference_mode():
            attach_attention(model, floating)
            ref = [model(**f).logits for f in feeds]
            keys = [(n, i) for n in sorted(scales) for i in range(2)]
            for name, i in tqdm(keys, desc="QAT attention sensitivity", unit="matmul", disable=not progress):
                one = dict(floating)
                one[name] = [scales[name][j] if j // 2 == i else None for j in range(4)]
                attach_attention(model, one)
                cost[f"{name}:{ATTENTION_MATMULS[i]}"] = _mean_logit_error(model, feeds, ref)
    finally:
        attach_attention(model, scales)
    return cost


def keep_attention_float(scales: dict[str, list[float]], keys) -> dict[str, list[float | None]]:
    """``scales`` with the MatMuls named by ``keys`` (``"<module>:scores|context"``) set to float."""
    out = {n: list(v) for n, v in scales.items()}
    for key in keys:
        name, _, which = key.rpartition(":")
        i = ATTENTION_MATMULS.index(which)
        out[name][2 * i] = out[name][2 * i + 1] = None
    return out


def disable_dropout(model) -> int:
    """Set every dropout in ``model`` to 0 (``nn.Dropout`` modules and the attention-probability
    dropout that SDPA attention modules keep as ``dropout_prob``); returns how many were on."""
    import torch

    n = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout) and m.p > 0:
            m.p, n = 0.0, n + 1
        if isinstance(getattr(m, "dropout_prob", None), float) and m.dropout_prob > 0:
            m.dropout_prob, n = 0.0, n + 1
    return n


def detach(model, names) -> None:
    """Undo ``attach`` for the named layers (their class ``forward`` is used again)."""
    modules = dict(model.named_modules())
    for name in names:
        m = modules[name]
        if "forward" in vars(m):
            del m.forward
        for attr in ("_ew_act_scale", "_ew_w_scale"):
            if hasattr(m, attr):
                delattr(m, attr)


def _logit_error(logits, ref, mask) -> float:
    """Relative squared error of the logits, sum((logits - ref)^2) / sum(ref^2), over the rows
    (sequence classifiers) or the real tokens (token classifiers)."""
    if logits.dim() == 3:  # token classification: keep the real tokens only
        keep = mask.bool()
        logits, ref = logits[keep], ref[keep]
    logits, ref = logits.float(), ref.float()
    return float(((logits - ref) ** 2).sum() / (ref ** 2).sum().clamp(min=1e-12))


def _mean_logit_error(model, feeds, ref) -> float:
    """``_logit_error`` of the model's logits against ``ref``, averaged over ``feeds``."""
    return sum(_logit_error(model(**f).logits, r, f["attention_mask"]) for f, r in zip(feeds, ref)) / len(feeds)


def _model_inputs(batch, device: str) -> dict:
    """A collated batch without its labels, on ``device``."""
    return {k: v.to(device) for k, v in batch.items() if k != "labels"}


def layer_sensitivity(model, act_scales: dict[str, float], batches, device: str = "cpu",
                      progress: bool = True) -> dict[str, float]:
    """Each layer's cost when it alone is fake-quantized: the relative squared error of the logits
    against the float model's, averaged over ``batches``. Higher means keep it float first."""
    import torch
    from tqdm.auto import tqdm

    model.to(device).eval()
    feeds = [_model_inputs(b, device) for b in batches]
    cost = {}
    with torch.inference_mode():
        ref = [model(**f).logits for f in feeds]
        for name in tqdm(sorted(act_scales), desc="QAT sensitivity", unit="layer", disable=not progress):
            attach(model, {name: act_scales[name]})
            try:
                cost[name] = _mean_logit_error(model, feeds, ref)
            finally:
                detach(model, [name])
    return cost


def calibrate(model, batches, device: str = "cpu", filter_fn=qat_filter, percentile: float | None = None) -> dict[str, float]:
    """Per-tensor symmetric activation scales of the selected Linear layers' inputs: max |x| over
    the batches, or the mean over batches of the ``percentile`` of |x|."""
    import torch

    maxima: dict[str, float] = {}
    seen: dict[str, list[float]] = {}
    hooks = []
    for name, m in model.named_modules():
        if filter_fn(m, name):
            def hook(mod, inp, name=name):
                x = inp[0].detach().abs().flatten().float()
                if percentile is None:
                    maxima[name] = max(maxima.get(name, 0.0), float(x.max()))
                else:
                    k = max(1, int(round(x.numel() * percentile / 100)))
                    seen.setdefault(name, []).append(float(x.kthvalue(k).values))
            hooks.append(m.register_forward_pre_hook(hook))
    if not hooks:
        raise UsageError(f"{type(model).__name__}: no Linear layer to quantize inside the blocks compression may touch")
    model.to(device).eval()
    try:
        with torch.inference_mode():
            for batch in batches:
                model(**_model_inputs(batch, device))
    finally:
        for h in hooks:
            h.remove()
    if percentile is not None:
        maxima = {k: sum(v) / len(v) for k, v in seen.items()}
    return {k: max(v, 1e-8) / QMAX for k, v in maxima.items()}


def save_scales(path: Path, act_scales: dict[str, float], float_layers: list[str] = (),
                attention_scales: dict[str, list[float]] | None = None) -> None:
    (path / SCALES_FILE).write_text(json.dumps({"activation_scales": act_scales, "qmax": QMAX,
                                                "weights": "per-channel symmetric, max|w|/127 of the saved weights",
                                                "float_layers": list(float_layers),
                                                "attention_scales": attention_scales or {},
                                                "attention_scales_order": ["query", "key", "probabilities", "value"]},
                                               indent=2))


def _read_scales(path: Path) -> dict:
    f = path / SCALES_FILE
    if not f.is_file():
        raise UsageError(f"{path}: manifest says QAT but {SCALES_FILE} is missing; re-run compress --qat")
    return json.loads(f.read_text())


def load_scales(path: Path) -> dict[str, float]:
    return {k: float(v) for k, v in _read_scales(path)["activation_scales"].items()}


def load_attention_scales(path: Path) -> dict[str, list[float]]:
    """The attention MatMul scales of a QAT artifact ({} when its attention stayed float)."""
    return {k: [None if x is None else float(x) for x in v]
            for k, v in (_read_scales(path).get("attention_scales") or {}).items()}
