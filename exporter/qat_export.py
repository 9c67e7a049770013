"""Export of a QAT artifact (``compress --qat``): the fake-quantized model becomes Q/DQ pairs."""

from __future__ import annotations

from pathlib import Path

from evaluation.parity import Tolerance
from exporter.compress.qat import attach, attach_attention, load_attention_scales, load_scales, quantized_attention_matmuls
from exporter.module import export_hf_head, load_eager
from exporter.onnx_file import save_model
from exporter.passes import QAT_EXPORT, run_passes
from runtimes.artifact import Artifact
from runtimes.errors import UsageError

# Checked with ONNX Runtime's graph optimizations off, so Q/DQ run as written rather than as INT8
# kernels, against the fake-quantized model in eval mode, which rounds as QuantizeLinear does. Even
# so the two are not bit-equal: a value within float error of a rounding tie (x/scale = k + 0.5)
# lands on either step depending on the summation order of the MatMul before it, and one such flip
# moved one MiniLM-classifier row's logits by 0.17 (cosine 0.994) while the other rows matched to
# 1e-6. The tolerance admits that and still catches a wrong scale or a missing Q/DQ pair.
QAT_TOLERANCE = Tolerance(atol=0.5, rtol=0.1, min_cosine=0.99)


def export_qat(src: Artifact, out: Path, *, opset: int | None, external_data: bool, force: bool,
               tolerance: Tolerance | None, command: str | None) -> Artifact:
    """Export ``src`` with its QAT fake quantization as QuantizeLinear/DequantizeLinear pairs
    (TorchScript exporter), checked against the fake-quantized PyTorch model."""
    import transformers

    from exporter.finetune import CLASSIFIER_TASKS
    from runtimes.tasks import get_task

    auto = getattr(transformers, get_task(src.task).auto_class) if src.task in CLASSIFIER_TASKS else None
    if auto is None:
        raise UsageError(f"{src.path}: QAT export supports classifiers, not task {src.task!r}")
    model = load_eager(src, auto)
    scales = load_scales(src.path)
    attach(model, scales, freeze_weights=True)
    attention = load_attention_scales(src.path)
    if attention:
        attach_attention(model, attention)
    seq_out = src.task == "token-classification"
    return export_hf_head(
        src, model, lambda out, mask: out.logits, out, output_name="logits",
        output_axes={0: "batch_size", 1: "sequence_length"} if seq_out else {0: "batch_size"},
        opset=opset, external_data=external_data, force=force, tolerance=tolerance or QAT_TOLERANCE, task=src.task,
        command=command, parity_graph_optimization="disabled", min_opset=13, rewrite=fold_weight_quantization,
        extra_manifest={"quantization": {"mode": "qat", "format": "QDQ", "target": "tensorrt",
                                         "activation_scales": scales, "weights": "per-channel symmetric",
                                         "layers": sorted(scales), "attention_matmuls": quantized_attention_matmuls(attention)}},
    )


def fold_weight_quantization(path: Path) -> dict:
    """Run the ``QAT_EXPORT`` passes on the model at ``path`` and save it when they changed it.

    The TorchScript exporter writes ``float W [out, in] -> QuantizeLinear -> DequantizeLinear(axis 0)
    -> Transpose -> MatMul``; the Transpose between the DequantizeLinear and the MatMul is not read by
    TensorRT's explicit quantization as a quantized MatMul input (``check --target tensorrt`` flags it).
    ``fold_transposed_weight_qdq`` makes it an INT8 initializer ``[in, out]`` feeding
    ``DequantizeLinear(axis 1) -> MatMul``. Returns ``{"folded_weights": n}``."""
    import onnx

    m = onnx.load(str(path))
    result = run_passes(QAT_EXPORT, m)
    if result.modified:
        # a graph past protobuf's 2 GiB (the exporter then wrote external data) stays external, in
        # one file, and the exporter's per-tensor files go
        save_model(m, path, external=m.ByteSize() > 1_800_000_000)
    return {"folded_weights": result.count}
