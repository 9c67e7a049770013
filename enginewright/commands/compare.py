"""padding-aware parity of candidates against a reference on real texts

Run the same texts through REF and every CANDIDATE; report per-output errors (padded positions excluded),
cosine, top-1 agreement and the task metric when the data has labels. Exit 1 when a check fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from enginewright.commands._stage import CheckOutcome
from enginewright.commands._args import (REPORTS_BY_PIPELINE, CliError, PositiveInt, ValueType, add_data_args, add_report_args,
                                         add_tolerances, command_inputs, load_data, provider_options, threads)

NAME = "compare"
STAGE = "check"
NOT_IN_PIPELINE = REPORTS_BY_PIPELINE


def add_arguments(p) -> None:
    p.add_argument("reference", type=Path, metavar="REF")
    p.add_argument("candidates", type=Path, nargs="+", metavar="CANDIDATE")
    p.add_argument("--ref-on", default=None, metavar="RUNTIME", help="runtime for REF (default: by its kind)")
    add_data_args(p)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    add_tolerances(p)
    p.add_argument("--fail-on", default="parity,accuracy", metavar="CHECKS",
                   help="which checks set exit 1: comma-separated from parity, accuracy, or none (default parity,accuracy)")
    p.add_argument("--max-accuracy-drop", type=float, default=1.0, metavar="POINTS",
                   help="accuracy gate: candidates may trail the reference by this many points (default 1)")
    g = p.add_argument_group("causal LMs (task text-generation): teacher-forced on --data, greedy on --prompts")
    g.add_argument("--prompts", default=None, metavar="FILE",
                   help="prompts to generate from, one per line (default: the project's chat prompts)")
    g.add_argument("--max-new-tokens", type=PositiveInt("--max-new-tokens"), default=16, metavar="M", help="tokens generated per prompt (default 16)")
    g.add_argument("--max-ppl-increase", type=Share("--max-ppl-increase"), default=None, metavar="SHARE",
                   help="gate: relative perplexity increase, e.g. 2%% or 0.02 (default: not checked)")
    g.add_argument("--min-top1-agreement", type=float, default=None, metavar="SHARE",
                   help="gate: teacher-forced top-1 agreement, e.g. 0.99 (default: not checked)")
    g.add_argument("--min-greedy-prefix", type=int, default=None, metavar="TOKENS",
                   help="gate: the shortest greedy prefix shared with REF over the prompts (default: not checked)")
    add_report_args(p, "write each check as a JUnit test case")


class Share(ValueType):
    """A relative amount: ``2%`` or ``0.02``."""

    example = ("2%", 0.02)

    def __call__(self, text: str) -> float:
        from evaluation.llm_compare import parse_share

        try:
            return parse_share(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{self.flag}: {e}") from None


_LLM_OPTIONS = {"prompts": "--prompts", "max_ppl_increase": "--max-ppl-increase",
                "min_top1_agreement": "--min-top1-agreement", "min_greedy_prefix": "--min-greedy-prefix"}


def _evaluate_llm(o, reference, candidates, *, command: str | None):
    from benchmarks.gates import llm_checks
    from evaluation.llm_compare import LlmCompareConfig, load_prompts, run_llm_compare

    config = LlmCompareConfig(batch_size=o["batch_size"], max_length=o["max_length"], max_new_tokens=o["max_new_tokens"],
                              threads=threads(o), max_ppl_increase=o["max_ppl_increase"],
                              min_top1_agreement=o["min_top1_agreement"], min_greedy_prefix=o["min_greedy_prefix"])
    outcome = run_llm_compare(reference, candidates, load_data(o), prompts=load_prompts(o["prompts"]),
                              runtimes=o["runtimes"], ref_runtime=o["ref_on"], config=config, command=command)
    checks = {"parity": llm_checks(outcome.report), "accuracy": []}
    return outcome, checks, [c for kind in sorted(fail_on(o)) for c in checks[kind]]


def fail_on(o) -> set[str]:
    """The check kinds that fail the command. Raises CliError for an unknown one."""
    kinds = {x.strip() for x in o["fail_on"].split(",") if x.strip()}
    if not kinds <= {"parity", "accuracy", "none"} or ("none" in kinds and len(kinds) > 1):
        raise CliError(f"--fail-on {o['fail_on']!r}: give parity, accuracy (comma-separated) or none")
    return kinds - {"none"}


check = fail_on  # what the pipeline checks when it loads the file


def tolerances(o):
    """The default Tolerance and one per output named in ``OUTPUT=X`` values."""
    from evaluation.parity import Tolerance

    fields = {k: o[k] for k in ("atol", "rtol", "min_cosine", "min_top1", "min_pooled_cosine")}
    default = Tolerance(**{k: v for k, items in fields.items() for name, v in items if name is None})
    per_output: dict[str, dict] = {}
    for k, items in fields.items():
        for name, v in items:
            if name is not None:
                per_output.setdefault(name, {})[k] = v
    return default, {n: Tolerance(**{**vars(default), **kw}) for n, kw in per_output.items()}


def evaluate(o, reference, candidates, *, command: str | None, progress: bool):
    """Run the comparison; returns ``(outcome, checks, gated)``: every check by kind
    (``parity``/``accuracy``) and those of the kinds ``--fail-on`` gates."""
    from benchmarks.gates import metric_checks, parity_checks
    from evaluation.compare import CompareConfig, run_compare

    from runtimes import load_artifact

    if load_artifact(reference).task == "text-generation":
        return _evaluate_llm(o, reference, candidates, command=command)
    if given := [flag for dest, flag in _LLM_OPTIONS.items() if o.get(dest) is not None]:
        raise CliError(f"{given[0]} applies to causal LMs (task text-generation); {reference} is not one")
    gated_kinds = fail_on(o)
    default, per_output = tolerances(o)
    config = CompareConfig(batch_size=o["batch_size"], max_length=o["max_length"], threads=threads(o),
                           tolerance=default, per_output=per_output, provider_options=provider_options(o["provider_option"]),
                           trust_engine_code=o["trust_engine_code"])
    outcome = run_compare(reference, candidates, load_data(o), runtimes=o["runtimes"], ref_runtime=o["ref_on"],
                          config=config, command=command, progress=progress)
    checks = {"parity": parity_checks(outcome.report), "accuracy": metric_checks(outcome.report, o["max_accuracy_drop"])}
    gated = [c for kind in sorted(gated_kinds) for c in checks[kind]]
    return outcome, checks, gated


def failure(o, gated) -> str | None:
    """``(KINDS): SUMMARY`` when a gated check failed, else None."""
    from benchmarks.gates import summary

    if all(c.passed for c in gated):
        return None
    return f"({', '.join(sorted(fail_on(o) or {'none'}))}): {summary(gated)}"


def stage(o, reference, candidates, *, progress: bool, say) -> CheckOutcome:
    """The pipeline's compare stage: the report, every check, and the gated failure."""
    outcome, checks, gated = evaluate(o, reference, candidates, command=None, progress=progress)
    md = outcome.markdown()
    say(md)
    failed = failure(o, gated)
    return CheckOutcome(outcome.report, checks["parity"] + checks["accuracy"],
                        "compare failed " + " | ".join(x.strip() for x in failed.splitlines()) if failed else None, md)


def run(args, command: str) -> int:
    from benchmarks.gates import summary, write_junit
    from evaluation.report import write_report
    from runtimes.outputs import claim_output

    o = vars(args)
    fail_on(o)
    if args.output is not None:
        claim_output(args.output, args.force, command_inputs(vars(args)))  # locked until written
    outcome, checks, gated = evaluate(o, args.reference, args.candidates, command=command, progress=not args.quiet)
    md = outcome.markdown()
    print(md)
    if args.output is not None:
        write_report(args.output, outcome.report, md, force=args.force)
        print(f"report: {args.output / 'report.md'}")
    if args.junit is not None:
        write_junit(args.junit, checks["parity"] + checks["accuracy"], "compare")
    if checks["accuracy"]:
        print(f"accuracy gate (max drop {args.max_accuracy_drop:g} points): {summary(checks['accuracy'])}")
    failed = failure(o, gated)
    if failed:
        print(f"compare FAILED {failed}", file=sys.stderr)
        return 1
    return 0
