"""fine-tune a Hugging Face encoder on labelled data

Fine-tune MODEL_DIR for a classification task with AdamW, warm-up and decay, early stopping on --eval, and
checkpoints to resume; writes an artifact that export takes as is, with a per-class evaluation report in its
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
    add_train_args(p, epochs=3, lr=5e-5)


def make(o, src, out, *, force: bool, command: str, progress: bool):
    from exporter.finetune import LoraSettings, finetune

    lora = LoraSettings(r=o["lora_r"], alpha=o["lora_alpha"]) if o["lora"] else None
    return finetune(src, out, train_data=o["train"], eval_data=o["eval"], task=o["task"], config=train_config(o),
                    lora=lora, device=o["device"], label_column=o["label_column"], force=force, resume=o["resume"],
                    command=command, progress=progress)


def run(args, command: str) -> int:
    art = make(vars(args), args.model_dir, args.output, force=args.force, command=command, progress=not args.quiet)
    print_eval(art.manifest["eval"])
    t = art.manifest["training"]
    print(f"best epoch {t['best_epoch']} of {t['epochs_run']}{' (stopped early)' if t['stopped_early'] else ''}; "
          f"artifact: {art.path}")
    return 0
