"""library versions, ONNX Runtime providers, CUDA, TensorRT and CPU features"""

from __future__ import annotations

NAME = "env"
STAGE = None


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args, command: str) -> int:
    import json

    from benchmarks.inspect_env import describe_env, env_text

    env = describe_env()
    print(json.dumps(env, indent=2) if args.json else env_text(env))
    return 0
