"""Turning a Hugging Face directory that transformers cannot load into a one-line user error."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from runtimes.errors import UsageError


def hf_load_errors() -> tuple[type[BaseException], ...]:
    """What transformers raises for a bad model directory: unreadable or truncated weights
    (OSError, SafetensorError) and configs it does not understand (ValueError)."""
    from safetensors import SafetensorError

    return (OSError, ValueError, SafetensorError)


# the machine, not the model: a full disk or a read-only folder met while loading or writing
_MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EMFILE}


def as_usage_error(path: str | Path, error: BaseException) -> UsageError:
    if isinstance(error, OSError) and error.errno in _MACHINE_ERRNOS:
        where = error.filename or path
        return UsageError(f"{where}: {os.strerror(error.errno).lower()}; free space or fix the permissions, then run again")
    text = str(error).strip()
    first = text.splitlines()[0][:300] if text else type(error).__name__
    return UsageError(f"{path}: transformers cannot load this model ({first}); check config.json and the weights")
