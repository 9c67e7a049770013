"""``compress``: one verb, one config object per technique.

    compress(artifact, out, [PruneConfig(heads=0.3, ffn=0.5), DistillConfig()], train_data=..., eval_data=...)

Techniques that change the model (pruning, layer drop, 2:4 sparsity) are applied in the order
given; a ``DistillConfig`` turns the recovery fine-tuning that follows into distillation from the
teacher (by default the input model itself). The eval metric, parameters and encoder FLOPs before
and after go into the manifest.
"""

from __future__ import annotations

import os
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Sequence

from evaluation.data import load_tokenizer
from exporter.compress.distill import DistillConfig, LayerDropConfig, distill_loss, drop_layers_, same_labels
from exporter.compress.pruning import PruneConfig, encoder_flops, param_count, prune_
from exporter.compress.qat import (
    QATConfig, attach, attach_attention, attention_sensitivity, calibrate, calibrate_attention, disable_dropout,
    keep_attention_float, layer_sensitivity, quantized_attention_matmuls, save_scales,
)
from exporter.compress.sparsity import Sparse24Config, linear_filter, sparsify_
from exporter.finetune import (
    CLASSIFIER_TASKS, _device, argmax, evaluate_report, headline, predict_logits, prepare_text_classification,
    prepare_token_classification,
)
from exporter.training import TrainConfig, train
from exporter.tuning import open_checkpoint, save_pretrained
from exporter.writer import ArtifactWriter
from runtimes.artifact import Artifact, load_artifact, source_record
from runtimes.manifests import HfManifest
from runtimes.errors import UsageError
from runtimes.pyt.loading import as_usage_error, hf_load_errors


def _load_classifier(path: Path, task: str, attention: str = "sdpa"):
    import transformers

    from runtimes.tasks import get_task

    auto = getattr(transformers, get_task(task).auto_class)
    try:
        return auto.from_pretrained(str(path), local_files_only=True, trust_remote_code=False, attn_implementation=attention)
    except hf_load_errors() as e:
        raise as_usage_error(path, e) from None


def _labels_of(model) -> list[str]:
    return [model.config.id2label[i] for i in range(model.config.num_labels)]


