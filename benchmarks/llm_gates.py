"""The checks of an LLM ``compare`` report (``evaluation/llm_compare.py``), as JUnit-ready ``Check``s."""

from __future__ import annotations

from benchmarks.gates import Check


def llm_checks(report: dict) -> list[Check]:
    """One check per candidate: the gates it was given (perplexity increase, top-1 agreement, greedy
    prefix), passing with its numbers in the message, failing with the reasons."""
    checks = []
    for c in report["candidates"]:
        numbers = (f"perplexity {c['perplexity']:.4g} ({c['ppl_change']:+.2%}), top-1 {c['top1_agreement']:.4f}, "
                   f"KL {c['kl_mean']:.3g}, greedy prefix mean {c['greedy_prefix_mean']:.1f} min {c['greedy_prefix_min']}")
        checks.append(Check("parity", f"{c['label']} llm", c["passed"], "; ".join(c["reasons"]) or numbers))
    return checks
