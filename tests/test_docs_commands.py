"""The commands the README, docs/ and examples/ show use options that exist: every ``enginewright
COMMAND ...`` against the CLI's parser, every ``python -m benchmarks.NAME ...`` against the script's
``add_argument`` calls. A renamed or dropped option otherwise leaves the docs telling users to type
something that exits 2."""

import argparse
import importlib
import re
from pathlib import Path

import pytest

from enginewright.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").glob("*.yaml"))]
OPTION = re.compile(r"(?<![\w/.-])(--?[a-zA-Z][\w-]*)")


def shown_commands(path: Path):
    """``(program, arguments)`` of each command line in ``path`` (continuation backslashes joined)."""
    text = re.sub(r"\\\n\s*", " ", path.read_text(encoding="utf-8"))
    for line in text.splitlines():
        for m in re.finditer(r"(?:^|[`\s(])enginewright ([a-z][a-z-]+)((?: [^`|;&)]*)?)", line):
            yield m.group(1), m.group(2) or ""
        for m in re.finditer(r"python -m (benchmarks\.\w+)((?: [^`|;&)]*)?)", line):
            yield m.group(1), m.group(2) or ""


def known_options() -> dict[str, set[str]]:
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    return {name: {o for a in p._actions for o in a.option_strings} for name, p in subs.items()}


def benchmark_options(module: str) -> set[str]:
    source = Path(importlib.import_module(module).__file__).read_text(encoding="utf-8")
    found = re.findall(r'add_argument\(\s*"(-[-\w]+)"(?:,\s*"(-[-\w]+)")?', source)
    return {o for pair in found for o in pair if o} | {"-h", "--help"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_shown_commands_use_options_that_exist(path):
    commands = known_options()
    wrong = []
    for program, args in shown_commands(path):
        if program.startswith("benchmarks."):
            known = benchmark_options(program)
        elif program in commands:
            known = commands[program]
        else:  # prose ("enginewright is ..."), not a command
            continue
        wrong += [f"{program} {o}" for o in OPTION.findall(args) if o not in known]
    assert not wrong, f"{path.name} shows options the program does not take: {sorted(set(wrong))}"


def test_the_check_sees_a_wrong_option(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("```sh\nenginewright export runs/hf --graph cpu \\\n    --no-such-option -o runs/x\n```\n")
    commands = known_options()
    shown = list(shown_commands(doc))
    assert [(program, args.split()) for program, args in shown] == [
        ("export", ["runs/hf", "--graph", "cpu", "--no-such-option", "-o", "runs/x"])]
    assert [o for o in OPTION.findall(shown[0][1]) if o not in commands["export"]] == ["--no-such-option"]
