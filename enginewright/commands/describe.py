"""what an artifact is, where it came from and what was measured"""

from __future__ import annotations

from pathlib import Path

NAME = "inspect"
STAGE = None


def add_arguments(p) -> None:
    p.add_argument("artifact", type=Path, metavar="ARTIFACT")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args, command: str) -> int:
    import json

    from benchmarks.inspect_env import artifact_text, describe_artifact

    info = describe_artifact(args.artifact)
    print(json.dumps(info, indent=2) if args.json else artifact_text(info))
    return 0
