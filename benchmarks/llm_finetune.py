"""LoRA instruction tuning of a causal LM on a real task: naming the topic of a quotation.

    python -m benchmarks.llm_finetune --model runs/smol/hf -o runs/llm_finetune --onnx

The defaults (160 training pairs, 1 epoch) keep a run to about half an hour on a shared 2-core CPU.

From the quotes-topics data: training and validation pairs from ``quotes_topics_train.jsonl`` and
held-out test pairs from ``quotes_topics_test.jsonl`` (prompt: the question with the label set and
the quotation; response: the label), written beside the output (never into the repository), only
quotations whose pair fits ``--max-length`` tokens. The model (SmolLM2-135M-Instruct from
``import-gguf``) is fine-tuned with LoRA (every linear layer of its blocks) through ``finetune``'s
library function, and the base and the fine-tuned model answer every test prompt greedily through
the project's generation loop; the score is the exact match of the answer with the label (and, more
lenient, whether the answer names the right label first). With ``--onnx`` the fine-tuned model is
also exported and quantized weight-only (INT8 and INT4) and scored the same way on ONNX Runtime.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from evaluation.machine import describe_machine, machine_line
from evaluation.metrics import accuracy_with_ci
from evaluation.report import fmt, md_table, report_header, write_report

LABELS = ("songs-poems", "men-women", "wisdom", "literature", "drugs", "sports", "love", "kids")
QUESTION = f"Which topic is this quotation about? Answer with one of: {', '.join(LABELS)}.\n\n"


def write_pairs(src: Path, out: Path, n: int, tokenizer, max_length: int, seed: int, skip: int = 0) -> int:
    """``n`` prompt/response pairs of ``src``'s rows (shuffled with ``seed``, the first ``skip``
    passed over) whose prompt and label fit ``max_length`` tokens, as JSONL at ``out``; returns how
    many shuffled rows that took, ``skip`` included.

    Raises:
        UsageError: fewer than ``n`` rows fit.
    """
    from exporter.causal_finetune import encode_pair
    from runtimes.errors import UsageError

    rows = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(seed).shuffle(rows)
    pairs, used = [], skip
    for r in rows[skip:]:
        used += 1
        pair = {"prompt": QUESTION + r["text"].strip(), "response": str(r["label"])}
        head, tail = encode_pair(tokenizer, pair["prompt"], pair["response"])
        if len(head) + len(tail) <= max_length:
            pairs.append(pair)
        if len(pairs) == n:
            break
    if len(pairs) < n:
        raise UsageError(f"{src}: only {len(pairs)} quotations fit --max-length {max_length}; ask for fewer pairs")
    out.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    return used


def greedy_answers(runner, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """The greedy answers of a text-generation runner to ``prompts`` (fed as ``finetune`` trained:
    the chat template's user turn and assistant header), decoded without special tokens, stripped."""
    from evaluation.data import TextDataset
    from exporter.causal_finetune import prompt_text
    from runtimes.generation import GenerationConfig, generate
    from runtimes.tasks import get_task

    task = get_task("text-generation")
    eos = tokenizer.eos_token_id
    gen = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_ids=(eos,) if eos is not None else (),
                           pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    answers = []
    for start in range(0, len(prompts), batch_size):
        batch = TextDataset("prompts", tuple(prompt_text(tokenizer, p) for p in prompts[start:start + batch_size]))
        out = generate(runner, task.encode(tokenizer, batch, max_length=4096), gen)
        answers += [tokenizer.decode(row[:n], skip_special_tokens=True).strip() for row, n in zip(out.tokens, out.lengths)]
    return answers


def first_label(answer: str) -> str | None:
    """The label the answer names first (None: none of them)."""
    low = answer.lower()
    found = [(low.find(lab), lab) for lab in LABELS if lab in low]
    return min(found)[1] if found else None


def score(answers: Sequence[str], gold: Sequence[str]) -> dict:
    exact = np.array([a == g for a, g in zip(answers, gold)])
    named = np.array([first_label(a) == g for a, g in zip(answers, gold)])
    ones = np.ones(len(gold), dtype=bool)
    return {"exact": accuracy_with_ci(exact, ones), "names_label": accuracy_with_ci(named, ones),
            "answers": [{"answer": a, "label": g} for a, g in zip(answers, gold)]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    ap.add_argument("--model", type=Path, required=True, help="a causal-LM directory (enginewright import-gguf ... -o DIR)")
    ap.add_argument("-o", "--output", type=Path, default=Path("runs/llm_finetune"))
    ap.add_argument("--train-pairs", type=int, default=160)
    ap.add_argument("--val-pairs", type=int, default=24, help="validation pairs (early stopping), from the training file")
    ap.add_argument("--test-pairs", type=int, default=60)
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--finetuned", type=Path, default=None, metavar="DIR",
                    help="score this fine-tuned model (an earlier run's finetune output) instead of training one")
    ap.add_argument("--no-base", action="store_true", help="do not score the base model")
    ap.add_argument("--onnx", action="store_true", help="also score the ONNX export and its INT8/INT4 weight-only copies")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    from benchmarks.compression import run_main

    return run_main(lambda _: _main(args, argv), argv)


def _main(args, argv) -> int:
    from runtimes.artifact import check_output_free
    from runtimes.errors import UsageError
    from runtimes.outputs import scratch_dir

    train, test = args.data_dir / "quotes_topics_train.jsonl", args.data_dir / "quotes_topics_test.jsonl"
    for p in (train, test):
        if not p.is_file():
            raise UsageError(f"{p}: not found; pass --data-dir with quotes_topics_train.jsonl and quotes_topics_test.jsonl")
    check_output_free(args.output, args.force)
    with scratch_dir(args.output) as work:  # beside the output, removed at the end (swept if killed)
        return _run(args, argv, train, test, work)


def _run(args, argv, train: Path, test: Path, work: Path) -> int:
    from exporter.finetune import LoraSettings, finetune
    from exporter.training import TrainConfig
    from runtimes import open_runner
    from runtimes.tasks import get_task

    t_start = time.perf_counter()
    tok = get_task("text-generation").load_processor(args.model)
    tr, va, te = work / "train_pairs.jsonl", work / "val_pairs.jsonl", work / "test_pairs.jsonl"
    used = write_pairs(train, tr, args.train_pairs, tok, args.max_length, args.seed)
    write_pairs(train, va, args.val_pairs, tok, args.max_length, args.seed, skip=used)
    write_pairs(test, te, args.test_pairs, tok, args.max_length, args.seed)
    test_rows = [json.loads(line) for line in te.read_text().splitlines()]
    prompts, gold = [r["prompt"] for r in test_rows], [r["response"] for r in test_rows]

    results, timings = {}, {}

    def answer(name: str, path: Path, runtime: str) -> None:
        t = time.perf_counter()
        with open_runner(path, runtime) as runner:
            answers = greedy_answers(runner, tok, prompts, max_new_tokens=args.max_new_tokens)
        timings[name] = time.perf_counter() - t
        results[name] = {"runtime": runtime, **score(answers, gold)}
        print(f"{name}: exact match {results[name]['exact']['accuracy']:.3f} ({timings[name]:.0f} s)", file=sys.stderr)

    if not args.no_base:
        answer("base (PyTorch FP32)", args.model, "torch:cpu")
    if args.finetuned is not None:
        from runtimes.artifact import load_artifact

        ft = load_artifact(args.finetuned)
    else:
        cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, max_length=args.max_length,
                          seed=args.seed, patience=None, checkpoint_every=1000)
        t = time.perf_counter()
        ft = finetune(args.model, work / "finetuned", train_data=tr, eval_data=va, task="text-generation", config=cfg,
                      lora=LoraSettings(r=args.lora_r, alpha=2 * args.lora_r, dropout=0.05), device="cpu")
        timings["finetune"] = time.perf_counter() - t
    answer("LoRA fine-tuned (PyTorch FP32)", ft.path, "torch:cpu")
    if args.onnx:
        from exporter import export_hf
        from exporter.weight_only import WeightOnlyConfig, quantize_weights

        t = time.perf_counter()
        onnx = export_hf(ft.path, work / "onnx", progress=False)
        int8 = quantize_weights(onnx.path, work / "int8", WeightOnlyConfig(bits=8))
        int4 = quantize_weights(onnx.path, work / "int4", WeightOnlyConfig(bits=4))
        timings["export and quantize"] = time.perf_counter() - t
        answer("fine-tuned, ONNX FP32", onnx.path, "onnxruntime:cpu")
        answer("fine-tuned, ONNX INT8 weight-only", int8.path, "onnxruntime:cpu")
        answer("fine-tuned, ONNX INT4 weight-only", int4.path, "onnxruntime:cpu")

    ev = ft.manifest["eval"]
    report = {**report_header("llm_finetune", " ".join(["python -m benchmarks.llm_finetune", *(argv or sys.argv[1:])]),
                              describe_machine()),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "validation": ev, "training": ft.manifest["training"], "results": results, "timings_s": timings}
    rows = [[name, r["runtime"], _ci(r["exact"]), _ci(r["names_label"])] for name, r in results.items()]
    md = "\n".join([
        "# LoRA fine-tuning: the topic of a quotation", "",
        f"- machine: {machine_line(report['machine'])}",
        f"- model: {args.model}" + (f"; fine-tuned: {args.finetuned} (its settings in its manifest)" if args.finetuned else "") + f"; LoRA r={args.lora_r}, alpha={2 * args.lora_r} on every linear layer of the blocks, "
        f"merged; {args.epochs} epochs, batch {args.batch_size}, lr {args.lr:g}, max length {args.max_length}",
        f"- data: {args.train_pairs} training and {args.val_pairs} validation pairs from {train.name}, "
        f"{args.test_pairs} test pairs from {test.name} (pairs that fit the max length)",
        f"- validation loss on {ev['tokens']} response tokens: {fmt(ev['before']['loss'])} -> {fmt(ev['after']['loss'])}, "
        f"perplexity {fmt(ev['before']['perplexity'])} -> {fmt(ev['after']['perplexity'])} (kept epoch {ev['best_epoch']})",
        f"- greedy, at most {args.max_new_tokens} new tokens, chat template; bootstrap 95% intervals", "",
        md_table(["model", "runtime", "exact match [95% CI]", "names the label first [95% CI]"], rows), "",
        "time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + f"; total {time.perf_counter() - t_start:.0f} s", ""])
    print(md)
    write_report(args.output, report, md, force=args.force)
    print(f"report: {args.output / 'report.md'}")
    return 0


def _ci(acc: dict) -> str:
    return f"{acc['accuracy']:.3f} [{acc['ci_low']:.3f}, {acc['ci_high']:.3f}]"


if __name__ == "__main__":
    sys.exit(main())
