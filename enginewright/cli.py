"""``enginewright`` command line: the parser from the tuple of commands, dispatch, and exit codes.
Only argparse is imported up front, so ``--help`` is instant; each command imports what it needs
when it runs.

Exit codes: 0 ok, 1 a check failed (parity, accuracy), 2 bad usage or input, 3 a crash (a bug).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import sys
import threading

from enginewright import commands
from enginewright.commands._args import CliError

INTERNAL_ERROR = 3  # a crash: distinct from 1 (a check failed) and 2 (bad input or environment)
# onnxruntime comes from the `cpu` or `gpu` extra; a command that always uses it says so up front
_NEEDS_ORT = {c.NAME for c in commands.COMMANDS if getattr(c, "NEEDS_ONNXRUNTIME", False)}
# name -> run(args, command): dispatch, made from commands.COMMANDS (a test swaps one in)
COMMANDS = {c.NAME: c.run for c in commands.COMMANDS}

__all__ = ["CliError", "COMMANDS", "INTERNAL_ERROR", "Terminated", "build_parser", "main"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so every ``with``/``finally`` cleans up as for Ctrl-C."""


_sigterm_seen = threading.Event()


def _on_sigterm(signum, frame):
    from runtimes.outputs import interrupt

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    _sigterm_seen.set()
    interrupt(Terminated())  # now, or once a rename or a scratch directory's creation is done


def _on_sigint(signum, frame):
    from runtimes.outputs import interrupt

    interrupt(KeyboardInterrupt())


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="enginewright",
        description="Turn a PyTorch / Hugging Face model into a verified, benchmarked deployment artifact.",
        epilog="Exit codes: 0 ok, 1 a check failed (parity, accuracy), 2 bad usage or input, 3 a crash (a bug).",
    )
    parser.add_argument("--version", action="version", version="enginewright 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for command in commands.COMMANDS:  # a command's docstring is its help line, then its description
        help_line, _, description = command.__doc__.partition("\n\n")
        command.add_arguments(sub.add_parser(command.NAME, help=help_line, description=description.strip() or None))
    return parser


def _require_onnxruntime() -> None:
    import importlib.util

    from runtimes.errors import UsageError
    from runtimes.onnxrt.runner import ORT_MISSING

    if importlib.util.find_spec("onnxruntime") is None:
        raise UsageError(ORT_MISSING)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None) is not None and args.threads < 1:
        print(f"enginewright: error: --threads must be at least 1, got {args.threads}", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched from a hub at run time
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    command = shlex.join(["enginewright", *argv])
    in_main = threading.current_thread() is threading.main_thread()
    _sigterm_seen.clear()
    if in_main:
        previous = signal.signal(signal.SIGTERM, _on_sigterm), signal.signal(signal.SIGINT, _on_sigint)
    try:
        with _one_voice():
            return _dispatch(args, command)
    finally:
        from runtimes.outputs import release_all

        with contextlib.suppress(KeyboardInterrupt):  # a signal now finds the run's work done
            release_all()  # the output locks of a run that stopped before writing
        if in_main:
            signal.signal(signal.SIGTERM, previous[0])
            signal.signal(signal.SIGINT, previous[1])


@contextlib.contextmanager
def _one_voice():
    """Under ``accelerate launch``/``torchrun``: only the main process prints results (every process
    keeps stderr for its errors), and ``cuda`` means each process's own GPU."""
    from exporter.distributed import bind_device, is_main, launched

    if not launched():
        yield
        return
    bind_device()
    if is_main():
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def _dispatch(args, command: str) -> int:
    from enginewright.commands._args import check_file_outputs
    from runtimes.errors import EnginewrightError

    try:
        try:
            if args.command in _NEEDS_ORT:
                _require_onnxruntime()
            check_file_outputs(vars(args))
            return COMMANDS[args.command](args, command)
        except BaseException:
            if _sigterm_seen.is_set():  # a library may wrap it (an import it cut short raises ImportError)
                raise Terminated() from None
            raise
    except Terminated:
        print(f"enginewright {args.command}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except (EnginewrightError, CliError) as e:
        print(f"enginewright {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except (OSError, MemoryError) as e:  # the machine, not the program: disk, permissions, memory
        print(f"enginewright {args.command}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if type(e).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch here
            print(f"enginewright {args.command}: error: out of GPU memory ({str(e).splitlines()[0][:200]}); use a smaller "
                  "batch or sequence length", file=sys.stderr)
            return 2
        # a bug: the traceback, then an exit code no check uses, so CI cannot read it as a failed check
        import traceback

        traceback.print_exc()
        print(f"enginewright {args.command}: unexpected error (the traceback above; please report it), exit {INTERNAL_ERROR}",
              file=sys.stderr)
        return INTERNAL_ERROR
    except KeyboardInterrupt:
        hint = "; continue with --resume" if args.command in ("finetune", "compress") else ""
        print(f"enginewright {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
