"""``finetune``: adapt a Hugging Face encoder to a labelled task and write an artifact ``export`` takes."""

from __future__ import annotations

import os
from dataclasses import asdict

import numpy as np

from evaluation.data import TextDataset, load_texts, load_tokenizer
from exporter.distributed import refuse_fsdp_with_lora
from exporter.training import Encoded, TrainConfig, train
from exporter.tuning import LoraSettings, TaskData, open_checkpoint, run_fingerprint, with_lora, write_tuned
from exporter.writer import ArtifactWriter, open_input
from runtimes.artifact import Artifact, source_record
from runtimes.manifests import HfManifest
from runtimes.errors import UsageError
from runtimes.pyt.loading import as_usage_error, hf_load_errors
from runtimes.tasks import get_task, task_names

FINETUNE_TASKS = task_names(trainable=True)
CLASSIFIER_TASKS = tuple(t for t in FINETUNE_TASKS if get_task(t).family != "decoder")  # what compress and QAT take


def _device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: torch.cuda.is_available() is False; use --device cpu")
    return device


def _check_labels(train_labels, eval_labels, train_src: str, eval_src: str, names: list[str] | None = None) -> list[str]:
    """The label names: sorted training labels, or the model's ``names`` that every data label must be in."""
    if names is not None:
        for labels, src in ((train_labels, train_src), (eval_labels, eval_src)):
            unknown = sorted({str(x) for x in labels} - set(names))
            if unknown:
                raise UsageError(f"{src}: labels {unknown} are not among the model's labels {names}; "
                                 "fine-tune on this label set first")
        return list(names)
    names = sorted({str(x) for x in train_labels})
    if len(names) < 2:
        raise UsageError(f"{train_src}: needs at least two distinct labels to train a classifier, found {names}")
    unseen = sorted({str(x) for x in eval_labels} - set(names))
    if unseen:
        raise UsageError(f"{eval_src}: labels {unseen} do not occur in the training data {train_src}; "
                         "remove those rows or add training examples for them")
    return names


def _require_labels(ds: TextDataset) -> None:
    if ds.labels is None:
        raise UsageError(f"{ds.source}: no label column; pass --label-column NAME (every row needs a label)")
    for i, lab in enumerate(ds.labels):
        if lab is None or (isinstance(lab, str) and not lab.strip()):
            raise UsageError(f"{ds.source}: row {i + 1} has no label; every training and eval row needs one")


def prepare_text_classification(tokenizer, train_path, eval_path, max_length: int, label_column=None,
                                names: list[str] | None = None) -> TaskData:
    train_ds = load_texts(train_path, label_column=label_column)
    eval_ds = load_texts(eval_path, label_column=label_column)
    for ds in (train_ds, eval_ds):
        _require_labels(ds)
    names = _check_labels(train_ds.labels, eval_ds.labels, train_ds.source, eval_ds.source, names)
    ids = {n: i for i, n in enumerate(names)}

    def encode(ds: TextDataset) -> Encoded:
        enc = tokenizer(list(ds.texts), list(ds.pairs) if ds.pairs else None, truncation=True, max_length=max_length)
        return Encoded({k: list(v) for k, v in enc.items()}, [ids[str(x)] for x in ds.labels])

    return TaskData("text-classification", names, encode(train_ds), encode(eval_ds),
                    {"train": train_ds.describe(), "eval": eval_ds.describe()})


def prepare_token_classification(tokenizer, train_path, eval_path, max_length: int,
                                 names: list[str] | None = None) -> TaskData:
    from evaluation.conll import align_labels, load_conll

    train_ds, eval_ds = load_conll(train_path), load_conll(eval_path)
    given = names
    names = _check_labels([t for s in train_ds.tags for t in s], [t for s in eval_ds.tags for t in s],
                          train_ds.source, eval_ds.source, names)
    if given is None and "O" in names:
        names = ["O"] + [n for n in names if n != "O"]
    ids = {n: i for i, n in enumerate(names)}

    def encode(ds) -> Encoded:
        enc = tokenizer([list(s) for s in ds.sentences], is_split_into_words=True, truncation=True, max_length=max_length)
        labels = [align_labels(enc.word_ids(i), tags, ids) for i, tags in enumerate(ds.tags)]
        return Encoded({k: list(v) for k, v in enc.items()}, labels)

    def describe(ds) -> dict:
        return {"source": ds.source, "rows": len(ds), "hash": ds.fingerprint()}

    return TaskData("token-classification", names, encode(train_ds), encode(eval_ds),
                    {"train": describe(train_ds), "eval": describe(eval_ds)})


def predict_logits(model, enc: Encoded, batch_size: int, device: str, pad_id: int = 0) -> np.ndarray | list[np.ndarray]:
    """Float32 logits: ``[examples, labels]``, or one ``[tokens, labels]`` array per example
    (unpadded) for token classification."""
    import torch

    from exporter.training import collate

    model.eval()
    batches: list = []
    per_token: list = []
    with torch.inference_mode():
        for start in range(0, len(enc), batch_size):
            idx = list(range(start, min(start + batch_size, len(enc))))
            batch = collate(enc, idx, pad_id)
            batch.pop("labels")
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy()
            if logits.ndim == 2:
                batches.append(logits)
            else:
                per_token.extend(logits[row, : len(enc.features["input_ids"][i])] for row, i in enumerate(idx))
    return np.concatenate(batches) if batches else per_token


