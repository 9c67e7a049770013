"""Gates for CI: throughput against a baseline report, and JUnit XML so CI systems show each check."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from evaluation.report import REPORT_SCHEMA_VERSION
from runtimes.artifact import write_text_atomic
from runtimes.errors import UsageError


@dataclass
class Check:
    suite: str
    name: str
    passed: bool
    message: str = ""
    skipped: bool = False


def load_baseline(path: str | os.PathLike) -> dict:
    """A bench ``report.json`` to compare against.

    Raises:
        UsageError: missing, not JSON, not a bench report, or another schema version.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    if not p.is_file():
        raise UsageError(f"{p}: baseline report not found; pass a bench report.json or its directory")
    try:
        report = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UsageError(f"{p}: baseline is not valid JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(report, dict) and report.get("kind") == "llm" and not is_llm_bench(report):
        raise UsageError(f"{p}: an LLM compare report, not a bench report (no decode timings); give the report.json "
                         "that enginewright bench wrote")
    if not isinstance(report, dict) or not (report.get("kind") == "bench" or is_llm_bench(report)):
        raise UsageError(f"{p}: not a bench report (kind {report.get('kind') if isinstance(report, dict) else None!r})")
    if report.get("schema_version") != REPORT_SCHEMA_VERSION:
        raise UsageError(f"{p}: baseline has schema_version {report.get('schema_version')!r}, this tool writes "
                         f"{REPORT_SCHEMA_VERSION}; re-run the baseline with this version")
    return report


def is_llm_bench(report: dict) -> bool:
    """An LLM bench report (``benchmarks/llm_bench.py``: kind ``llm``, rows of decode tokens/s), not an LLM compare."""
    return report.get("kind") == "llm" and "runners" in report and "results" in report


def _key(row: dict) -> tuple:
    return (Path(row["artifact"]).name, row["runtime"], row["batch"], str(row["seq"]))


def _llm_keys(report: dict) -> dict[str, tuple]:
    """An LLM bench row's match key by label: artifact name, runtime, loop (ours or transformers' generate())."""
    return {r["label"]: (Path(r["artifact"]).name, r["runtime"], r["loop"]) for r in report["runners"]}


def _rows(report: dict) -> tuple[dict, str, str]:
    """``({key: row}, throughput field, unit)`` of a bench report, tensor or LLM."""
    if is_llm_bench(report):
        runner = _llm_keys(report)
        return ({(*runner[r["label"]], r["batch"]): r for r in report["results"]}, "decode_tokens_per_s",
                "decode tokens/s")
    return {_key(r): r for r in report["results"]}, "samples_per_s", "samples/s"


def same_machine(a: dict, b: dict) -> bool:
    keys = ("cpu", "usable_cores", "gpus")
    return all(a.get(k) == b.get(k) for k in keys)


def regression_checks(report: dict, baseline: dict, max_regression: float) -> list[Check]:
    """One check per result row found in the baseline (matched by artifact name, runtime, batch and
    sequence; for an LLM bench by artifact name, runtime, generation loop and batch): throughput
    (samples/s; decode tokens/s for an LLM bench) may fall by at most ``max_regression`` (a fraction).
    A baseline from another machine is not compared: every row is reported as skipped, saying why.
    When no row matches at all, a failed check says that nothing was compared.

    Raises:
        UsageError: an LLM bench against a tensor bench baseline, or the other way round.
    """
    if is_llm_bench(report) != is_llm_bench(baseline):
        kinds = {True: "an LLM bench", False: "a tensor bench"}
        raise UsageError(f"--baseline is {kinds[is_llm_bench(baseline)]} report and this is {kinds[is_llm_bench(report)]}; "
                         "compare a bench with a baseline of the same kind")
    base, field, unit = _rows(baseline)
    mine, _, _ = _rows(report)
    other = not same_machine(report["machine"], baseline["machine"])
    checks = []
    for key, row in mine.items():
        name = f"{row['label']} b{row['batch']}" + (f" s{row['seq']}" if "seq" in row else "")
        old = base.get(key)
        if old is None:
            checks.append(Check("throughput", name, True, "not in the baseline", skipped=True))
        elif other:
            checks.append(Check("throughput", name, True, "baseline is from another machine "
                                f"({baseline['machine'].get('cpu')}, {baseline['machine'].get('usable_cores')} cores); not compared",
                                skipped=True))
        elif not row[field] or not old[field]:  # an LLM bench of one new token has no decode steps
            checks.append(Check("throughput", name, True, f"no {unit} measured; not compared", skipped=True))
        else:
            change = row[field] / old[field] - 1
            ok = change >= -max_regression
            checks.append(Check("throughput", name, ok, f"{old[field]:.4g} -> {row[field]:.4g} {unit} "
                                f"({change:+.1%}; budget -{max_regression:.0%})"))
    if not other and all(c.skipped for c in checks):  # a gate that compared nothing must not pass
        what = "runtime, loop, batch" if field == "decode_tokens_per_s" else "runtime, batch, seq"
        checks.append(Check("throughput", "baseline", False, f"no result matches a baseline row (artifact name, {what}): "
                            "nothing was compared; bench the baseline's artifacts and shapes"))
    return checks


def parity_checks(report: dict) -> list[Check]:
    checks = []
    for c in report["candidates"]:
        for o in c["outputs"]:
            checks.append(Check("parity", f"{c['label']} {o['name']}", o["passed"],
                                "; ".join(o["reasons"]) or f"max abs {o['max_abs']:.3g}, min cos {o['cos_min']:.6f}"))
        for m in c["missing_outputs"]:
            checks.append(Check("parity", f"{c['label']} {m}", False, "missing from the candidate's outputs"))
    return checks


def llm_checks(report: dict) -> list[Check]:
    """An LLM compare report's checks (``evaluation/llm_compare.py``): one per candidate, the gates it
    was given (perplexity increase, top-1 agreement, greedy prefix), passing with its numbers in the
    message, failing with the reasons."""
    checks = []
    for c in report["candidates"]:
        numbers = (f"perplexity {c['perplexity']:.4g} ({c['ppl_change']:+.2%}), top-1 {c['top1_agreement']:.4f}, "
                   f"KL {c['kl_mean']:.3g}, greedy prefix mean {c['greedy_prefix_mean']:.1f} min {c['greedy_prefix_min']}")
        checks.append(Check("parity", f"{c['label']} llm", c["passed"], "; ".join(c["reasons"]) or numbers))
    return checks


def metric_checks(report: dict, max_drop_points: float) -> list[Check]:
    """Task-metric gate: each candidate's accuracy may trail the reference's by at most
    ``max_drop_points`` (percentage points). Nothing to check when the data had no labels."""
    ref = report["reference"].get("task_metric")
    if not ref:
        return []
    checks = []
    for c in report["candidates"]:
        m = c.get("task_metric")
        if not m:
            continue
        drop = 100 * (ref["accuracy"] - m["accuracy"])
        checks.append(Check("accuracy", c["label"], drop <= max_drop_points,
                            f"accuracy {m['accuracy']:.4f} vs reference {ref['accuracy']:.4f} "
                            f"({-drop:+.2f} points; budget -{max_drop_points:g})"))
    return checks


def write_junit(path: str | os.PathLike, checks: list[Check], suite_name: str) -> None:
    """JUnit XML: one testcase per check, failures and skips with their message."""
    suite = ET.Element("testsuite", name=suite_name, tests=str(len(checks)),
                       failures=str(sum(not c.passed for c in checks)), skipped=str(sum(c.skipped for c in checks)))
    for c in checks:
        case = ET.SubElement(suite, "testcase", classname=f"enginewright.{c.suite}", name=c.name)
        if c.skipped:
            ET.SubElement(case, "skipped", message=c.message)
        elif not c.passed:
            ET.SubElement(case, "failure", message=c.message).text = c.message
        else:
            ET.SubElement(case, "system-out").text = c.message
    root = ET.Element("testsuites")
    root.append(suite)
    write_text_atomic(Path(path), ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n")


def summary(checks: list[Check]) -> str:
    failed = [c for c in checks if not c.passed]
    skipped = sum(c.skipped for c in checks)
    lines = [f"{len(checks) - len(failed) - skipped} passed, {len(failed)} failed" + (f", {skipped} skipped" if skipped else "")]
    lines += [f"  FAIL {c.suite}: {c.name}: {c.message}" for c in failed]
    return "\n".join(lines)
