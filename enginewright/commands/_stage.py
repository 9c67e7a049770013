"""A command as a pipeline stage: its options, taken from a YAML mapping instead of argv.

The pipeline knows no option of its own. A stage's options are the command's long options (``-`` as
``_``), read from the parser ``add_arguments`` builds, less the positionals (the pipeline supplies
the inputs) and the command's ``NOT_IN_PIPELINE``. A YAML value is checked against the option's kind
and parsed by the option's own type, and the result is the same mapping of ``dest -> value`` (with
the parser's defaults) that the command line gives the command, so both run the same code.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from types import ModuleType
from typing import Callable, Mapping

from enginewright.commands._args import ValueType
from runtimes.errors import UsageError


@dataclass(frozen=True)
class CheckOutcome:
    """What a check stage (``STAGE = "check"``) hands the pipeline: its report, its checks (for
    JUnit), when a gated check failed one line saying so, and the report as markdown."""

    report: dict
    checks: list = field(default_factory=list)
    failure: str | None = None
    markdown: str = ""


def parser_of(command: ModuleType) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"enginewright {command.NAME}", add_help=False)
    command.add_arguments(p)
    return p


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return list(parser._actions)  # argparse has no public list of a parser's actions


def yaml_name(action: argparse.Action) -> str | None:
    """``--max-length`` -> ``max_length``; None for a positional."""
    longs = [s for s in action.option_strings if s.startswith("--")]
    return longs[0][2:].replace("-", "_") if longs else None


def cli_options(command: ModuleType) -> dict[str, argparse.Action]:
    """Every long option of the command, by YAML name (positionals and --help left out)."""
    named = ((yaml_name(a), a) for a in _actions(parser_of(command)))
    return {name: a for name, a in named if name is not None and name != "help"}


def stage_options(command: ModuleType) -> dict[str, argparse.Action]:
    """The options a pipeline stage of ``command`` takes: its long options less ``NOT_IN_PIPELINE``."""
    return {k: a for k, a in cli_options(command).items() if k not in command.NOT_IN_PIPELINE}


_INT, _NUM, _BOOL, _STR = "an integer", "a number", "true or false", "a string"


def _kind(action: argparse.Action) -> str | None:
    if action.nargs == 0:
        return _BOOL
    return {int: _INT, float: _NUM}.get(action.type, None if isinstance(action.type, ValueType) else _STR)


def _is_kind(value, kind: str) -> bool:
    if kind == _BOOL:
        return isinstance(value, bool)
    if isinstance(value, bool):  # YAML's true is not a number here
        return False
    return isinstance(value, {_INT: int, _NUM: (int, float), _STR: str}[kind])


def from_mapping(command: ModuleType, given: Mapping, where: Callable[[str | None], str] = lambda opt: "") -> dict:
    """The command's options as ``{dest: value}``: its defaults, overlaid with ``given`` (YAML names).
    A None value means the default.

    Raises:
        UsageError: an unknown option, a value of the wrong kind or that the option's type refuses, or a
            required option missing; the message starts with ``where(option)``.
    """
    parser = parser_of(command)
    allowed = stage_options(command)
    ns = argparse.Namespace(**{a.dest: a.default for a in _actions(parser) if a.dest != "help"})
    for opt, value in given.items():
        if opt not in allowed:
            raise UsageError(f"{where(opt)}: unknown option {opt!r} for {command.NAME}; "
                             f"options are {', '.join(sorted(allowed))}")
        if value is None:
            continue
        action = allowed[opt]
        flag = action.option_strings[-1]
        repeatable = isinstance(action, argparse._AppendAction)
        items = value if repeatable and isinstance(value, list) else [value]
        kind = _kind(action)
        for item in items:
            if kind and not _is_kind(item, kind):
                raise UsageError(f"{where(opt)}: {command.NAME}.{opt} must be {kind}, got {item!r}")
        if action.nargs == 0:
            if value:
                action(parser, ns, None, flag)
            continue
        try:
            texts = [t for item in items for t in (action.type.from_yaml(item) if kind is None else [str(item)])]
            values = [action.type(t) if action.type is not None else t for t in texts]
        except (argparse.ArgumentTypeError, ValueError) as e:
            raise UsageError(f"{where(opt)}: {command.NAME}.{opt}: {e}") from None
        for v in values:
            if action.choices is not None and v not in action.choices:
                raise UsageError(f"{where(opt)}: {command.NAME}.{opt} must be one of "
                                 f"{', '.join(map(str, action.choices))}, got {v!r}")
        if action.nargs in ("+", "*"):
            action(parser, ns, values, flag)
        elif repeatable:
            for v in values:
                action(parser, ns, v, flag)
        elif len(values) != 1:
            raise UsageError(f"{where(opt)}: {command.NAME}.{opt} takes one value, got {value!r}")
        else:
            action(parser, ns, values[0], flag)
    for opt, action in allowed.items():
        if action.required and given.get(opt) is None:
            raise UsageError(f"{where(None)}: {command.NAME} needs {opt}")
    return vars(ns)
