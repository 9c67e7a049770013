"""The commands, one module each, in the order ``--help`` lists them.

A command module's docstring is its ``--help`` line, then (after a blank line) its description; it
has ``NAME``, ``add_arguments(parser)`` and ``run(args, command) -> exit code``. A pipeline stage also has ``STAGE`` (``"artifact"``: it takes
the previous stage's artifact and writes one with ``make(options, src, out, ...)``; ``"check"``: it
takes the reference model and the artifacts made, with ``stage(...) -> CheckOutcome``) and ``NOT_IN_PIPELINE``, the options a
pipeline sets itself, each with the reason, and may have ``check(options)``, which raises CliError
for options that do not go together (the pipeline calls it when it loads the file). Other commands have ``STAGE = None``. Modules import
only argparse-level code at import time, so building the parser stays instant.
"""

from enginewright.commands import (bench, build, check, compare, compress, describe, env, export, finetune, import_gguf,
                                   optimize, quantize, run, triton)

COMMANDS = (import_gguf, finetune, compress, export, optimize, quantize, check, build, run, triton, describe, env, compare, bench)
STAGES = {c.NAME: c for c in COMMANDS if c.STAGE is not None}
