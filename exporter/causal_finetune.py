"""``finetune --task text-generation``: instruction tuning of a causal LM on prompt/response pairs.

Each JSONL row's ``prompt`` and ``response`` become one sequence: the prompt in the model's chat
template (a user turn and the assistant header) when its tokenizer has one, else as it is; then the
response (the rest of the template's assistant turn, or the response and EOS). The prompt is
tokenized exactly as generation will tokenize it (``GenerationTask.encode``), so the model learns to
continue what it will be fed. Loss is on the response tokens only: the prompt's labels are -100.

Training is the project's one loop (``exporter.training.train``) with a token-mean loss; the model
is evaluated before training (epoch 0, which later epochs must beat) and after each epoch, on the
mean negative log-likelihood of the eval responses. LoRA adapters are merged into the weights
before saving, so the output is a plain causal-LM directory that ``export`` takes.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from exporter.training import Encoded, TrainConfig, train
from runtimes.errors import UsageError

TASK = "text-generation"
IGNORE = -100
FIELDS = ("prompt", "response")


@dataclass(frozen=True)
class Pairs:
    """Prompt/response pairs read from one file."""

    source: str
    prompts: tuple[str, ...]
    responses: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.prompts)

    def describe(self) -> dict:
        import hashlib
        import json

        blob = json.dumps([self.prompts, self.responses]).encode()
        return {"source": self.source, "rows": len(self), "hash": hashlib.sha256(blob).hexdigest()[:16]}


def load_pairs(path: str | Path) -> Pairs:
    """The ``prompt``/``response`` rows of a JSONL file.

    Raises:
        UsageError: the file is missing, not UTF-8 text, not JSONL, empty, or a row lacks a field.
    """
    from evaluation.data import numbered_jsonl_rows

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: data file not found; pass a .jsonl file with 'prompt' and 'response' fields")
    if p.suffix.lower() not in (".jsonl", ".json", ".ndjson"):
        raise UsageError(f"{p}: text-generation fine-tuning reads JSONL (one {{\"prompt\": ..., \"response\": ...}} "
                         "object per line)")
    prompts, responses = [], []
    for lineno, row in numbered_jsonl_rows(p, "'prompt' and 'response' fields"):
        for name in FIELDS:
            value = row.get(name)
            if value is None or (isinstance(value, str) and not value.strip()) or isinstance(value, (dict, list)):
                raise UsageError(f"{p}:{lineno}: no {name!r} field (fields: {', '.join(sorted(row)) or 'none'}); "
                                 "every row needs a non-empty 'prompt' and 'response'")
        prompts.append(str(row["prompt"]))
        responses.append(str(row["response"]))
    if not prompts:
        raise UsageError(f"{p}: data file is empty; it needs at least one prompt/response row")
    return Pairs(str(p), tuple(prompts), tuple(responses))


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_text(tokenizer, prompt: str) -> str:
    """What the model is fed to answer ``prompt``: the chat template's user turn and assistant header
    when the tokenizer has a template, else the prompt itself."""
    if not has_chat_template(tokenizer):
        return prompt
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


def response_text(tokenizer, prompt: str, response: str) -> str:
    """What follows ``prompt_text``: the rest of the template's conversation with the assistant's
    answer (its end-of-turn marker included), or the response and the EOS token."""
    if has_chat_template(tokenizer):
        head = prompt_text(tokenizer, prompt)
        full = tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                              {"role": "assistant", "content": response}], tokenize=False)
        if full.startswith(head):
            return full[len(head):]
    return response + (tokenizer.eos_token or "")


def encode_pair(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """``(prompt ids, response ids)``: the prompt with the tokenizer's special tokens (as generation
    encodes it), the response without any added."""
    head = tokenizer(prompt_text(tokenizer, prompt))["input_ids"]
    tail = tokenizer(response_text(tokenizer, prompt, response), add_special_tokens=False)["input_ids"]
    if not has_chat_template(tokenizer) and tokenizer.eos_token_id is not None and (not tail or tail[-1] != tokenizer.eos_token_id):
        tail = tail + [tokenizer.eos_token_id]  # a tokenizer that does not parse its EOS text as the token
    return list(head), list(tail)


def encode_pairs(tokenizer, pairs: Pairs, max_length: int) -> Encoded:
    """Prompt and response ids joined and cut to ``max_length`` tokens; labels are the ids on the
    response and -100 on the prompt.

    Raises:
        UsageError: a row whose response is cut away entirely.
    """
    ids, masks, labels = [], [], []
    cut = 0
    for i, (prompt, response) in enumerate(zip(pairs.prompts, pairs.responses)):
        head, tail = encode_pair(tokenizer, prompt, response)
        if len(head) >= max_length:
            raise UsageError(f"{pairs.source}: row {i + 1}'s prompt takes {len(head)} tokens, so --max-length "
                             f"{max_length} leaves none of its response; raise --max-length or shorten the prompt")
        row = (head + tail)[:max_length]
        cut += len(head) + len(tail) > max_length
        ids.append(row)
        masks.append([1] * len(row))
        labels.append([IGNORE] * len(head) + row[len(head):])
    if cut:
        print(f"warning: {pairs.source}: {cut} of {len(pairs)} responses cut to fit --max-length {max_length}",
              file=sys.stderr)
    return Encoded({"input_ids": ids, "attention_mask": masks}, labels)


def token_nll(logits, labels):
    """``(sum, count)``: the summed negative log-likelihood of every labelled next token (logits at
    position t predict the label at t + 1; -100 labels are not scored) and how many were scored."""
    import torch

    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    total = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                                              shift_labels.reshape(-1), ignore_index=IGNORE, reduction="sum")
    return total, (shift_labels != IGNORE).sum()


def response_loss(model, batch: dict):
    """The mean loss per response token of one batch (``train``'s ``loss_fn``)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    total, count = token_nll(logits, batch["labels"])
    return total / count.clamp(min=1)


def evaluate_lm(model, enc: Encoded, batch_size: int, device: str, pad_id: int) -> dict:
    """Mean loss per response token over ``enc``, its perplexity, and the number of tokens scored."""
    import torch

    from exporter.training import collate

    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(enc), batch_size):
            batch = collate(enc, range(start, min(start + batch_size, len(enc))), pad_id)
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
            s, n = token_nll(logits, batch["labels"].to(device))
            total, count = total + float(s), count + int(n)
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": count}


