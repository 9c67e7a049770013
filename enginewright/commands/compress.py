"""prune, distil or 2:4-sparsify a fine-tuned classifier; drop layers of, prune the FFN of and distil a causal LM

Apply the techniques given (in this order: layer drop, pruning, 2:4 sparsity), then recover with a short
fine-tune, or distillation with --distill. A causal LM (text-generation) takes --student-layers,
--prune-ffn (the same width from every layer's MLP, by importance on --train) and --distill on plain
texts (--train/--eval with a 'text' column): token-level KL from the teacher's next-token
distributions, perplexity before and after in the manifest.
"""

from __future__ import annotations

from pathlib import Path

from enginewright.commands._args import SET_BY_PIPELINE, CliError, add_train_args, print_eval, train_config

NAME = "compress"
STAGE = "artifact"
NOT_IN_PIPELINE = {**SET_BY_PIPELINE, "resume": "the pipeline reruns a stage whole"}
_QAT_ONLY = ("qat_percentile", "qat_float_layers", "qat_dropout", "qat_attention", "qat_float_attention")


def add_arguments(p) -> None:
    p.add_argument("artifact", type=Path, metavar="ARTIFACT", help="a fine-tuned classifier (enginewright finetune output) or a causal LM directory")
    g = p.add_argument_group("techniques")
    g.add_argument("--prune-heads", type=float, default=None, metavar="F", help="fraction of attention heads to remove")
    g.add_argument("--prune-ffn", type=float, default=None, metavar="F", help="fraction of FFN neurons to remove (every layer)")
    g.add_argument("--flop-target", type=float, default=None, metavar="F",
                   help="fraction of encoder FLOPs (seq 128) to remove, split equally over heads and FFN")
    g.add_argument("--importance", choices=("gradient", "random"), default="gradient",
                   help="rank heads and neurons by gradient importance on --train (default) or at random (--seed)")
    g.add_argument("--student-layers", type=int, default=None, metavar="N", help="keep N evenly spaced encoder (or decoder) layers, the last always")
    g.add_argument("--sparse-2-4", action="store_true", help="2:4 semi-structured sparsity of the encoder's Linear weights")
    g.add_argument("--qat", action="store_true",
                   help="quantization-aware training (INT8 fake quantization of the encoder's Linear layers); "
                        "export then writes Q/DQ pairs in the --target tensorrt placement")
    g.add_argument("--qat-percentile", type=float, default=None, metavar="P",
                   help="with --qat: activation scales from the P-th percentile of |x| (e.g. 99.99) instead of the maximum")
    g.add_argument("--qat-float-layers", type=int, default=None, metavar="N",
                   help="with --qat: keep the N layers whose quantization alone moves the logits most (on calibration "
                        "batches) in float (default 0)")
    g.add_argument("--qat-dropout", action="store_true",
                   help="with --qat: keep dropout on during the QAT fine-tune (off by default)")
    g.add_argument("--qat-attention", action="store_true",
                   help="with --qat: fake-quantize the attention's activation x activation MatMuls too (Q.K^T, P.V)")
    g.add_argument("--qat-float-attention", type=int, default=None, metavar="N",
                   help="with --qat-attention: keep the N attention MatMuls whose quantization alone moves the logits "
                        "most (on calibration batches) in float (default 0)")
    g.add_argument("--distill", action="store_true", help="recover by distillation from the teacher")
    g.add_argument("--teacher", type=Path, default=None, help="teacher model (default: ARTIFACT itself; a causal LM's must have the same tokenizer)")
    g.add_argument("--temperature", type=float, default=2.0)
    g.add_argument("--alpha", type=float, default=0.5, help="weight of the distillation term against cross-entropy (causal LMs: the LM loss)")
    g.add_argument("--hidden-loss", type=float, default=0.0, metavar="W", help="weight of a hidden-state MSE term")
    g.add_argument("--no-recovery", action="store_true", help="skip recovery training")
    add_train_args(p, epochs=2, lr=5e-5)


