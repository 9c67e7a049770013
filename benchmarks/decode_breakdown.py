"""Where a decode step of an LLM artifact goes: the whole graph against variants with one part taken out.

    python -m benchmarks.decode_breakdown runs/smol/int4 --rounds 10 --past 40 --steps 48

Variants, each written to a temporary directory and timed like ``benchmarks.decode_duel`` (one
ONNX Runtime session each, a prefill of ``--past`` ids, then ``--steps`` greedy decode steps, the
round's figure the median step; rounds alternate the order):

- ``without lm_head``: the lm_head's kernel replaced by a Gather of its input (the same output shape,
  next to no work), so the difference is the lm_head's cost;
- ``without the block-sum fold`` (artifacts of ``--from-gguf`` at ``--accuracy-level`` > 0): the
  kernels' extra input rows zero-padded instead of computed (wrong numbers, the same kernels), so the
  difference is the fold's nodes;
- ``MatMulNBits alone``: a graph of only the weight kernels, each fed a random row of its width: the
  kernels' time in one call, as they run inside a step (weights streamed from memory every call).

What is left (the whole step less the kernels and the fold) is everything else: normalizations,
rotary, attention, the cache's Concat, reshapes, the executor. Timing only; the variants' numbers
are not the model's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.decode_duel import decode_steps, session
from exporter.passes.core import attr, drop_unused_constants

FOLD = "/x_with_block_sums"


def without_lm_head(model) -> bool:
    """Replace the lm_head's MatMulNBits (or MatMul) by a Gather of its input; False if none."""
    from onnx import helper, numpy_helper

    for i, node in enumerate(model.graph.node):
        if "lm_head" in node.name and node.op_type in ("MatMulNBits", "MatMul") and "logits" in node.output[0]:
            width = attr(node, "K") or next(t.dims[0] for t in model.graph.initializer if t.name == node.input[1])
            vocab = attr(node, "N") or next(t.dims[1] for t in model.graph.initializer if t.name == node.input[1])
            index = numpy_helper.from_array((np.arange(vocab) % width).astype(np.int64), "breakdown.lm_head_index")
            model.graph.initializer.append(index)
            model.graph.node[i].CopyFrom(helper.make_node("Gather", [node.input[0], index.name], list(node.output),
                                                          name=node.name, axis=-1))
            drop_unused_constants(model.graph)
            return True
    return False


def without_fold(model) -> bool:
    """Feed the folded kernels their input zero-padded to the same width instead of ``[x, block sums...]``."""
    from onnx import helper, numpy_helper

    width = {n.input[0]: attr(n, "K") for n in model.graph.node if n.op_type == "MatMulNBits" and n.input[0].endswith(FOLD)}
    if not width:
        return False
    inits = {t.name: t for t in model.graph.initializer}
    nodes, inner = [], set()
    for n in model.graph.node:
        if n.op_type == "Concat" and n.output[0] in width:
            base = n.output[0][:-len(FOLD)]
            blocks = numpy_helper.to_array(inits[f"{base}.blocks_shape"])  # [0, 0, blocks, 32]
            pads = numpy_helper.from_array(np.array([0, 0, 0, 0, 0, width[n.output[0]] - int(blocks[2] * blocks[3])],
                                                    np.int64), f"{base}.breakdown_pads")
            model.graph.initializer.append(pads)
            inner |= {f"{base}/x_blocks", f"{base}/x_block_sums", f"{base}/x_block_sums_padded"}
            nodes.append(helper.make_node("Pad", [n.input[0], pads.name], list(n.output), name=n.name))
        else:
            nodes.append(n)
    del model.graph.node[:]
    model.graph.node.extend(n for n in nodes if n.output[0] not in inner)
    drop_unused_constants(model.graph)
    return True


