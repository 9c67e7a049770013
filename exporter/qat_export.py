"""Export of a QAT artifact (``compress --qat``): the fake-quantized model becomes Q/DQ pairs."""

from __future__ import annotations

import inspect
from pathlib import Path

from benchmarks.data import load_texts, load_tokenizer, tokenize
from benchmarks.parity import Tolerance
from exporter.compress.qat import attach, load_scales
from exporter.manifest import COMPANION_FILES
from runtimes.artifact import Artifact
from runtimes.errors import UsageError
from runtimes.pyt.loading import as_usage_error, hf_load_errors

# Checked with ONNX Runtime's graph optimizations off, so Q/DQ run as written rather than as INT8
# kernels. Even so the two are not bit-equal: PyTorch's fake quantization multiplies by 1/scale,
# ONNX's QuantizeLinear divides by scale, so values on an INT8 step boundary can round to the
# neighbouring step, and over six layers that moved MiniLM-classifier logits by up to 0.15 (cosine
# 0.998). The tolerance admits that and still catches a wrong scale or a missing Q/DQ pair.
QAT_TOLERANCE = Tolerance(atol=0.25, rtol=0.1, min_cosine=0.995)


def export_qat(src: Artifact, out: Path, *, opset: int | None, external_data: bool, force: bool,
               tolerance: Tolerance | None, command: str | None) -> Artifact:
    """Export ``src`` with its QAT fake quantization as QuantizeLinear/DequantizeLinear pairs
    (TorchScript exporter), checked against the fake-quantized PyTorch model."""
    import torch
    import transformers

    from exporter.module import export_module

    auto = {"text-classification": transformers.AutoModelForSequenceClassification,
            "token-classification": transformers.AutoModelForTokenClassification}.get(src.task)
    if auto is None:
        raise UsageError(f"{src.path}: QAT export supports classifiers, not task {src.task!r}")
    try:
        model = auto.from_pretrained(str(src.path), local_files_only=True, trust_remote_code=False,
                                     attn_implementation="eager").eval()
    except hf_load_errors() as e:
        raise as_usage_error(src.path, e) from None
    scales = load_scales(src.path)
    attach(model, scales, freeze_weights=True)
    params = inspect.signature(model.forward).parameters
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in params]
    enc = tokenize(load_tokenizer(src.path), load_texts(None).take(4), max_length=32)
    example = {n: torch.from_numpy(enc[n]) if n in enc else torch.zeros_like(torch.from_numpy(enc["input_ids"])) for n in names}

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask=None, token_type_ids=None):
            kw = {"attention_mask": attention_mask, "token_type_ids": token_type_ids}
            return self.model(input_ids=input_ids, **{k: v for k, v in kw.items() if k in names}).logits

    seq_out = src.task == "token-classification"
    axes = {n: {0: "batch_size", 1: "sequence_length"} for n in names}
    axes["logits"] = {0: "batch_size", 1: "sequence_length"} if seq_out else {0: "batch_size"}
    return export_module(
        Logits(), example, out, output_names=["logits"], dynamic_axes=axes, opset=max(opset or 17, 13),
        external_data=external_data, dynamo=False, force=force, tolerance=tolerance or QAT_TOLERANCE,
        task=src.task, command=command, source=src,
        extra_files=[src.path / f for f in COMPANION_FILES if (src.path / f).is_file()], parity_graph_optimization="disabled",
        extra_manifest={"quantization": {"mode": "qat", "format": "QDQ", "target": "tensorrt",
                                         "activation_scales": scales, "weights": "per-channel symmetric",
                                         "layers": sorted(scales)}},
    )
