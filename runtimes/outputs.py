"""What a run may write and replace, and how it writes it so that no interruption loses an output.

The one rule for ``--force`` lives in ``check_output_free``: an existing output is replaced only when
enginewright wrote it (it holds our ``manifest.json`` or ``report.json``, or the ``.enginewright``
marker) or it is empty, and never when it is an input, holds an input or lies inside one.

Everything a run writes beside an output ``OUT`` is named after it and the writing process:
``.OUT.tmp-PID-*`` (the staging directory), ``.OUT.old-PID-*`` (the previous output during the swap),
``.OUT.work-PID-*`` (a stage's scratch files) and ``.OUT.lock`` (held while the run writes ``OUT``).
A run removes its own on any exception, SIGTERM included; after a SIGKILL the next run of the same
output sweeps those whose process is gone, and puts a previous output back if the swap was cut short.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from runtimes.errors import UsageError

MARKER = ".enginewright"  # written into outputs that have no manifest.json or report.json (a model repository)
_OWNED_FILES = ("manifest.json", "report.json")
_HELD: dict[Path, int] = {}  # output -> the open lock file this process holds for it

__all__ = [
    "MARKER", "atomic_output_dir", "check_apart", "check_output_file", "check_output_free", "claim_output", "interrupt",
    "is_our_json", "release_all",
    "release_output", "scratch_dir", "sweep_stale", "write_json_atomic", "write_text_atomic",
]


def _abs(p: str | os.PathLike) -> Path:
    """The path with its parent's symlinks resolved, the last component kept (the name we would replace)."""
    p = Path(os.path.abspath(p))
    return p.parent.resolve() / p.name


def check_apart(out: str | os.PathLike, inputs: Iterable) -> None:
    """Raises:
        UsageError: ``out`` is one of ``inputs``, holds one or lies inside one (symbolic links resolved).
    """
    _check_inputs(Path(out), inputs)


def _check_inputs(out: Path, inputs: Iterable) -> None:
    targets = {_abs(out), _abs(out).resolve()}
    for given in inputs:
        if given is None:
            continue
        src = Path(os.path.abspath(given)).resolve()
        for o in targets:
            if o == src:
                raise UsageError(f"{out}: is the input {given}; write to another path")
            if src.is_relative_to(o):
                raise UsageError(f"{out}: holds the input {given}, which writing there would delete; choose another path")
            if o.is_relative_to(src):
                raise UsageError(f"{out}: is inside the input {given}; write outside it")


def _check_writable(out: Path) -> None:
    parent = _abs(out).parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{out}: {parent} is not a directory; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{out}: cannot write in {parent} (permission denied); choose another path")


