"""Reports: ``report.json`` (machine-readable, with ``schema_version``) and ``report.md``, written
atomically into a report directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from runtimes.artifact import atomic_output_dir, library_versions, now_iso, write_json_atomic, write_text_atomic

REPORT_SCHEMA_VERSION = 1


def report_header(kind: str, command: str | None, machine: dict) -> dict:
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "kind": kind,
        "created": now_iso(),
        "command": command,
        "machine": machine,
        "versions": library_versions(),
    }


def md_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])


def write_report(out: str | os.PathLike, report: dict, markdown: str, *, force: bool = False) -> Path:
    """Write ``report.json``, ``report.md`` and ``report.html`` (with plots where the report has
    them) into ``out`` atomically (``force`` to replace)."""
    from evaluation.plots import latency_plot, markdown_to_html

    with atomic_output_dir(out, force=force) as tmp:
        write_json_atomic(tmp / "report.json", report)
        if report.get("kind") == "bench" and latency_plot(report, tmp / "latency.png"):
            markdown += "\n## Latency against batch size\n\n![latency against batch size](latency.png)\n"
        write_text_atomic(tmp / "report.md", markdown)
        write_text_atomic(tmp / "report.html", markdown_to_html(markdown, f"enginewright {report.get('kind')} report"))
    return Path(out)


def fmt(x, digits: int = 4) -> str:
    """``digits`` significant figures; large numbers without a fraction; ``None`` as ``-``."""
    if x is None:
        return "-"
    if isinstance(x, float):
        if x != x or x in (float("inf"), float("-inf")):
            return str(x)
        return f"{x:.0f}" if abs(x) >= 10 ** digits else f"{x:.{digits}g}"
    return str(x)
