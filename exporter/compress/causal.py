"""``compress`` for decoder-only causal LMs: a shallower or narrower student recovered by distillation.

The student is the input model with layers dropped (``LayerDropConfig``: evenly spaced teacher
layers, the last always kept) and/or FFN neurons pruned (``PruneConfig`` with ``ffn``: the same width
removed from every layer's MLP by importance on ``train_data``, ``exporter.compress.causal_pruning``),
or the input model as it is when the teacher is another directory.
It learns from the teacher's next-token distributions on ``train_data`` texts (token-level KL at a
temperature, optionally mixed with the LM loss; ``DistillConfig``) and is written as an ordinary
causal-LM directory (safetensors) that ``export`` takes. The manifest holds the perplexity on
``eval_data`` of the teacher, of the student before distillation and after it, the mean KL from the
teacher before and after, and the parameter counts.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from evaluation.data import load_texts
from exporter.compress.distill import DistillConfig, LayerDropConfig, causal_distill_loss, drop_layers_
from exporter.compress.causal_pruning import check_causal, ffn_width, prune_causal_ffn_
from exporter.compress.pruning import PruneConfig, param_count
from exporter.training import Encoded, TrainConfig, collate, train
from exporter.tuning import open_checkpoint
from exporter.writer import ArtifactWriter
from runtimes.artifact import Artifact, load_artifact, source_record
from runtimes.errors import UsageError
from runtimes.manifests import HfManifest

TASK = "text-generation"
_KEEP_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "merges.txt", "vocab.json",
               "added_tokens.json", "tokenizer.model", "chat_template.jinja")


@dataclass
class TextSplits:
    train: Encoded
    eval: Encoded
    fingerprints: dict


def encode_texts(tokenizer, data, max_length: int) -> tuple[Encoded, str]:
    """The texts of ``data`` (a ``text`` column, or lines) as unpadded token ids truncated to
    ``max_length``; ``labels`` are the ids themselves (``collate`` pads them with -100).

    Raises:
        UsageError: the file is missing, empty or malformed, or no text has two tokens.
    """
    ds = load_texts(data)
    ids = [list(x) for x in tokenizer(list(ds.texts), truncation=True, max_length=max_length)["input_ids"] if len(x) >= 2]
    if not ids:
        raise UsageError(f"{data}: no text of at least 2 tokens to learn or score the next token on; "
                         "pass a file with a 'text' column (or one text per line)")
    return Encoded({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]}, ids), ds.fingerprint()


def scores(model, enc: Encoded, batch_size: int, pad_id: int, teacher=None) -> dict:
    """Perplexity of ``model`` on ``enc`` (each token from 1 on, given those before it) and, with
    ``teacher``, the mean KL(teacher || model) of the next-token distributions over real positions."""
    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device  # the teacher's must be the same
    nll, scored, kl, positions = 0.0, 0, 0.0, 0
    with torch.no_grad():
        for i in range(0, len(enc), batch_size):
            batch = {k: v.to(device) for k, v in collate(enc, list(range(i, min(i + batch_size, len(enc)))), pad_id).items()}
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
            lp = F.log_softmax(model(**inputs).logits.float(), -1)
            targets = batch["labels"][:, 1:]
            real = targets != -100
            picked = lp[:, :-1].gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            nll -= float(picked[real].sum())
            scored += int(real.sum())
            if teacher is not None:
                tlp = F.log_softmax(teacher(**inputs).logits.float(), -1)
                mask = batch["attention_mask"].bool()
                kl += float((tlp.exp() * (tlp - lp)).sum(-1)[mask].sum())
                positions += int(mask.sum())
    model.train(was_training)
    out = {"perplexity": math.exp(nll / scored), "tokens_scored": scored}
    if teacher is not None:
        out["kl_to_teacher"] = kl / positions
    return out


def _load_lm(path: Path):
    import transformers

    from runtimes.pyt.loading import as_usage_error, hf_load_errors

    try:
        return transformers.AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except hf_load_errors() as e:
        raise as_usage_error(path, e) from None


def _blocks(model):
    from runtimes.tasks import get_task

    return get_task(TASK).blocks(model)


def _layers(model) -> int:
    return len(_blocks(model))


def _shape(model) -> dict:
    return {"params": param_count(model), "layers": _layers(model), "ffn_width": ffn_width(model.config)}


def compress_causal(src: Artifact, out, techniques, *, train_data, eval_data, recovery: TrainConfig | None,
                    teacher=None, device: str = "cpu", force: bool = False, resume: bool = False,
                    command: str | None = None, progress: bool = True) -> Artifact:
    """Drop layers of the causal LM ``src``, prune its FFN neurons and/or distil it from its teacher;
    write an ``hf`` artifact.

    Raises:
        UsageError: a technique other than layer drop, FFN pruning and distillation, distillation
            without a smaller student or without training, a teacher of another task or tokenizer,
            data without texts, output exists without ``force``.
    """
    from runtimes.tasks import get_task

    task = get_task(TASK)
    for t in techniques:
        if not isinstance(t, (LayerDropConfig, PruneConfig, DistillConfig)):
            raise UsageError(f"{src.path}: compress of a causal LM (task {TASK}) takes layer drop (--student-layers), "
                             f"FFN pruning (--prune-ffn) and distillation (--distill), not {type(t).__name__}")
        if isinstance(t, PruneConfig):
            check_causal(t)
    drop = next((t for t in techniques if isinstance(t, LayerDropConfig)), None)
    prune = next((t for t in techniques if isinstance(t, PruneConfig)), None)
    distill = next((t for t in techniques if isinstance(t, DistillConfig)), None)
    if distill is not None and drop is None and prune is None and teacher is None:
        raise UsageError("--distill of a causal LM needs a smaller student: pass --student-layers N or --prune-ffn F, "
                         "or a larger --teacher DIR with the same tokenizer")
    if distill is not None and recovery is None:
        raise UsageError("--distill needs training epochs; drop --no-recovery")
    if distill is not None and distill.hidden_weight > 0 and teacher is not None:
        raise UsageError("--hidden-loss pairs the student's layers with the ones it was cut from; it needs the "
                         "teacher to be ARTIFACT itself (drop --teacher)")
    writer = ArtifactWriter(out, force=force, inputs=[src.path, teacher])
    out = writer.out
    tokenizer = task.load_processor(src.path)
    teacher_path = None
    if teacher is not None:
        teacher_art = load_artifact(teacher)
        teacher_path = teacher_art.path
        if teacher_art.task != TASK:
            raise UsageError(f"{teacher_path}: the teacher is a {teacher_art.task} model; distil from a causal LM "
                             f"(task {TASK}) with the student's tokenizer")
        if task.load_processor(teacher_path).get_vocab() != tokenizer.get_vocab():
            raise UsageError(f"{teacher_path}: the teacher's tokenizer differs from the student's ({src.path}); "
                             "distil from a teacher with the same tokenizer and vocabulary")

    max_length = recovery.max_length if recovery else 128
    train_enc, train_fp = encode_texts(tokenizer, train_data, max_length)
    eval_enc, eval_fp = encode_texts(tokenizer, eval_data, max_length)
    data = TextSplits(train_enc, eval_enc, {"train": train_fp, "eval": eval_fp})
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # scoring holds a few [batch, length, vocab] float tensors: about 4096 tokens a batch keeps each
    # under 1 GB for a 50k vocabulary
    eval_bs = max(1, min(recovery.eval_batch_size if recovery else 64, 4096 // max_length))

    model = _load_lm(src.path)
    if teacher_path is not None:
        teacher_model = _load_lm(teacher_path)
        if teacher_model.config.vocab_size != model.config.vocab_size:
            raise UsageError(f"{teacher_path}: the teacher's vocabulary has {teacher_model.config.vocab_size} logits, "
                             f"the student's {model.config.vocab_size}; distil from a teacher with the same vocabulary")
    else:
        teacher_model = copy.deepcopy(model)
    teacher_model.to(device).eval()
    model.to(device)
    before = {**_shape(teacher_model), **scores(teacher_model, eval_enc, eval_bs, pad_id)}

    applied, layer_map = [], None
    if drop is not None:
        info = drop_layers_(model, drop, task=TASK)
        layer_map = info["teacher_layers_kept"]
        applied.append(info)
    if prune is not None:
        applied.append(prune_causal_ffn_(model, _blocks(model), train_enc, prune, device=device, pad_id=pad_id,
                                         progress=progress))
    dropped = {**_shape(model), **scores(model, eval_enc, eval_bs, pad_id, teacher_model)}
    if distill is not None:
        applied.append({"technique": "distillation", **asdict(distill),
                        "teacher": str(Path(teacher_path or src.path).resolve()),
                        "loss": f"{distill.alpha} * T^2 * mean KL(teacher/T || student/T) over real tokens + "
                                f"{1 - distill.alpha:g} * next-token cross-entropy"})

    result = None
    if recovery is not None:
        loss_fn = causal_distill_loss(teacher_model, distill, layer_map) if distill else None
        ckpt = open_checkpoint(out, _fingerprint(src, teacher_path, techniques, recovery, data), resume=resume, force=force)

        def evaluate(m):
            return -scores(m, eval_enc, eval_bs, pad_id)["perplexity"]

        result = train(model, train_enc, recovery, evaluate=evaluate, **({"loss_fn": loss_fn} if loss_fn else {}),
                       checkpoint=ckpt, resume=resume, device=device, pad_id=pad_id,
                       desc="distill" if distill else "recover", progress=progress)
    after = {**_shape(model), **scores(model, eval_enc, eval_bs, pad_id, teacher_model)}

    def fill(tmp: Path):
        model.to("cpu").save_pretrained(str(tmp), safe_serialization=True)
        for name in _KEEP_FILES:  # the tokenizer exactly as it was (load_processor set a pad token on it)
            if (src.path / name).is_file():
                shutil.copyfile(src.path / name, tmp / name)
        return HfManifest(
            task=TASK, source=source_record(src), command=command,
            options={"techniques": [{"type": type(t).__name__, **asdict(t)} for t in techniques],
                     "recovery": asdict(recovery) if recovery else None, "device": device,
                     "teacher": str(Path(teacher_path).resolve()) if teacher_path else None},
            extra={"compression": applied, "before": before, "dropped": dropped, "after": after,
                   "perplexity": {"teacher": before["perplexity"], "student_before_training": dropped["perplexity"],
                                  "student": after["perplexity"], "eval_tokens": after["tokens_scored"]},
                   "training": {**result.to_dict(), "selected_by": "eval perplexity (the metric is its negative)"}
                   if result else None,
                   "data": data.fingerprints},
        )

    art = writer.write(fill)
    if recovery is not None:
        ckpt.remove()
    return art


def _fingerprint(src: Artifact, teacher_path, techniques, recovery: TrainConfig, data: TextSplits) -> str:
    blob = json.dumps({"src": str(src.path.resolve()), "teacher": str(teacher_path), "t": [asdict(t) for t in techniques],
                       "r": recovery.fingerprint(), "d": data.fingerprints}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