def kernels_alone(model):
    """A graph of only ``model``'s MatMulNBits nodes, one graph input per input width."""
    from onnx import TensorProto, helper

    inits = {t.name: t for t in model.graph.initializer}
    nodes, inputs, used, outputs = [], {}, {}, []
    for i, n in enumerate(x for x in model.graph.node if x.op_type == "MatMulNBits"):
        k = attr(n, "K")
        inputs.setdefault(k, helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, [1, 1, k]))
        for name in n.input[1:]:
            if name:
                used[name] = inits[name]
        nodes.append(helper.make_node("MatMulNBits", [f"x{k}", *n.input[1:]], [f"y{i}"], name=n.name,
                                      domain="com.microsoft", **{a.name: helper.get_attribute_value(a) for a in n.attribute}))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None))
    if not nodes:
        return None
    graph = helper.make_graph(nodes, "kernels", list(inputs.values()), outputs, list(used.values()))
    alone = helper.make_model(graph, opset_imports=list(model.opset_import))
    alone.ir_version = model.ir_version
    return alone


def kernel_calls(sess, steps: int) -> list[float]:
    feeds = {i.name: np.random.default_rng(0).standard_normal([1, 1, int(i.name[1:])]).astype(np.float32)
             for i in sess.get_inputs()}
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decode_breakdown", description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", type=Path, help="an LLM artifact directory (model.onnx with a KV cache)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--past", type=int, default=40, help="prompt tokens before the timed steps")
    p.add_argument("--steps", type=int, default=48, help="timed decode steps per variant per round")
    args = p.parse_args(argv)

    import onnx

    from evaluation.machine import describe_machine, machine_line
    from runtimes import usable_cores
    from runtimes.errors import UsageError
    from runtimes.tasks.generation import cache_shape

    if not (args.artifact / "model.onnx").is_file() or not (args.artifact / "config.json").is_file():
        raise UsageError(f"{args.artifact}: not an LLM ONNX artifact (model.onnx and config.json expected)")
    if min(args.rounds, args.past, args.steps) < 1:
        raise UsageError("decode_breakdown: --rounds, --past and --steps must be at least 1")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(args.artifact), local_files_only=True)
    shape = (*cache_shape(config), config.vocab_size)
    threads = usable_cores()
    with tempfile.TemporaryDirectory(prefix="breakdown-") as tmp:
        full = onnx.load(str(args.artifact / "model.onnx"))  # read once; each edit works on a copy

        def edited(edit):
            model = onnx.ModelProto()
            model.CopyFrom(full)
            return model if edit(model) else None

        variants = {"whole step": args.artifact}
        for label, build in (("without lm_head", lambda: edited(without_lm_head)),
                             ("without the block-sum fold", lambda: edited(without_fold)),
                             ("MatMulNBits alone", lambda: kernels_alone(full))):
            model = build()  # one variant in memory at a time
            if model is not None:
                variants[label] = Path(tmp) / label.replace(" ", "-")
                variants[label].mkdir()
                onnx.save(model, str(variants[label] / "model.onnx"), save_as_external_data=True,
                          location="model.onnx.data")
        full = None  # the timing below needs none of it in memory
        sessions = {label: session(path, threads) for label, path in variants.items()}

        def timed(label: str, steps: int) -> list[float]:
            if label == "MatMulNBits alone":
                return kernel_calls(sessions[label], steps)
            return decode_steps(sessions[label], *shape, args.past, steps)

        labels = list(sessions)
        for label in labels:  # warm-up
            timed(label, 8)
        rounds = {label: [] for label in labels}
        for r in range(args.rounds):
            for label in (labels if r % 2 == 0 else labels[::-1]):
                rounds[label].append(float(np.median(timed(label, args.steps))))
    print(f"machine: {machine_line(describe_machine())}; {threads} threads; past {args.past}, {args.steps} steps, "
          f"{args.rounds} rounds; {args.artifact}")
    whole = np.array(rounds["whole step"])
    for label in labels:
        ms = np.median(rounds[label]) * 1e3
        line = f"{label:28s} {ms:6.2f} ms"
        if label.startswith("without"):
            diff = whole - np.array(rounds[label])
            line += f"   cost of the part: {np.median(diff) * 1e3:5.2f} ms per step ({np.median(diff / whole):.1%})"
        elif label == "MatMulNBits alone":
            line += f"   {np.median(np.array(rounds[label]) / whole):.1%} of the whole step"
        print(line)
    return 0


if __name__ == "__main__":
    from benchmarks.compression import run_main

    sys.exit(run_main(main, None))