def compress(
    artifact: str | os.PathLike,
    out: str | os.PathLike,
    techniques: Sequence,
    *,
    train_data,
    eval_data,
    recovery: TrainConfig | None = TrainConfig(epochs=2, lr=5e-5),
    teacher: str | os.PathLike | None = None,
    device: str | None = None,
    label_column: str | None = None,
    force: bool = False,
    resume: bool = False,
    command: str | None = None,
    progress: bool = True,
) -> Artifact:
    """Apply ``techniques`` to a fine-tuned classifier, recover with a short fine-tune (or
    distillation), and write an ``hf`` artifact that ``export`` and the torch runtime load as is.
    A causal LM (task text-generation) takes layer drop and distillation on plain texts instead
    (:func:`exporter.compress.causal.compress_causal`).

    Raises:
        UsageError: not a fine-tuned classifier, data labels outside the model's, a teacher with
            another label set, bad technique settings, output exists without ``force``.
    """
    src = load_artifact(artifact)
    if src.kind == "hf" and src.task == "text-generation":
        from exporter.compress.causal import compress_causal

        return compress_causal(src, out, techniques, train_data=train_data, eval_data=eval_data, recovery=recovery,
                               teacher=teacher, device=_device(device), force=force, resume=resume, command=command,
                               progress=progress)
    if src.kind != "hf" or src.task not in CLASSIFIER_TASKS:
        raise UsageError(f"{src.path}: compress takes a fine-tuned Hugging Face classifier "
                         f"(task {' or '.join(CLASSIFIER_TASKS)}); run enginewright finetune first")
    for t in techniques:
        if not isinstance(t, (PruneConfig, DistillConfig, LayerDropConfig, Sparse24Config, QATConfig)):
            raise UsageError(f"unknown compression technique {type(t).__name__}")
    if not techniques:
        raise UsageError("compress needs at least one technique (pruning, distillation, layer drop, 2:4 sparsity or QAT)")
    changing = [t for t in techniques if not isinstance(t, DistillConfig)]
    if any(isinstance(t, QATConfig) for t in changing[:-1]):
        raise UsageError("QAT must come after every other model change (pruning, layer drop, sparsity)")
    writer = ArtifactWriter(out, force=force, inputs=[src.path, teacher])
    out = writer.out
    device = _device(device)
    # QAT of the attention MatMuls sees them only in the eager attention (SDPA fuses them)
    qat_attention = any(isinstance(t, QATConfig) and t.attention for t in techniques)
    model = _load_classifier(src.path, src.task, "eager" if qat_attention else "sdpa")
    names = _labels_of(model)
    distill = next((t for t in techniques if isinstance(t, DistillConfig)), None)
    teacher_model = None
    if distill is not None:
        teacher_path = load_artifact(teacher).path if teacher else src.path
        teacher_model = _load_classifier(teacher_path, src.task)
        if not same_labels(teacher_model.config, model.config):
            raise UsageError(f"{teacher_path}: the teacher's labels {_labels_of(teacher_model)} differ from the student's "
                             f"{names}; distil from a teacher fine-tuned on the same label set")
        teacher_model.to(device)
    if recovery is None and distill is not None:
        raise UsageError("distillation needs recovery training epochs (recovery=None turns training off)")

    tokenizer = load_tokenizer(src.path)
    max_length = recovery.max_length if recovery else 64
    prepare = prepare_text_classification if src.task == "text-classification" else prepare_token_classification
    kwargs = {"label_column": label_column} if src.task == "text-classification" else {}
    data = prepare(tokenizer, train_data, eval_data, max_length, names=names, **kwargs)
    pad_id = tokenizer.pad_token_id or 0
    eval_bs = recovery.eval_batch_size if recovery else 64
    model.to(device)
    # QAT's fine-tune is judged by how well the quantized model keeps the input model's predictions
    # on the eval split (ties broken by the mean KL divergence from its logits), and the calibrated
    # model before any training competes as epoch 0
    qat_selection = recovery is not None and any(isinstance(t, QATConfig) for t in techniques)
    ref_logits = predict_logits(model, data.eval, eval_bs, device, pad_id) if qat_selection else None
    before = {"eval": evaluate_report(model, data, eval_bs, device, pad_id,
                                      preds=None if ref_logits is None else argmax(ref_logits)),
              "params": param_count(model), "encoder_flops_seq128": encoder_flops(model.config, 128)}

    applied, after_step, layer_map = [], [], None
    for t in techniques:
        if isinstance(t, PruneConfig):
            applied.append(prune_(model, data.train, t, device, pad_id, progress, task=src.task))
        elif isinstance(t, LayerDropConfig):
            info = drop_layers_(model, t, task=src.task)
            layer_map = info["teacher_layers_kept"]
            applied.append(info)
        elif isinstance(t, QATConfig):
            from exporter.training import collate, epoch_order

            order = epoch_order(len(data.train), recovery.seed if recovery else 0, 0)
            bs = recovery.batch_size if recovery else 32
            batches = [collate(data.train, order[i:i + bs], pad_id) for i in range(0, min(len(order), t.calib_batches * bs), bs)]
            act_scales = calibrate(model, batches, device, filter_fn=linear_filter(src.task, 1), percentile=t.act_percentile)
            float_layers, cost = [], {}
            if t.float_layers >= len(act_scales):
                raise UsageError(f"--qat-float-layers {t.float_layers} leaves nothing to quantize: the model has "
                                 f"{len(act_scales)} quantizable Linear layers")
            if t.float_layers:
                cost = layer_sensitivity(model, act_scales, batches[:t.sensitivity_batches], device, progress)
                float_layers = sorted(cost, key=cost.get, reverse=True)[:t.float_layers]
                act_scales = {k: v for k, v in act_scales.items() if k not in float_layers}
            attach(model, act_scales)
            attn_scales = calibrate_attention(model, batches, device) if t.attention else {}
            float_attention, attn_cost = [], {}
            if t.float_attention:
                if t.float_attention >= 2 * len(attn_scales):
                    raise UsageError(f"--qat-float-attention {t.float_attention} leaves no attention MatMul to quantize: "
                                     f"the model has {2 * len(attn_scales)}")
                attn_cost = attention_sensitivity(model, attn_scales, batches[:t.sensitivity_batches], device, progress)
                float_attention = sorted(attn_cost, key=attn_cost.get, reverse=True)[:t.float_attention]
                attn_scales = keep_attention_float(attn_scales, float_attention)
                attach_attention(model, attn_scales)
            dropouts_off = 0 if t.dropout else disable_dropout(model)
            applied.append({"technique": "qat", "layers": len(act_scales), "calib_batches": len(batches),
                            "float_layers": float_layers, "dropout_disabled": dropouts_off,
                            "attention_matmuls": quantized_attention_matmuls(attn_scales),
                            "float_attention": float_attention,
                            "attention_sensitivity": _top(attn_cost, 10), "sensitivity": _top(cost, 10),
                            "activation": "per-tensor symmetric INT8, calibrated "
                                          + (f"{t.act_percentile} percentile of |x|" if t.act_percentile else "max|x|")
                                          + "/127, held fixed",
                            "weights": "per-channel symmetric INT8, max|w|/127 of the current weights"})
        elif isinstance(t, DistillConfig):
            applied.append({"technique": "distillation", **asdict(t),
                            "teacher": str(Path(teacher).resolve()) if teacher else str(src.path.resolve())})
        else:
            masks = sparsify_(model, t, filter_fn=linear_filter(src.task, t.m))
            after_step.append(masks.apply)
            applied.append({**masks.to_manifest(), "technique": "sparsity"})

    result = None
    if recovery is not None:
        loss_fn = distill_loss(teacher_model, distill, layer_map) if distill else None
        ckpt = open_checkpoint(out, _fingerprint(src, techniques, recovery, data), resume=resume, force=force)
        if qat_selection:
            def evaluate(m):
                agree, kl = fidelity(predict_logits(m, data.eval, eval_bs, device, pad_id), ref_logits)
                return agree, -kl
        else:
            def evaluate(m):
                return headline(evaluate_report(m, data, eval_bs, device, pad_id))
        result = train(model, data.train, recovery, evaluate=evaluate,
                       **({"loss_fn": loss_fn} if loss_fn else {}), after_step=after_step, checkpoint=ckpt,
                       resume=resume, device=device, pad_id=pad_id, desc="recover", progress=progress,
                       baseline=qat_selection)
    after = {"eval": evaluate_report(model, data, eval_bs, device, pad_id),
             "params": param_count(model), "encoder_flops_seq128": encoder_flops(model.config, 128)}
    sparsity = next((a for a in applied if a["technique"] == "sparsity"), None)
    qat = next((a for a in applied if a["technique"] == "qat"), None)

    def fill(tmp):
        save_pretrained(tmp, model, tokenizer)
        if qat:
            save_scales(tmp, act_scales, qat["float_layers"], attn_scales)
        return HfManifest(
            task=src.task, labels=names, source=source_record(src), command=command,
            options={"techniques": [{"type": type(t).__name__, **asdict(t)} for t in techniques],
                     "recovery": asdict(recovery) if recovery else None, "device": device},
            extra={"compression": applied, "sparsity": sparsity, "qat": qat, "before": before, "after": after,
                   "training": {**result.to_dict(), "selected_by": "agreement with the input model's eval-split "
                                "predictions, then the mean KL divergence from its logits" if qat_selection
                                else "eval metric"} if result else None,
                   "data": data.fingerprints},
        )

    art = writer.write(fill)
    if recovery is not None:
        ckpt.remove()
    return art


def _top(cost: dict[str, float], n: int) -> dict[str, float]:
    return {k: cost[k] for k in sorted(cost, key=cost.get, reverse=True)[:n]}


def fidelity(logits, ref) -> tuple[float, float]:
    """How closely ``logits`` follow ``ref``: the share of equal argmax predictions and the mean
    KL(softmax(ref) || softmax(logits)), per example or per (unpadded) token."""
    import numpy as np

    if isinstance(logits, list):  # token classification: one array per example
        logits, ref = np.concatenate(logits), np.concatenate(ref)

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = log_softmax(np.asarray(ref, np.float64)), log_softmax(np.asarray(logits, np.float64))
    kl = float((np.exp(lp) * (lp - lq)).sum(-1).mean())
    return float(np.mean(logits.argmax(-1) == ref.argmax(-1))), kl


def _fingerprint(src: Artifact, techniques, recovery: TrainConfig, data) -> str:
    import hashlib
    import json

    blob = json.dumps({"src": str(src.path.resolve()), "t": [repr(t) if not is_dataclass(t) else asdict(t) for t in techniques],
                       "r": recovery.fingerprint(), "d": data.fingerprints}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
