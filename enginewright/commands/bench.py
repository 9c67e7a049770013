"""latency and throughput of artifacts on runtimes, interleaved

Time every ARTIFACT on its runtimes over a batch x sequence sweep (or real texts at natural lengths with
--natural); runners take turns so drift hits all alike.
"""

from __future__ import annotations

from pathlib import Path

from enginewright.commands._stage import CheckOutcome
from enginewright.commands._args import (CliError, REPORTS_BY_PIPELINE, CsvInts, Percent, PositiveInt, add_data_args, add_report_args, command_inputs,
                                         load_data, provider_options, threads)

NAME = "bench"
STAGE = "check"
NOT_IN_PIPELINE = REPORTS_BY_PIPELINE


def add_arguments(p) -> None:
    p.add_argument("artifacts", type=Path, nargs="+", metavar="ARTIFACT")
    add_data_args(p)
    p.add_argument("--batch", type=CsvInts("--batch"), default=None, metavar="B[,B...]",
                   help="batch sizes (default 1,8; 1,4 for text-generation models)")
    p.add_argument("--seq", type=CsvInts("--seq"), default=(128,), metavar="S[,S...]",
                   help="sequence lengths (default 128); with --natural, the truncation length; for text-generation "
                        "models, the longest prompt in tokens")
    p.add_argument("--natural", action="store_true", help="feed the data's texts at their natural lengths")
    p.add_argument("--iters", type=int, default=None, metavar="N", help="timed iterations per runner and cell")
    p.add_argument("--time", type=float, default=3.0, metavar="S", dest="time_budget",
                   help="timed seconds per runner and cell when --iters is not given (default 3)")
    p.add_argument("--warmup", type=int, default=None, metavar="N",
                   help="warm-up iterations (default 3; generations per batch size for text-generation models: 1)")
    p.add_argument("--rounds", type=int, default=5, metavar="N", help="interleaved rounds per cell (default 5)")
    p.add_argument("--baseline", type=Path, default=None, metavar="REPORT",
                   help="a previous bench report.json: exit 1 when throughput falls more than --max-regression")
    p.add_argument("--max-regression", type=Percent("--max-regression"), default=0.05, metavar="PCT",
                   help="allowed throughput drop (default 5%%)")
    g = p.add_argument_group("text-generation models: TTFT, inter-token latency, decode and prefill tokens/s; "
                             "prompts from --data (real texts) or --prompts")
    g.add_argument("--max-new-tokens", type=PositiveInt("--max-new-tokens"), default=32, metavar="N", help="tokens generated per row, greedy, "
                   "EOS ignored (default 32)")
    g.add_argument("--prompts", default=None, metavar="FILE",
                   help="prompts when --data is not given: one per line (default: the project's chat prompts)")
    g.add_argument("--io-binding", choices=("auto", "on", "off"), default="auto",
                   help="ONNX Runtime: keep the KV cache in OrtValues between steps (IO binding); auto: on GPUs only")
    g.add_argument("--no-hf-generate", dest="hf_generate", action="store_false",
                   help="without the transformers model.generate() row next to a PyTorch reference")
    add_report_args(p, "write each throughput check as a JUnit test case")


def _is_llm(artifact) -> bool:
    from runtimes import load_artifact

    return load_artifact(artifact).task == "text-generation"


def _evaluate_llm(o, artifacts, *, command: str | None, progress: bool):
    from benchmarks.llm_bench import LlmBenchConfig, run_llm_bench
    from evaluation.llm_compare import load_prompts

    if o["natural"] or o["iters"] is not None:
        raise CliError("--natural and --iters apply to the tensor bench; a text-generation bench takes "
                       "--batch, --seq, --rounds, --warmup, --max-new-tokens, --data or --prompts (and --baseline)")
    baseline = _baseline(o, llm=True)
    config = LlmBenchConfig(batches=o["batch"] or (1, 4), max_prompt_tokens=max(o["seq"]),
                            max_new_tokens=o["max_new_tokens"], rounds=o["rounds"],
                            warmup=1 if o["warmup"] is None else o["warmup"], threads=threads(o),
                            io_binding={"auto": None, "on": True, "off": False}[o["io_binding"]], hf_generate=o["hf_generate"])
    data = load_data(o) if o["data"] is not None else None
    prompts = load_prompts(o["prompts"], limit=o["limit"]) if data is None else None  # --limit counts prompts too
    report = run_llm_bench(artifacts, data, prompts=prompts, runtimes=o["runtimes"], config=config, command=command,
                           progress=progress)
    return report, _regressions(report, baseline, o)


