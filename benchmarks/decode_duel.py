"""Decode steps of two or more LLM artifacts, timed against each other in interleaved rounds.

    python -m benchmarks.decode_duel runs/a runs/b [runs/c ...] --rounds 12 --past 40 --steps 48

Each artifact (an ONNX ``text-generation`` export with a KV cache) gets one ONNX Runtime session with
the usable cores. Per round, every artifact prefills the same ``--past`` random token ids (batch 1)
and then times ``--steps`` greedy decode steps, one ``session.run`` each; the round's figure is the
median step. Rounds alternate the order (forward, then backward), so drifts of a shared machine fall
on every artifact alike. Prints each artifact's median step and, for each artifact after the first,
the per-round speed ratio against the first with a one-sided sign test (``paired_verdict``).
This is the measurement behind the per-variant timings in docs/llm.md (graph changes, kernels,
session options); the whole-generation comparison with PyTorch and the peers is
``benchmarks/llm_speed.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path / "model.onnx"), so, providers=["CPUExecutionProvider"])


def decode_steps(sess, layers: int, kv_heads: int, head_dim: int, vocab: int, past: int, steps: int) -> list[float]:
    """Seconds per decode step after a prefill of ``past`` fixed token ids (batch 1, greedy)."""
    from runtimes.tasks.generation import past_names

    ids = np.random.default_rng(0).integers(min(100, vocab // 2), min(1000, vocab), (1, past))
    feeds = {"input_ids": ids, "attention_mask": np.ones((1, past), np.int64), "position_ids": np.arange(past)[None]}
    feeds.update({n: np.zeros((1, kv_heads, 0, head_dim), np.float32) for n in past_names(layers)})
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(None, feeds)))
    pos, times = past, []
    for _ in range(steps):
        start = time.perf_counter()
        step = {"input_ids": np.array([[int(out["logits"][0, -1].argmax())]]),
                "attention_mask": np.ones((1, pos + 1), np.int64), "position_ids": np.array([[pos]])}
        step.update({"past_key_values" + n[len("present"):]: v for n, v in out.items() if n.startswith("present.")})
        out = dict(zip(names, sess.run(None, step)))
        times.append(time.perf_counter() - start)
        pos += 1
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decode_duel", description=__doc__.split("\n\n")[0])
    p.add_argument("artifacts", nargs="+", type=Path, help="LLM artifact directories (the first is the reference)")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--past", type=int, default=40, help="prompt tokens before the timed steps")
    p.add_argument("--steps", type=int, default=48, help="timed decode steps per artifact per round")
    p.add_argument("-o", "--output", type=Path, default=None, help="also write the figures as JSON here")
    p.add_argument("--force", action="store_true", help="replace an existing --output file")
    args = p.parse_args(argv)

    from benchmarks.quantization import paired_verdict
    from evaluation.machine import describe_machine, machine_line
    from runtimes import usable_cores
    from runtimes.errors import UsageError
    from runtimes.outputs import check_output_file, write_json_atomic
    from runtimes.tasks.generation import cache_shape

    if len(args.artifacts) < 2 or min(args.rounds, args.past, args.steps) < 1:
        raise UsageError("decode_duel: give two or more artifacts and --rounds/--past/--steps of at least 1")
    for a in args.artifacts:
        if not (a / "model.onnx").is_file() or not (a / "config.json").is_file():
            raise UsageError(f"{a}: not an LLM ONNX artifact (model.onnx and config.json expected); export one first")
    if args.output is not None:  # before minutes of timing, not after
        check_output_file(args.output, force=args.force, inputs=args.artifacts, flag="-o")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(args.artifacts[0]), local_files_only=True)
    shape = (*cache_shape(config), config.vocab_size)
    threads = usable_cores()
    sessions = [session(a, threads) for a in args.artifacts]
    for s in sessions:  # warm-up
        decode_steps(s, *shape, args.past, 8)
    rounds: list[list[float]] = [[] for _ in sessions]
    for r in range(args.rounds):
        order = range(len(sessions)) if r % 2 == 0 else reversed(range(len(sessions)))
        for i in order:
            rounds[i].append(float(np.median(decode_steps(sessions[i], *shape, args.past, args.steps))))
    print(f"machine: {machine_line(describe_machine())}; {threads} threads; past {args.past}, {args.steps} steps, "
          f"{args.rounds} rounds")
    result = {"schema_version": 1, "kind": "decode-duel", "artifacts": [str(a) for a in args.artifacts], "step_ms_by_round": [[t * 1e3 for t in r] for r in rounds],
              "versus_first": []}
    for a, r in zip(args.artifacts, rounds):
        print(f"{a}: median step {np.median(r) * 1e3:.2f} ms ({1 / np.median(r):.1f} tokens/s)")
    for a, r in zip(args.artifacts[1:], rounds[1:]):
        v = paired_verdict([1 / t for t in r], [1 / t for t in rounds[0]])
        result["versus_first"].append({"artifact": str(a), **v})
        print(f"{a} against {args.artifacts[0]}: speed ratio per round median {v['round_ratio_median']:.3f} "
              f"({min(v['round_ratios']):.3f} to {max(v['round_ratios']):.3f}), faster in {v['rounds_ahead']} of "
              f"{v['rounds']} rounds (sign test p = {v['sign_test_p_ahead']:.3g}): {v['verdict']}")
    if args.output:
        write_json_atomic(args.output, result)
    return 0


if __name__ == "__main__":
    from benchmarks.compression import run_main

    sys.exit(run_main(main, None))