def check(o) -> None:
    """Raises CliError for a --qat-* option without --qat, or no technique at all (before anything loads)."""
    given = [k for k in _QAT_ONLY if not o["qat"] and o[k] is not None and o[k] is not False]
    if given:
        raise CliError(f"--{given[0].replace('_', '-')} needs --qat")
    if not (o["student_layers"] is not None or o["sparse_2_4"] or o["qat"] or o["distill"]
            or any(o[k] is not None for k in ("prune_heads", "prune_ffn", "flop_target"))):
        raise CliError("compress needs a technique: --prune-heads/--prune-ffn/--flop-target, --student-layers, "
                       "--sparse-2-4, --qat or --distill")


def techniques(o) -> list:
    """The technique configs the options ask for, in the order they apply.

    Raises:
        CliError: see ``check``.
    """
    from exporter.compress import DistillConfig, LayerDropConfig, PruneConfig, QATConfig, Sparse24Config

    check(o)
    found = []
    if o["student_layers"] is not None:
        found.append(LayerDropConfig(o["student_layers"]))
    if any(o[k] is not None for k in ("prune_heads", "prune_ffn", "flop_target")):
        found.append(PruneConfig(heads=o["prune_heads"], ffn=o["prune_ffn"], flop_target=o["flop_target"],
                                 importance=o["importance"], seed=o["seed"]))
    if o["sparse_2_4"]:
        found.append(Sparse24Config())
    if o["qat"]:
        found.append(QATConfig(act_percentile=o["qat_percentile"], float_layers=o["qat_float_layers"] or 0,
                               dropout=o["qat_dropout"], attention=o["qat_attention"],
                               float_attention=o["qat_float_attention"] or 0))
    if o["distill"]:
        found.append(DistillConfig(temperature=o["temperature"], alpha=o["alpha"], hidden_weight=o["hidden_loss"]))
    return found


def make(o, src, out, *, force: bool, command: str, progress: bool):
    from exporter.compress import compress

    return compress(src, out, techniques(o), train_data=o["train"], eval_data=o["eval"],
                    recovery=None if o["no_recovery"] else train_config(o), teacher=o["teacher"], device=o["device"],
                    label_column=o["label_column"], force=force, resume=o["resume"], command=command, progress=progress)


def run(args, command: str) -> int:
    art = make(vars(args), args.artifact, args.output, force=args.force, command=command, progress=not args.quiet)
    m = art.manifest
    if m.get("task") == "text-generation":
        b, d, a = m["before"], m["dropped"], m["after"]
        print(f"perplexity on --eval ({a['tokens_scored']} tokens): teacher {b['perplexity']:.2f}, student before training "
              f"{d['perplexity']:.2f}, after {a['perplexity']:.2f}; KL from the teacher {d['kl_to_teacher']:.4f} -> "
              f"{a['kl_to_teacher']:.4f}; layers {b['layers']} -> {a['layers']}"
              + (f"; FFN width {b['ffn_width']} -> {a['ffn_width']}" if b.get("ffn_width") != a.get("ffn_width") else "")
              + f"; params {b['params']:,} -> {a['params']:,}; artifact: {art.path}")
        return 0
    print_eval(m["after"]["eval"])
    b, a = m["before"], m["after"]
    print(f"params {b['params']:,} -> {a['params']:,}; encoder FLOPs (seq 128) {b['encoder_flops_seq128']:,} -> "
          f"{a['encoder_flops_seq128']:,} ({1 - a['encoder_flops_seq128'] / b['encoder_flops_seq128']:.1%} fewer); "
          f"eval {b['eval']['metric']} {_headline(b['eval']):.4f} -> {_headline(a['eval']):.4f}; artifact: {art.path}")
    t = m.get("training")
    if m.get("qat") and t:
        kept = "the calibrated model before training" if t["best_epoch"] == 0 else f"epoch {t['best_epoch']} of {t['epochs_run']}"
        print(f"QAT: kept {kept}, by agreement with the input model's predictions on --eval ({t['best_metric']:.4f})")
    return 0


def _headline(report: dict) -> float:
    return report["accuracy"] if report["metric"] == "accuracy" else report["entity_micro_f1"]
