"""run a pipeline file (stages, options, data, gates) with step caching

Validate PIPELINE.yaml, then run its stages in order; unchanged stages are reused from the run directory, a
changed one reruns with everything after it.
"""

from __future__ import annotations

from pathlib import Path

from enginewright.commands._args import add_quiet

NAME = "run"
STAGE = None
NEEDS_ONNXRUNTIME = True  # checked before it runs, with what to install


def add_arguments(p) -> None:
    p.add_argument("pipeline", type=Path, metavar="PIPELINE.yaml")
    p.add_argument("--from", dest="start", default=None, metavar="STAGE", help="rerun from this stage on")
    p.add_argument("--to", dest="stop", default=None, metavar="STAGE", help="stop after this stage")
    p.add_argument("--force", action="store_true", help="rerun every stage")
    p.add_argument("--junit", type=Path, default=None, metavar="FILE", help="write the compare stage's checks as JUnit XML")
    add_quiet(p)


def run(args, command: str) -> int:
    from enginewright.pipeline import load_pipeline, run_pipeline

    pipe = load_pipeline(args.pipeline)
    results = run_pipeline(pipe, start=args.start, stop=args.stop, force=args.force, progress=not args.quiet,
                           junit=args.junit)
    print(f"pipeline {args.pipeline}: done ({', '.join(results)}); run directory {pipe.run_dir}")
    return 0