def is_our_json(path: Path) -> bool:
    """True for a JSON file enginewright wrote (``schema_version`` and ``kind`` at its top: a manifest,
    a report, check's ``--json``, a duel's figures)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "schema_version" in data and "kind" in data


def _is_ours(path: Path) -> bool:
    """True for a directory enginewright wrote (manifest.json / report.json with our fields, or the marker) or an empty one."""
    if not any(path.iterdir()) or (path / MARKER).is_file():
        return True
    return any(is_our_json(path / name) for name in _OWNED_FILES)


def check_output_free(out: str | os.PathLike, force: bool, inputs: Iterable = ()) -> None:
    """The one decision about an output directory: may this run write (or with ``force`` replace) it?

    Raises:
        UsageError: ``out`` is, holds or lies inside one of ``inputs``; it exists without ``force``; it is
            not a directory; it holds files enginewright did not write; its folder is not writable.
    """
    out = Path(out)
    _check_inputs(out, inputs)
    if out.exists() and not force:
        raise UsageError(f"{out}: output already exists; pass --force to replace it or choose another -o")
    if out.is_symlink():
        raise UsageError(f"{out}: is a symbolic link; --force replaces only a directory enginewright wrote; choose another -o")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a directory; remove it or choose another -o")
    if out.exists() and not _is_ours(out):
        raise UsageError(f"{out}: holds files enginewright did not write (no manifest.json, report.json or {MARKER}); "
                         "--force replaces only an output of enginewright; remove it yourself or choose another -o")
    _check_writable(out)


def _is_junit(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
    except OSError:
        return False
    return "<testsuite" in head


def check_output_file(path: str | os.PathLike, *, force: bool | None, inputs: Iterable = (), flag: str = "",
                      owned=is_our_json) -> None:
    """Whether a run may write the single file ``path``; ``force=None``: an existing JUnit file is
    replaced (a CI job rewrites it each run). With ``force`` an existing file is replaced only when
    ``owned(path)`` says enginewright wrote it (default: ``is_our_json``; None: any file), and never a
    file of an enginewright output directory (an artifact's model or config, a report). ``flag``
    starts the message.

    Raises:
        UsageError: ``path`` is or lies inside an input; is a directory; is a file of an output
            directory; exists without ``force`` or was not written by enginewright; its folder is
            missing (``force=None``) or not writable.
    """
    path = Path(path)
    where = f"{flag} {path}" if flag else str(path)
    try:
        _check_inputs(path, inputs)
    except UsageError as e:
        raise UsageError(f"{flag} {e}" if flag else str(e)) from None
    if path.is_dir():
        raise UsageError(f"{where}: is a directory; give a file path")
    parent = _abs(path).parent
    if path.exists() and _is_ours(parent):  # not empty: it holds path
        raise UsageError(f"{where}: is a file of the enginewright output {parent}, which replacing it would break; "
                         "choose a path outside it")
    if path.exists() and force is False:
        raise UsageError(f"{where}: already exists; pass --force to replace it or choose another path")
    if path.exists() and force is None and not _is_junit(path):
        raise UsageError(f"{where}: exists and is not a JUnit XML file; remove it or choose another path")
    if path.exists() and force is True and owned is not None and not owned(path):
        raise UsageError(f"{where}: exists and was not written by enginewright (--force replaces only such a file); "
                         "remove it yourself or choose another path")
    if force is None and not path.parent.is_dir():
        raise UsageError(f"{where}: folder {path.parent} does not exist; create it first")
    try:
        _check_writable(path)
    except UsageError as e:
        raise UsageError(f"{flag} {e}" if flag else str(e)) from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _debris(out: Path) -> Iterator[tuple[Path, str]]:
    pattern = re.compile(re.escape(f".{out.name}.") + r"(tmp|old|work)-(\d+)-\w+")
    with contextlib.suppress(FileNotFoundError):
        for p in out.parent.iterdir():
            m = pattern.fullmatch(p.name)
            if m and not _pid_alive(int(m[2])):
                yield p, m[1]


def sweep_stale(out: str | os.PathLike) -> None:
    """Remove what killed runs left beside ``out`` (only entries whose process is gone); a previous output
    that a cut-short swap had moved aside is put back first."""
    out = _abs(out)
    for p, kind in sorted(_debris(out), key=lambda e: e[1] != "old"):
        if kind == "old" and (p / "x").exists() and not out.exists():
            os.replace(p / "x", out)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _lock_file(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def _lock(out: Path) -> bool:
    """Take the lock for ``out``; False when this process already holds it.

    Raises:
        UsageError: another live process holds it.
    """
    import fcntl

    if out in _HELD:
        return False
    with _signals_deferred():  # a lock file made is a lock file recorded (and so released)
        return _take_lock(out, fcntl)


def _take_lock(out: Path, fcntl) -> bool:
    path = _lock_file(out)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:  # a folder the permission bits allow but the filesystem refuses (/proc, read-only mounts)
            raise UsageError(f"{out}: cannot write in {out.parent} ({e.strerror}); choose another -o") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UsageError(f"{out}: another enginewright run (pid {holder}) is writing this output; "
                             "wait for it to finish or choose another -o") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a lock file its holder removed while we opened it
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            _HELD[out] = fd
            return True
        os.close(fd)


def release_output(out: str | os.PathLike) -> None:
    out = _abs(out)
    with _signals_deferred():
        fd = _HELD.pop(out, None)
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(_lock_file(out))  # while still holding it: a waiter then sees a fresh file
            os.close(fd)


def release_all() -> None:
    """Release every output lock this process holds (the CLI does at exit)."""
    for out in list(_HELD):
        release_output(out)


def claim_output(out: str | os.PathLike, force: bool, inputs: Iterable = ()) -> None:
    """Check ``out`` as ``check_output_free`` does, then hold its lock until ``atomic_output_dir`` is done
    with it (or ``release_output``). Debris of killed runs of ``out`` is swept on the way.

    Raises:
        UsageError: what ``check_output_free`` raises; another run is writing ``out``.
    """
    out = Path(out)
    check_output_free(out, force, inputs)
    key = _abs(out)
    if not key.parent.is_dir():
        return  # nothing to lock in yet: atomic_output_dir makes the folder, then claims again
    took = _lock(key)
    try:
        sweep_stale(key)
        check_output_free(out, force, inputs)  # again: another run may have finished it while we looked
    except BaseException:
        if took:
            release_output(key)
        raise


_deferring = 0  # > 0 while a step that must not be cut in half runs
_pending: list[BaseException] = []


def interrupt(exc: BaseException) -> None:
    """Raise ``exc`` now (from a signal handler), or when the step that must not be cut in half ends.
    The CLI's SIGTERM and SIGINT handlers call this."""
    if _deferring:
        _pending.append(exc)
        return
    raise exc


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT/SIGTERM (through ``interrupt``) wait until the block is done: the two renames of a swap
    are one step, and a directory made is a directory its caller will remove."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _pending:
            exc = _pending.pop()
            _pending.clear()
            raise exc


def _swap(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    with _signals_deferred():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
        os.replace(out, old / "x")
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old / "x", out)  # never leave the previous output hidden
            shutil.rmtree(old, ignore_errors=True)
            raise
    shutil.rmtree(old, ignore_errors=True)


def _default_mode(base: int) -> int:
    """``base`` under the process umask: the mode a plain open()/mkdir() would give."""
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, *, force: bool = False, inputs: Iterable = (),
                      mark: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``out`` only when the block succeeds; with
    ``mark``, the ``.enginewright`` marker goes in (for an output without a manifest or report).

    On any exception (SIGTERM in the CLI too) the temporary directory is removed and ``out`` is left
    as it was. The output's lock is released at the end.

    Raises:
        UsageError: what ``claim_output`` raises.
    """
    out = Path(out)
    inputs = list(inputs)
    check_output_free(out, force, inputs)
    try:
        _abs(out).parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{out}: cannot create its folder ({e.strerror}); choose another -o") from None
    claim_output(out, force, inputs)
    try:
        with _made_dir(f".{out.name}.tmp-{os.getpid()}-", _abs(out).parent) as tmp:
            os.chmod(tmp, _default_mode(0o777))  # mkdtemp makes 0700; the result should look like any mkdir
            yield tmp
            if mark:
                (tmp / MARKER).write_text("written by enginewright; --force may replace this directory\n", encoding="utf-8")
            _swap(tmp, out)
    finally:
        release_output(out)


@contextlib.contextmanager
def _made_dir(prefix: str, parent: Path) -> Iterator[Path]:
    """A new directory, removed at the end unless it was renamed away. SIGTERM/SIGINT wait while it is
    made, so no interruption can leave one that nothing will remove."""
    made = None
    with contextlib.ExitStack() as deferred:
        deferred.enter_context(_signals_deferred())
        try:
            made = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
            deferred.close()  # a signal that waited lands here, inside the try
            yield made
        finally:
            deferred.close()
            if made is not None and made.exists():
                shutil.rmtree(made, ignore_errors=True)


@contextlib.contextmanager
def scratch_dir(out: str | os.PathLike) -> Iterator[Path]:
    """A scratch directory beside ``out`` (same filesystem), removed at the end; one a killed run left
    is swept by the next run of ``out``."""
    out = _abs(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _made_dir(f".{out.name}.work-{os.getpid()}-", out.parent) as work:
        yield work


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON to ``path`` through a temporary file in the same directory."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory, then rename.

    Raises:
        UsageError: the folder is missing or not writable (the message names ``path``, not the temporary file).
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
    except OSError as e:
        raise UsageError(f"{path}: cannot write ({e.strerror})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, _default_mode(0o666))  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