def predict(model, enc: Encoded, batch_size: int, device: str, pad_id: int = 0) -> np.ndarray | list[np.ndarray]:
    """Argmax predictions: one id per example, or per token (unpadded) for token classification."""
    return argmax(predict_logits(model, enc, batch_size, device, pad_id))


def argmax(logits: np.ndarray | list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """``predict``'s output from ``predict_logits``' output."""
    return logits.argmax(-1) if isinstance(logits, np.ndarray) else [x.argmax(-1) for x in logits]


def evaluate_report(model, data: TaskData, batch_size: int, device: str, pad_id: int = 0, preds=None) -> dict:
    """Per-class precision/recall/F1 with micro and macro averages (token- and entity-level for
    token classification), plus accuracy with a bootstrap 95% interval. ``preds``: the model's
    ``predict`` output on ``data.eval`` when the caller has it already."""
    from evaluation.metrics import accuracy_with_ci, classification_report, entity_report

    if preds is None:
        preds = predict(model, data.eval, batch_size, device, pad_id)
    if data.task == "text-classification":
        gold = np.asarray(data.eval.labels)
        return {"metric": "accuracy", **accuracy_with_ci(preds, gold),
                "per_class": classification_report(preds, gold, data.labels)}
    pred_tok, gold_tok, pred_tags, gold_tags = [], [], [], []
    for p, g in zip(preds, data.eval.labels):
        g = np.asarray(g)
        keep = g != -100
        pred_tok.append(p[keep])
        gold_tok.append(g[keep])
        pred_tags.append([data.labels[i] for i in p[keep]])
        gold_tags.append([data.labels[i] for i in g[keep]])
    pt, gt = np.concatenate(pred_tok), np.concatenate(gold_tok)
    ents = entity_report(pred_tags, gold_tags)
    return {"metric": "entity_micro_f1", "entity_micro_f1": ents["micro"]["f1"],
            "token_level": classification_report(pt, gt, data.labels), "entity_level": ents,
            **{f"token_{k}": v for k, v in accuracy_with_ci(pt, gt).items()}}


def headline(report: dict) -> float:
    return report["accuracy"] if report["metric"] == "accuracy" else report["entity_micro_f1"]


def finetune(
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    train_data,
    eval_data,
    task: str = "text-classification",
    config: TrainConfig = TrainConfig(),
    lora: LoraSettings | None = None,
    device: str | None = None,
    label_column: str | None = None,
    force: bool = False,
    resume: bool = False,
    command: str | None = None,
    progress: bool = True,
) -> Artifact:
    """Fine-tune ``model_dir`` on ``train_data``, early-stopping on ``eval_data``; write an ``hf``
    artifact (safetensors weights, tokenizer, config with id2label, manifest with the eval report).

    Checkpoints go to ``<out>.ckpt`` beside the output and are removed on success; ``resume``
    continues an interrupted run from them.

    Raises:
        UsageError: not a Hugging Face model, bad data or labels, output exists without ``force``.
    """
    import torch
    import transformers

    if task not in FINETUNE_TASKS:
        raise UsageError(f"unknown task {task!r} for finetune; choose one of {', '.join(FINETUNE_TASKS)}")
    src = open_input(model_dir, "hf", "finetune")
    writer = ArtifactWriter(out, force=force, inputs=[src.path])
    out = writer.out
    device = _device(device)
    if task == "text-generation":
        from exporter.causal_finetune import finetune_causal

        return finetune_causal(src, writer, train_data=train_data, eval_data=eval_data, config=config, lora=lora,
                               device=device, resume=resume, force=force, command=command, progress=progress)
    tokenizer = load_tokenizer(src.path)
    if task == "text-classification":
        data = prepare_text_classification(tokenizer, train_data, eval_data, config.max_length, label_column)
    else:
        data = prepare_token_classification(tokenizer, train_data, eval_data, config.max_length)

    auto = getattr(transformers, get_task(task).auto_class)
    id2label = dict(enumerate(data.labels))
    torch.manual_seed(config.seed)
    try:
        model = auto.from_pretrained(str(src.path), num_labels=len(data.labels), id2label=id2label,
                                     label2id={v: k for k, v in id2label.items()}, ignore_mismatched_sizes=True,
                                     local_files_only=True, trust_remote_code=False, attn_implementation="sdpa")
    except hf_load_errors() as e:
        raise as_usage_error(src.path, e) from None
    refuse_fsdp_with_lora(lora)
    if lora is not None:
        model = with_lora(model, lora, task)

    ckpt = open_checkpoint(out, run_fingerprint(config, data, lora, src), resume=resume, force=force)
    pad_id = tokenizer.pad_token_id or 0
    result = train(model, data.train, config, evaluate=lambda m: headline(evaluate_report(m, data, config.eval_batch_size, device, pad_id)),
                   checkpoint=ckpt, resume=resume, device=device, pad_id=pad_id, desc="finetune", progress=progress, shardable=True)
    report = evaluate_report(model, data, config.eval_batch_size, device, pad_id)
    return write_tuned(writer, model, tokenizer, lora, ckpt, lambda: HfManifest(
        task=task, labels=data.labels, source=source_record(src), command=command,
        options={"train": asdict(config), "lora": asdict(lora) if lora else None, "device": device},
        extra={"data": data.fingerprints, "training": result.to_dict(), "eval": report},
    ))