def finetune_causal(src, writer, *, train_data, eval_data, config: TrainConfig, lora, device: str,
                    resume: bool, force: bool, command: str | None, progress: bool):
    """``finetune``'s text-generation branch (``exporter.finetune.finetune`` opened ``src``, made the
    ``writer`` and chose the device).

    Raises:
        UsageError: not a causal LM, no tokenizer, bad pairs, a response cut away, bad LoRA targets.
    """
    import torch
    import transformers

    from exporter.distributed import refuse_fsdp_with_lora
    from exporter.tuning import TaskData, open_checkpoint, run_fingerprint, with_lora, write_tuned
    from runtimes.artifact import source_record
    from runtimes.manifests import HfManifest
    from runtimes.pyt.loading import as_usage_error, hf_load_errors
    from runtimes.tasks import get_task

    if src.task != TASK:
        raise UsageError(f"{src.path}: --task text-generation needs a causal language model (config.json architectures "
                         f"...ForCausalLM or ...LMHeadModel); this model's task is {src.task or 'unknown'}")
    tokenizer = get_task(TASK).load_processor(src.path)
    train_pairs, eval_pairs = load_pairs(train_data), load_pairs(eval_data)
    data = TaskData(TASK, [], encode_pairs(tokenizer, train_pairs, config.max_length),
                    encode_pairs(tokenizer, eval_pairs, config.max_length),
                    {"train": train_pairs.describe(), "eval": eval_pairs.describe()})

    torch.manual_seed(config.seed)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(src.path), local_files_only=True, trust_remote_code=False, attn_implementation="sdpa",
            dtype=torch.float32)
    except hf_load_errors() as e:
        raise as_usage_error(src.path, e) from None
    refuse_fsdp_with_lora(lora)
    if lora is not None:
        model = with_lora(model, lora, TASK)

    ckpt = open_checkpoint(writer.out, run_fingerprint(config, data, lora, src), resume=resume, force=force)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch_size = min(config.batch_size, config.eval_batch_size)  # the eval logits are [batch, length, vocab]

    def evaluate(m) -> float:
        return -evaluate_lm(m, data.eval, batch_size, device, pad_id)["loss"]

    result = train(model, data.train, config, evaluate=evaluate, loss_fn=response_loss, checkpoint=ckpt,
                   resume=resume, device=device, pad_id=pad_id, desc="finetune", progress=progress, baseline=True, shardable=True)
    report = eval_report(result, data.eval)
    return write_tuned(writer, model, tokenizer, lora, ckpt, lambda: HfManifest(
        task=TASK, source=source_record(src), command=command,
        options={"train": asdict(config), "lora": asdict(lora) if lora else None, "device": device},
        extra={"data": data.fingerprints, "training": result.to_dict(), "eval": report},
    ))


def eval_report(result, eval_enc: Encoded) -> dict:
    """Validation loss and perplexity on the response tokens before training (epoch 0) and of the
    kept epoch, from the training history (so a resumed run reports the same)."""
    history = {h["epoch"]: h["eval_metric"] for h in result.history}
    scored = sum(sum(x != IGNORE for x in row[1:]) for row in eval_enc.labels)

    def side(metric: float) -> dict:
        return {"loss": -metric, "perplexity": math.exp(-metric)}

    return {"metric": "perplexity", "tokens": int(scored), "rows": len(eval_enc),
            "before": side(history[0]), "after": side(result.best_metric), "best_epoch": result.best_epoch}


def format_eval(report: dict) -> str:
    """Two lines for the command's summary."""
    b, a = report["before"], report["after"]
    return (f"validation on {report['tokens']} response tokens of {report['rows']} rows: "
            f"loss {b['loss']:.4f} -> {a['loss']:.4f}, perplexity {b['perplexity']:.2f} -> {a['perplexity']:.2f}")
