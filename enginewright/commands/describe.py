"""what an artifact is, where it came from and what was measured"""

from __future__ import annotations

from pathlib import Path

NAME = "inspect"
STAGE = None


def add_arguments(p) -> None:
    p.add_argument("artifact", type=Path, metavar="ARTIFACT")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--verify", action="store_true",
                   help="check every file the manifest lists against its recorded size and sha256; "
                        "exit 1 when one is changed or missing")


def run(args, command: str) -> int:
    import json

    from benchmarks.inspect_env import artifact_text, describe_artifact, verify_text

    if not args.verify:
        info = describe_artifact(args.artifact)
        print(json.dumps(info, indent=2) if args.json else artifact_text(info))
        return 0
    from runtimes import load_artifact
    from runtimes.integrity import verify_files

    art = load_artifact(args.artifact, check_files=False)  # report changed files rather than stop at the first
    checks = verify_files(art)
    info = describe_artifact(art)
    info["verify"] = [{"file": c.name, "status": c.status, "detail": c.detail} for c in checks]
    print(json.dumps(info, indent=2) if args.json else artifact_text(info) + "\n" + verify_text(checks))
    return 1 if any(c.status != "ok" for c in checks) else 0