def _baseline(o, *, llm: bool):
    """The ``--baseline`` report, loaded and its kind checked before any timing (None without one)."""
    if o["baseline"] is None:
        return None
    from benchmarks.gates import is_llm_bench, load_baseline

    baseline = load_baseline(o["baseline"])
    if is_llm_bench(baseline) != llm:
        kinds = {True: "an LLM (text-generation) bench", False: "a tensor bench"}
        raise CliError(f"--baseline {o['baseline']}: {kinds[not llm]} report, and these artifacts take {kinds[llm]}; "
                       "pass a baseline of the same kind")
    return baseline


def _regressions(report, baseline, o):
    if baseline is None:
        return None
    from benchmarks.gates import regression_checks

    return regression_checks(report, baseline, o["max_regression"])


def markdown(report: dict) -> str:
    if report.get("kind") == "llm":
        from benchmarks.llm_bench import llm_bench_markdown

        return llm_bench_markdown(report)
    from benchmarks.throughput import bench_markdown

    return bench_markdown(report)


def evaluate(o, artifacts, *, command: str | None, progress: bool):
    """Time the artifacts; returns ``(report, checks)``, checks against ``--baseline`` (None without one)."""
    from benchmarks.throughput import BenchConfig, run_bench

    if _is_llm(artifacts[0]):
        return _evaluate_llm(o, artifacts, command=command, progress=progress)
    baseline = _baseline(o, llm=False)
    config = BenchConfig(batches=o["batch"] or (1, 8), seqs=o["seq"], warmup=3 if o["warmup"] is None else o["warmup"], iters=o["iters"],
                         time_budget=o["time_budget"], rounds=o["rounds"], threads=threads(o), natural=o["natural"],
                         provider_options=provider_options(o["provider_option"]), trust_engine_code=o["trust_engine_code"])
    report = run_bench(artifacts, load_data(o), runtimes=o["runtimes"], config=config, command=command, progress=progress)
    return report, _regressions(report, baseline, o)


def stage(o, reference, candidates, *, progress: bool, say) -> CheckOutcome:
    """The pipeline's bench stage: the reference and the candidates side by side, gated on the baseline."""
    from benchmarks.gates import summary

    report, checks = evaluate(o, [reference, *candidates], command=None, progress=progress)
    md = markdown(report)
    say(md)
    failed = None
    if checks is not None:
        say(f"throughput against {o['baseline']}: {summary(checks)}")
        if not all(c.passed for c in checks):
            failed = f"bench against {o['baseline']}: " + " | ".join(x.strip() for x in summary(checks).splitlines())
    return CheckOutcome(report, checks or [], failed, md)


def run(args, command: str) -> int:
    from evaluation.report import write_report
    from runtimes.outputs import claim_output

    if args.output is not None:
        claim_output(args.output, args.force, command_inputs(vars(args)))  # locked until written
    report, checks = evaluate(vars(args), args.artifacts, command=command, progress=not args.quiet)
    md = markdown(report)
    print(md)
    if args.output is not None:
        write_report(args.output, report, md, force=args.force)
        print(f"report: {args.output / 'report.md'}")
    if checks is None:
        return 0
    from benchmarks.gates import summary, write_junit

    if args.junit is not None:
        write_junit(args.junit, checks, "bench")
    print(f"throughput against {args.baseline}: {summary(checks)}")
    for c in checks:
        if c.skipped:
            print(f"  skipped {c.name}: {c.message}")
    return 0 if all(c.passed for c in checks) else 1
