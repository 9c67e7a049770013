"""Errors a user can act on, with the exit code the CLI gives them.

A ``UsageError`` is the user's mistake (a missing file, a wrong input name): one line, exit 2.
A ``CheckFailed`` is a measured check that did not pass (parity, accuracy): exit 1.
Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class EnginewrightError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class UsageError(EnginewrightError):
    """Bad usage or bad input: the message names the file, field or input and what to do."""

    exit_code = 2


class CheckFailed(EnginewrightError):
    """A check (parity, accuracy, budget) ran and failed."""

    exit_code = 1
