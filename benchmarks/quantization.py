"""INT8 benchmark: the project's quantization recipes against PyTorch and Optimum's, in one run.

    python -m benchmarks.quantization --data-dir ../shared/data -o runs/quantization

Part 1, all-MiniLM-L6-v2 embeddings: PyTorch eager FP32 (pinned as in ``bench``) is the baseline;
FP32 ONNX, the fused graph, the project's INT8 artifacts (among them ``quantize``'s default recipe
and ``quantize --select``), a hand-written ``quantize_dynamic`` recipe (the peer every artifact of
ours must beat at equal cosine) and Optimum's INT8 recipes are timed at batch 8, sequence 128,
interleaved; accuracy is the mean cosine of masked-mean-pooled embeddings
against PyTorch on real sentences. Part 2, a classifier fine-tuned on the quotes-topics data:
test accuracy and agreement with FP32 of every INT8 variant (PTQ, and QAT where given).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from evaluation.data import TextDataset, feeds_for, load_texts, load_tokenizer, tokenize
from evaluation.machine import describe_machine, machine_line
from evaluation.metrics import accuracy_with_ci, sign_test
from evaluation.parity import masked_mean_pool, mean_row_cosine
from evaluation.report import fmt, md_table, report_header, write_report
from runtimes import load_artifact, open_runner
from runtimes.tasks import get_task

_TEXT = get_task("text-classification")

OPTIMUM_RECIPES = {
    "optimum avx2 dynamic": dict(config="avx2", per_channel=False),
    "optimum avx2 dynamic per-channel": dict(config="avx2", per_channel=True),
    "optimum avx512_vnni dynamic": dict(config="avx512_vnni", per_channel=False),
    "optimum avx512_vnni dynamic per-channel": dict(config="avx512_vnni", per_channel=True),
}


def outputs(path, data: TextDataset, tokenizer, max_length: int, batch_size: int = 16) -> list[np.ndarray]:
    """First output of every batch, pooled per sample (masked mean for token-level outputs)."""
    art = load_artifact(path)
    with open_runner(art) as r:
        first = r.output_specs()[0].name
        res = []
        for b in data.batches(batch_size):
            enc = tokenize(tokenizer, b, max_length=max_length)
            res.append(masked_mean_pool(r.infer(feeds_for(enc, r.input_specs(), r.label))[first], _TEXT.mask(enc)))
    return res


PEER = "hand-written quantize_dynamic (peer)"


def _companions(onnx_dir: Path, out: Path) -> None:
    out.mkdir(parents=True)
    for f in onnx_dir.iterdir():
        if f.suffix in (".json", ".txt") and f.name != "manifest.json":
            shutil.copy2(f, out / f.name)


def peer_quantize(onnx_dir: Path, out: Path) -> Path:
    """The ten-line recipe of issue 14: ``quantize_dynamic`` on the unfused export, MatMul only,
    restricted to MatMuls with a constant weight, QInt8 per-channel weights, no reduce_range."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    nodes = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    _companions(onnx_dir, out)
    quantize_dynamic(str(onnx_dir / "model.onnx"), str(out / "model.onnx"), op_types_to_quantize=["MatMul"],
                     per_channel=True, weight_type=QuantType.QInt8, reduce_range=False, nodes_to_quantize=nodes)
    return out


