"""fine-tune a Hugging Face model on labelled data or prompt/response pairs

Fine-tune MODEL_DIR for a classification task, or a causal LM on JSONL prompt/response pairs (--task
text-generation: loss on the response tokens, the chat template when the tokenizer has one), with AdamW,
warm-up and decay, early stopping on --eval, and checkpoints to resume; writes an artifact that export takes
as is, with the evaluation report (per class, or validation loss and perplexity before and after) in its
manifest.
"""

from __future__ import annotations

from pathlib import Path

from enginewright.commands._args import SET_BY_PIPELINE, add_train_args, print_eval, train_config

NAME = "finetune"
STAGE = "artifact"
NOT_IN_PIPELINE = {**SET_BY_PIPELINE, "resume": "the pipeline reruns a stage whole"}


def add_arguments(p) -> None:
    from runtimes.tasks import task_names

    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR")
    p.add_argument("--task", choices=task_names(trainable=True), default="text-classification")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (peft) and merge them into the weights")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lora-targets", default=None, metavar="NAMES",
                   help="comma-separated module names to adapt (default: query,value for encoders; every linear "
                        "layer but the output head for text-generation)")
    add_train_args(p, epochs=3, lr=5e-5)


def make(o, src, out, *, force: bool, command: str, progress: bool):
    from exporter.finetune import LoraSettings, finetune

    targets = tuple(x.strip() for x in (o["lora_targets"] or "").split(",") if x.strip()) or None
    lora = LoraSettings(r=o["lora_r"], alpha=o["lora_alpha"], target_modules=targets) if o["lora"] else None
    return finetune(src, out, train_data=o["train"], eval_data=o["eval"], task=o["task"], config=train_config(o),
                    lora=lora, device=o["device"], label_column=o["label_column"], force=force, resume=o["resume"],
                    command=command, progress=progress)


def run(args, command: str) -> int:
    art = make(vars(args), args.model_dir, args.output, force=args.force, command=command, progress=not args.quiet)
    if art.manifest["eval"]["metric"] == "perplexity":
        from exporter.causal_finetune import format_eval

        print(format_eval(art.manifest["eval"]))
    else:
        print_eval(art.manifest["eval"])
    t = art.manifest["training"]
    print(f"best epoch {t['best_epoch']} of {t['epochs_run']}{' (stopped early)' if t['stopped_early'] else ''}; "
          f"artifact: {art.path}")
    return 0