def optimum_quantize(onnx_dir: Path, out: Path, config: str, per_channel: bool) -> Path:
    """Optimum's ORTQuantizer with one of its AutoQuantizationConfig presets (dynamic)."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    qconfig = getattr(AutoQuantizationConfig, config)(is_static=False, per_channel=per_channel)
    tmp = Path(tempfile.mkdtemp(prefix="ew-optimum-"))
    ORTQuantizer.from_pretrained(str(onnx_dir), file_name="model.onnx").quantize(qconfig, save_dir=tmp)
    _companions(onnx_dir, out)
    shutil.move(str(tmp / "model_quantized.onnx"), out / "model.onnx")
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def part_embeddings(args, work: Path, model_dir: Path, sentences: TextDataset, calib: TextDataset) -> dict:
    from benchmarks.throughput import BenchConfig, run_bench
    from exporter import export_hf
    from exporter.optimize import optimize
    from exporter.quantize import QuantizeConfig, quantize

    onnx_dir = export_hf(model_dir, work / "onnx", progress=False).path
    fused = optimize(onnx_dir, work / "fused", target="cpu", progress=False).path
    variants = {"ONNX FP32": onnx_dir, "ONNX FP32 fused": fused}
    ours = {
        "INT8 default recipe: quantize with no options (ours)": (onnx_dir, QuantizeConfig()),
        "INT8 quantize --select (ours)": (onnx_dir, QuantizeConfig(select=True, select_rounds=args.select_rounds,
                                                                   select_seconds=args.select_seconds)),
        "INT8 dynamic, all MatMuls, per-channel (ours)": (
            onnx_dir, QuantizeConfig(mode="dynamic", per_channel=True, weight_only=False)),
        "INT8 dynamic, fused (QAttention), per-channel (ours)": (fused, QuantizeConfig(mode="dynamic", per_channel=True)),
        "INT8 dynamic, fused (QAttention), per-channel, smoothed (ours)": (
            fused, QuantizeConfig(mode="dynamic", per_channel=True, smooth=True)),
        "INT8 dynamic, per-tensor, searched (ours)": (
            onnx_dir, QuantizeConfig(mode="dynamic", per_channel=False, max_cosine_loss=args.max_cosine_loss, max_float_nodes=12)),
        "INT8 static QDQ, per-channel, searched (ours)": (
            onnx_dir, QuantizeConfig(mode="static", per_channel=True, max_cosine_loss=args.max_cosine_loss, max_float_nodes=16)),
        "INT8 QDQ --target tensorrt, searched (ours)": (
            onnx_dir, QuantizeConfig(mode="static", target="tensorrt", max_cosine_loss=args.max_cosine_loss, max_float_nodes=24)),
    }
    notes, selected = {}, {}
    for i, (name, (src, cfg)) in enumerate(ours.items()):
        try:
            art = quantize(src, work / f"ours{i}", config=cfg, calib=calib)
            variants[name] = art.path
            if cfg.select:
                selected[name] = art.manifest["quantization"]["selection"]["chosen"]
        except Exception as e:  # a recipe that misses its target is a result, not a crash
            notes[name] = f"{type(e).__name__}: {e}"
    variants[PEER] = peer_quantize(onnx_dir, work / "peer")
    for i, (name, r) in enumerate(OPTIMUM_RECIPES.items()):
        variants[name] = optimum_quantize(onnx_dir, work / f"optimum{i}", r["config"], r["per_channel"])

    tok = load_tokenizer(model_dir)
    ref = np.concatenate(outputs(model_dir, sentences, tok, args.max_length))
    cos = {name: mean_row_cosine(ref, np.concatenate(outputs(p, sentences, tok, args.max_length))) for name, p in variants.items()}
    bench = run_bench([model_dir, *variants.values()], sentences,
                      config=BenchConfig(batches=(8,), seqs=(128,), time_budget=args.bench_time, rounds=args.rounds))
    by_path = {r["artifact"]: r for r in bench["results"]}
    base = by_path[str(model_dir)]
    rows = [{"variant": "PyTorch eager FP32 (baseline)", "p50_ms": base["p50_ms"], "samples_per_s": base["samples_per_s"],
             "speedup": 1.0, "cosine": 1.0}]
    for name, p in variants.items():
        r = by_path[str(p)]
        rows.append({"variant": name, "p50_ms": r["p50_ms"], "samples_per_s": r["samples_per_s"],
                     "speedup": r["speedup_vs_baseline"], "cosine": cos[name], "by_round": r["samples_per_s_by_round"]})
    h2h = {"peer": head_to_head(rows, peer=PEER), "optimum": head_to_head(rows, peer="optimum")}
    duels = {k: duel(h2h[k], variants, sentences, args) for k in ("peer", "optimum") if k == "peer" or args.duel_optimum}
    return {"rows": rows, "notes": notes, "selected": selected, "bench": bench, "head_to_head": h2h, "duel": duels}


def head_to_head(rows: list[dict], min_cosine: float = 0.99, peer: str = "optimum") -> dict | None:
    """The peers' best recipe (rows whose name starts with ``peer``: the fastest that reaches
    ``min_cosine``, or the fastest of all when none does) against our fastest artifact at equal or
    better cosine, paired by round: both ran in every round of the interleaved timing, so the
    per-round throughput ratio cancels slow drifts of the machine, and its spread shows how far the
    verdict can be trusted."""
    opt = [r for r in rows if r["variant"].startswith(peer)]
    if not opt:
        return None
    good = [r for r in opt if r["cosine"] >= min_cosine]
    best_opt = max(good or opt, key=lambda r: r["samples_per_s"])
    ours = [r for r in rows if "(ours)" in r["variant"] and r["cosine"] >= best_opt["cosine"]]
    if not ours:
        return {"peer": best_opt["variant"], "ours": None, "verdict": "no artifact of ours reaches the peer's cosine"}
    best = max(ours, key=lambda r: r["samples_per_s"])
    return {"peer": best_opt["variant"], "peer_cosine": best_opt["cosine"], "ours": best["variant"],
            "ours_cosine": best["cosine"], **paired_verdict(best["by_round"], best_opt["by_round"]),
            "ratio": best["samples_per_s"] / best_opt["samples_per_s"]}


def paired_verdict(ours: list[float], peer: list[float]) -> dict:
    """Per-round throughput ratios of two artifacts timed in the same interleaved rounds, and a
    one-sided sign test each way: how likely this many rounds ahead (or behind) would be from a coin
    toss. "ahead" or "behind" at p < 0.05, else "not separable"."""
    ratios = [a / b for a, b in zip(ours, peer)]
    ahead, n = sum(x > 1 for x in ratios), len(ratios)
    p_ahead, p_behind = sign_test(ahead, n), sign_test(n - ahead, n)
    verdict = "ahead" if p_ahead < 0.05 else "behind" if p_behind < 0.05 else "not separable"
    return {"ratio": float(np.mean(ours[:n]) / np.mean(peer[:n])), "round_ratios": ratios,
            "round_ratio_median": float(np.median(ratios)), "rounds_ahead": ahead, "rounds": n,
            "sign_test_p_ahead": p_ahead, "sign_test_p_behind": p_behind, "verdict": verdict}


def _verdict_text(v: dict, median: bool = False) -> str:
    """A ``paired_verdict`` in words, for the report."""
    spread = f"per round {min(v['round_ratios']):.3f} to {max(v['round_ratios']):.3f}"
    if median:
        spread += f" (median {v['round_ratio_median']:.3f})"
    return (f"throughput ratio {v['ratio']:.3f}, {spread}, ahead in {v['rounds_ahead']} of {v['rounds']} rounds "
            f"(sign test p = {v['sign_test_p_ahead']:.3f}): {v['verdict']}")


def duel(h2h: dict | None, paths: dict[str, Path], sentences: TextDataset, args) -> dict | None:
    """The head to head's two artifacts again, alone, in ``args.duel_rounds`` interleaved rounds:
    more rounds than the full table affords, so a lead of a few percent can separate from noise."""
    from benchmarks.throughput import BenchConfig, run_bench

    if not h2h or not h2h.get("ours") or args.duel_rounds < 1:
        return None
    a, b = paths[h2h["ours"]], paths[h2h["peer"]]
    bench = run_bench([a, b], sentences, config=BenchConfig(batches=(8,), seqs=(128,), time_budget=args.duel_time,
                                                             rounds=args.duel_rounds))
    by_path = {r["artifact"]: r for r in bench["results"]}
    return {"ours": h2h["ours"], "peer": h2h["peer"], "time_budget_s": args.duel_time,
            **paired_verdict(by_path[str(a)]["samples_per_s_by_round"], by_path[str(b)]["samples_per_s_by_round"])}


def part_classifier(args, work: Path, model_dir: Path, train: Path, test: Path, calib: TextDataset) -> dict:
    from exporter import export_hf
    from exporter.quantize import QuantizeConfig, quantize

    clf = args.classifier
    if clf is None:
        from benchmarks.compression import split_train
        from exporter.finetune import finetune
        from exporter.training import TrainConfig

        tr, va = split_train(train, work, 0.1, args.seed)
        clf = finetune(model_dir, work / "classifier", train_data=tr, eval_data=va,
                       config=TrainConfig(epochs=args.epochs, lr=1e-4, max_length=64, seed=args.seed)).path
    clf_art = load_artifact(clf)
    test_ds = load_texts(test)
    labels = clf_art.manifest.get("labels") or [v for _, v in sorted(
        (int(k), v) for k, v in __import__("json").loads((clf_art.path / "config.json").read_text())["id2label"].items())]
    fp32 = export_hf(clf, work / "clf-onnx", progress=False).path
    variants = {"ONNX FP32": fp32}
    for name, cfg in {
        "INT8 dynamic, per-channel (PTQ)": QuantizeConfig(mode="dynamic", per_channel=True),
        "INT8 QDQ --target tensorrt, searched (PTQ)": QuantizeConfig(mode="static", target="tensorrt",
                                                                     max_cosine_loss=args.clf_max_cosine_loss, max_float_nodes=24),
    }.items():
        variants[name] = quantize(fp32, work / f"clf-{len(variants)}", config=cfg, calib=calib).path
    kept: dict[str, str] = {}  # QAT: the state the fine-tune kept (selected by eval-split agreement)
    if args.qat is not None:
        variants["INT8 QDQ (QAT)"] = Path(args.qat)
    elif not args.skip_qat:
        from benchmarks.compression import split_train
        from exporter.compress import DistillConfig, QATConfig, compress
        from exporter.training import TrainConfig

        tr, va = split_train(train, work, 0.1, args.seed)
        # the float model's logits are the only target (alpha 1), at a low learning rate and without
        # dropout (QATConfig's default), so that the fine-tune corrects the rounding instead of drifting
        fa = args.qat_float_attention
        runs = {"INT8 QDQ (QAT)": False,
                **({f"INT8 QDQ (QAT, attention MatMuls too, {fa} kept float)": True} if args.qat_attention else {})}
        for i, (name, attention) in enumerate(runs.items()):
            qat = compress(clf, work / f"qat{i}", [QATConfig(float_layers=args.qat_float_layers, attention=attention,
                                                             float_attention=fa if attention else 0),
                                                   DistillConfig(temperature=1.0, alpha=1.0)],
                           train_data=tr, eval_data=va,
                           recovery=TrainConfig(epochs=args.qat_epochs, lr=args.qat_lr, max_length=64, seed=args.seed, patience=None))
            t = qat.manifest["training"]
            kept[name] = "before training" if t["best_epoch"] == 0 else f"epoch {t['best_epoch']}"
            variants[name] = export_hf(qat.path, work / f"qat{i}-onnx", progress=False).path
    tok = load_tokenizer(clf)
    gold = np.array([labels.index(str(x)) for x in test_ds.labels])
    preds = {n: np.concatenate(outputs(p, test_ds, tok, 64)).argmax(-1) for n, p in variants.items()}
    rows = []
    for name, pred in preds.items():
        acc = accuracy_with_ci(pred, gold)
        rows.append({"variant": name + (f" [kept: {kept[name]}]" if name in kept else ""), **acc,
                     "agreement_with_fp32": float((pred == preds["ONNX FP32"]).mean()),
                     "delta_points": 100 * (acc["accuracy"] - accuracy_with_ci(preds["ONNX FP32"], gold)["accuracy"])})
    return {"rows": rows, "classifier": str(clf)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.quantization", description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    ap.add_argument("--model", type=Path, default=None, help="default: the packaged all-MiniLM-L6-v2")
    ap.add_argument("--classifier", type=Path, default=None, help="a fine-tuned classifier (default: fine-tune one)")
    ap.add_argument("--qat", type=Path, default=None, help="a QAT ONNX artifact of the classifier to score beside PTQ")
    ap.add_argument("--epochs", type=int, default=4, help="classifier fine-tuning epochs (as in benchmarks.compression)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--max-cosine-loss", type=float, default=0.01, help="embedding search target (pooled cosine loss)")
    ap.add_argument("--clf-max-cosine-loss", type=float, default=0.002, help="classifier search target (logit cosine loss)")
    ap.add_argument("--qat-epochs", type=int, default=2)
    ap.add_argument("--qat-float-layers", type=int, default=2, help="QAT: the costliest layers kept in float")
    ap.add_argument("--qat-lr", type=float, default=5e-6, help="QAT fine-tune learning rate")
    ap.add_argument("--qat-attention", action="store_true", help="add a QAT row that also quantizes the attention MatMuls")
    ap.add_argument("--qat-float-attention", type=int, default=2,
                    help="with --qat-attention: the costliest attention MatMuls kept in float")
    ap.add_argument("--skip-qat", action="store_true")
    ap.add_argument("--skip-embeddings", action="store_true")
    ap.add_argument("--sentences", type=int, default=256, help="test sentences for the embedding cosine")
    ap.add_argument("--bench-time", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=12, help="interleaved timing rounds (paired for the head to head)")
    ap.add_argument("--duel-rounds", type=int, default=40,
                    help="rounds of the head to head's two artifacts timed again alone (0: skip)")
    ap.add_argument("--duel-time", type=float, default=40.0, help="seconds of timed work per artifact in the duel")
    ap.add_argument("--duel-optimum", action="store_true", help="also duel our best against Optimum's (the peer duel always runs)")
    ap.add_argument("--select-rounds", type=int, default=5, help="quantize --select's own timing rounds")
    ap.add_argument("--select-seconds", type=float, default=1.0, help="quantize --select's seconds per candidate and round")
    ap.add_argument("--skip-classifier", action="store_true")
    ap.add_argument("-o", "--output", type=Path, default=Path("runs/quantization"))
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    # checked here, not minutes later when the timing starts
    for ok, problem in ((args.rounds >= 1, "--rounds must be >= 1"), (args.duel_rounds >= 0, "--duel-rounds must be >= 0"),
                        (args.duel_time > 0, "--duel-time must be positive"),
                        (args.bench_time > 0, "--bench-time must be positive")):
        if not ok:
            ap.error(problem)

    from benchmarks.compression import prepare_run

    train, test, model_dir = prepare_run(args)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="ew-quantization-"))
    calib = load_texts(train, limit=256)
    sentences = load_texts(test, limit=args.sentences)
    emb = {"rows": [], "notes": {}} if args.skip_embeddings else part_embeddings(args, work, Path(model_dir), sentences, calib)
    clf = None if args.skip_classifier else part_classifier(args, work, Path(model_dir), train, test, calib)

    report = report_header("quantization-benchmark", " ".join(["python -m benchmarks.quantization", *(argv or sys.argv[1:])]),
                           describe_machine())
    report.update({"settings": {k: str(v) for k, v in vars(args).items()}, "embeddings": emb, "classifier": clf,
                   "seconds": time.perf_counter() - t0})
    lines = ["# INT8 benchmark", "", f"- machine: {machine_line(report['machine'])}",
             f"- instruction set: **{report['machine']['instruction_set']}** (VNNI decides how fast INT8 products run)",
             f"- embeddings: all-MiniLM-L6-v2, batch 8, sequence 128, interleaved; cosine = mean cosine of masked-mean-pooled "
             f"embeddings against PyTorch FP32 on {len(sentences)} test sentences; calibration: {len(calib)} training rows", "",
             md_table(["artifact", "p50 ms", "samples/s", "speedup vs PyTorch", "mean pooled cosine"],
                      [[r["variant"], fmt(r["p50_ms"]), fmt(r["samples_per_s"]), f"{r['speedup']:.2f}x", f"{r['cosine']:.4f}"]
                       for r in emb["rows"]])]
    for name, note in emb["notes"].items():
        lines.append(f"\n- {name}: not produced ({note})")
    for name, chosen in emb.get("selected", {}).items():
        lines.append(f"\n- {name} chose: {chosen}")
    for key, who in (("peer", "the hand-written recipe"), ("optimum", "Optimum")):
        h2h = (emb.get("head_to_head") or {}).get(key)
        if h2h and h2h.get("ours"):
            lines += ["", f"- head to head with {who}: {h2h['ours']} (cosine {h2h['ours_cosine']:.4f}) against {h2h['peer']} "
                          f"(cosine {h2h['peer_cosine']:.4f}): {_verdict_text(h2h)}"]
        elif h2h:
            lines += ["", f"- head to head with {who}: {h2h['verdict']}"]
        d = (emb.get("duel") or {}).get(key)
        if d:
            lines += [f"- duel (the same two alone, {d['rounds']} interleaved rounds, {d['time_budget_s']:.0f} s each): "
                      f"{_verdict_text(d, median=True)}"]
    if clf:
        lines += ["", "## Classifier (quotes-topics, 448 test rows)", "",
                  md_table(["artifact", "test accuracy [95% CI]", "vs FP32 (points)", "agreement with FP32"],
                           [[r["variant"], f"{r['accuracy']:.4f} [{r['ci_low']:.4f}, {r['ci_high']:.4f}]",
                             f"{r['delta_points']:+.2f}", f"{r['agreement_with_fp32']:.4f}"] for r in clf["rows"]])]
    lines += ["", f"total time {report['seconds']:.0f} s", ""]
    md = "\n".join(lines)
    print(md)
    write_report(args.output, report, md, force=args.force)
    print(f"report: {args.output / 'report.md'}")
    return 0


if __name__ == "__main__":
    from benchmarks.compression import run_main

    raise SystemExit(run_main(main, sys.argv[1:]))
