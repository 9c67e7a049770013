"""The compact decoder graph (``export --graph cpu``) and the exact carry-over of GGUF blocks
(``quantize --mode weight-only --from-gguf``), on tiny Llamas."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from enginewright.cli import main
from exporter.passes.core import attr
from runtimes import load_artifact, open_runner
from runtimes.generation import GenerationConfig, generate
from runtimes.tasks import get_task
from tests.exporter.test_gguf import write_tiny_gguf

pytest.importorskip("gguf", reason="the gguf package is not installed (pip install -e '.[dev]')")

# one type per projection kind, so every carry-over form is exercised: Q4_1 (block-sum term),
# Q4_0 (default zero point), Q8_0 (8 bits; the tied lm_head reads token_embd)
QUANT = {"attn_q": "Q4_1", "attn_k": "Q4_0", "attn_v": "Q4_1", "attn_output": "Q8_0", "ffn_gate": "Q4_1",
         "ffn_up": "Q4_0", "ffn_down": "Q4_1", "token_embd": "Q8_0"}


@pytest.fixture(scope="module")
def gguf_model(tiny_llama, tmp_path_factory):
    """A quantized tiny GGUF, imported, and its compact export."""
    root = tmp_path_factory.mktemp("gguf_q")
    gguf_file = write_tiny_gguf(root / "tiny-q.gguf", tiny_llama, quant=QUANT)
    assert main(["import-gguf", str(gguf_file), "-o", str(root / "hf")]) == 0
    assert main(["export", str(root / "hf"), "--graph", "cpu", "-o", str(root / "cpu"), "-q"]) == 0
    return root


def _prompts(art):
    task = get_task("text-generation")
    batch = type("Batch", (), {"texts": ("the quick brown fox", "a b")})()
    return task.encode(task.load_processor(art.path), batch)


def _tokens(path, enc, runtime="onnxruntime:cpu"):
    with open_runner(load_artifact(path), runtime) as runner:
        return generate(runner, enc, GenerationConfig(max_new_tokens=6)).tokens


def _prefill_logits(path, enc):
    """An ONNX artifact's prefill logits at the real (unpadded) positions of ``enc``."""
    with open_runner(load_artifact(path), "onnxruntime:cpu") as runner:
        feeds = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                 "position_ids": np.maximum(np.cumsum(enc["attention_mask"], 1) - 1, 0)}
        feeds.update({s.name: np.zeros((len(enc["input_ids"]), s.shape[1], 0, s.shape[3]), np.float32)
                      for s in runner.input_specs() if s.name.startswith("past")})
        return runner.infer(feeds)["logits"][enc["attention_mask"].astype(bool)]


def test_compact_graph_matches_pytorch_with_far_fewer_nodes(tiny_llama, tiny_llama_onnx, tmp_path, capsys):
    out = tmp_path / "cpu"
    assert main(["export", str(tiny_llama), "--graph", "cpu", "-o", str(out)]) == 0
    assert "parity vs torch:cpu" in capsys.readouterr().out
    m = load_artifact(out).manifest
    assert m["options"]["graph"] == "cpu" and m["parity"]["top1_agreement"] == 1.0
    assert m["parity"]["prefill_max_abs"] < 1e-4 and m["parity"]["decode_max_abs"] < 1e-4
    compact = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    portable = onnx.load(str(tiny_llama_onnx / "model.onnx"), load_external_data=False).graph
    assert len(compact.node) * 4 < len(portable.node)
    assert {n.op_type for n in compact.node} >= {"SkipSimplifiedLayerNormalization", "RotaryEmbedding"}
    assert [i.name for i in compact.input] == [i.name for i in portable.input]
    assert [o.name for o in compact.output] == [o.name for o in portable.output]
    # left-padded batch of two, greedy: the same tokens as PyTorch through the one loop
    enc = _prompts(load_artifact(out))
    assert (enc["attention_mask"] == 0).any()
    assert np.array_equal(_tokens(out, enc), _tokens(tiny_llama, enc, "torch:cpu"))


def test_compact_graph_refuses_what_it_does_not_write(tiny_gpt2, tiny_llama, tmp_path, capsys):
    assert main(["export", str(tiny_gpt2), "--graph", "cpu", "-o", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--graph cpu" in err[0] and "--graph portable" in err[0]
    assert main(["export", str(tiny_llama), "--graph", "cpu", "--opset", "17", "-o", str(tmp_path / "b")]) == 2
    assert "opset 23" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_gguf_blocks_carried_over_exactly(gguf_model, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", str(gguf_model / "cpu"), "--mode", "weight-only", "--from-gguf", "source", "-o", str(out)]) == 0
    assert "the GGUF file's own blocks" in capsys.readouterr().out
    q = load_artifact(out).manifest["quantization"]
    # 2 layers x 7 projections + the tied lm_head, each matched to its tensor by value
    assert q["quantized"] == 15 and q["kept_float"] == []
    assert q["gguf"]["by_type"] == {"Q4_0": 4, "Q4_1": 8, "Q8_0": 3}
    assert q["gguf"]["matched"]["/lm_head/MatMul"] == "token_embd.weight (Q8_0)"
    # each layer's q/k/v and gate/up are one kernel each (Q4_0 beside Q4_1: zero points 8 and 0, one minimum term)
    assert sorted(len(g) for g in q["gguf"]["packed"]) == [2, 2, 3, 3]
    graph = onnx.load(str(out / "model.onnx")).graph
    assert sum(n.op_type == "Split" for n in graph.node) == 4
    assert not [n for n in graph.node if n.op_type == "MatMul" and n.name.endswith("proj/MatMul")]
    # accuracy level 0: the products are the float model's up to rounding order
    enc = _prompts(load_artifact(out))
    assert np.abs(_prefill_logits(gguf_model / "cpu", enc) - _prefill_logits(out, enc)).max() < 1e-4


def test_gguf_carry_over_on_the_portable_graph_too(gguf_model, tmp_path):
    """Blocks are matched by value, so optimum's graph (a Transpose-fed lm_head) takes them as well."""
    onnx_dir, out = tmp_path / "onnx", tmp_path / "q"
    assert main(["export", str(gguf_model / "hf"), "-o", str(onnx_dir), "-q"]) == 0
    assert main(["quantize", str(onnx_dir), "--mode", "weight-only", "--from-gguf", "source", "-o", str(out), "-q"]) == 0
    q = load_artifact(out).manifest["quantization"]
    assert q["quantized"] == 15 and q["kept_float"] == []
    enc = _prompts(load_artifact(out))
    assert np.array_equal(_tokens(out, enc), _tokens(gguf_model / "hf", enc, "torch:cpu"))


def test_from_gguf_refusals(gguf_model, tiny_llama_onnx, tmp_path, capsys):
    gguf_file = next(gguf_model.glob("*.gguf"))
    cases = [
        # a model that was not imported from a GGUF: nothing in its lineage
        ([str(tiny_llama_onnx), "--from-gguf", "source"], "was imported from a GGUF file; give the file's path"),
        # weights that are not the file's: no MatMul matches
        ([str(tiny_llama_onnx), "--from-gguf", str(gguf_file)], "no MatMul weight"),
        ([str(gguf_model / "cpu"), "--from-gguf", str(tmp_path / "missing.gguf")], "no such file"),
        ([str(gguf_model / "cpu"), "--from-gguf", "source", "--max-ppl-increase", "2%"], "drop --max-ppl-increase"),
        # --force may not replace what the run reads: the imported reference up the lineage, the GGUF file
        ([str(gguf_model / "cpu"), "--from-gguf", "source", "--force", "-o", str(gguf_model / "hf")], "is the input"),
        ([str(gguf_model / "cpu"), "--from-gguf", "source", "--force", "-o", str(gguf_file)], "is the input"),
    ]
    for i, (args, words) in enumerate(cases):
        out = tmp_path / f"out{i}"
        assert main(["quantize", *args, "--mode", "weight-only", *(["-o", str(out)] if "-o" not in args else [])]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], (args, err)
        assert not out.exists()


def test_compare_reports_agreement_on_greedy_continuations(tiny_llama, tiny_llama_onnx, tmp_path):
    """The FP32 export's next-token picks on PyTorch's own greedy continuations agree everywhere;
    the INT4 RTN copy's agree less (the measure can fail)."""
    int4 = tmp_path / "int4"
    assert main(["quantize", str(tiny_llama_onnx), "--mode", "weight-only", "--bits", "4", "-o", str(int4), "-q"]) == 0
    out = tmp_path / "cmp"
    assert main(["compare", str(tiny_llama), str(tiny_llama_onnx), str(int4), "--limit", "4", "--max-new-tokens", "8",
                 "-o", str(out), "-q"]) == 0
    rows = json.loads((out / "report.json").read_text())["candidates"]
    assert rows[0]["continuation_top1"] == 1.0
    assert 0 <= rows[1]["continuation_top1"] < 1.0
    assert "top-1 on greedy continuations" in (out / "report.md").read_text()


def test_tensorrt_check_sends_the_compact_graph_back_to_the_portable_export(tiny_llama, tmp_path, capsys):
    out = tmp_path / "cpu"
    assert main(["export", str(tiny_llama), "--graph", "cpu", "-o", str(out), "-q"]) == 0
    capsys.readouterr()
    assert main(["check", str(out), "--target", "tensorrt"]) == 1
    errors = [line for line in capsys.readouterr().out.splitlines() if line.startswith("error")]
    assert errors and all("--graph portable" in line for line in errors)


def test_gguf_blocks_exact_but_the_lm_head_at_int8_activations(gguf_model, tmp_path, capsys):
    """``--accuracy-level lm_head=4``: every layer exact, the tied lm_head's Q8_0 blocks on ONNX
    Runtime's 8-bit kernel with int8 activations (one node instead of two 4-bit ones)."""
    out = tmp_path / "q"
    assert main(["quantize", str(gguf_model / "cpu"), "--mode", "weight-only", "--from-gguf", "source",
                 "--accuracy-level", "lm_head=4", "-o", str(out)]) == 0
    assert "except /lm_head/MatMul at 4" in capsys.readouterr().out
    q = load_artifact(out).manifest["quantization"]
    assert q["accuracy_level"] == 0 and q["accuracy_levels"] == {"/lm_head/MatMul": 4}
    nodes = [n for n in onnx.load(str(out / "model.onnx")).graph.node if n.op_type == "MatMulNBits"]
    attrs = {n.name: {a.name: a.i for a in n.attribute} for n in nodes}
    assert [(a["bits"], a["accuracy_level"]) for k, a in attrs.items() if "lm_head" in k] == [(8, 4)]
    assert all(a["accuracy_level"] == 0 for k, a in attrs.items() if "lm_head" not in k)
    enc = _prompts(load_artifact(out))
    assert np.array_equal(_tokens(out, enc), _tokens(gguf_model / "hf", enc, "torch:cpu"))


def test_q4_1_blocks_are_centred_on_their_zero_point():
    """``d * q + m`` written as ``d * (q - z) + r``: the same weights bit for bit, ``z`` the integer
    zero point nearest ``-m / d`` (so ``|r| <= d / 2`` where ``-m / d`` lies in 0..15)."""
    from exporter.gguf_weights import Blocks, centred

    rng = np.random.default_rng(0)
    d = rng.uniform(0.001, 0.05, (8, 4)).astype(np.float16).astype(np.float32)
    m = (-d * rng.uniform(-2, 18, (8, 4))).astype(np.float16).astype(np.float32)
    q = rng.integers(0, 16, (8, 4, 32), dtype=np.uint8)
    b = Blocks("t", "Q4_1", 4, q, d, m)
    z, r = centred(b)
    assert z.dtype == np.uint8 and z.min() >= 0 and z.max() <= 15
    again = (d[..., None] * (q.astype(np.float32) - z[..., None]) + r[..., None]).reshape(8, -1)
    assert np.array_equal(again, b.dequantize())
    inside = (-m / d >= 0) & (-m / d <= 15)
    assert (np.abs(r[inside]) <= d[inside] / 2 + 1e-7).all() and inside.sum() < inside.size  # both cases drawn


def test_q4_1_remainders_fold_into_two_nibbles_per_chunk():
    """``folded``: 8-bit remainders as two 4-bit rows, ``16 s (hi - z_hi) + s (lo - z_lo)``, within
    half an 8-bit step of each remainder; the unused tail of the last chunk sits at its zero point."""
    from exporter.gguf_weights import QK, folded

    rng = np.random.default_rng(1)
    r = rng.uniform(-0.02, 0.03, (5, 48)).astype(np.float32)  # 48 blocks: one whole chunk of 32, one of 16
    codes, scales, zeros = folded(r)
    assert codes.shape == (5, 4, QK) and scales.shape == zeros.shape == (5, 4) and codes.max() <= 15
    hi, lo = codes[:, :2].astype(np.float32), codes[:, 2:].astype(np.float32)
    back = (scales[:, :2, None] * (hi - zeros[:, :2, None]) + scales[:, 2:, None] * (lo - zeros[:, 2:, None]))
    back = back.reshape(5, -1)
    step = scales[:, 2:]  # the 8-bit step per chunk
    assert (np.abs(back[:, :48] - r) <= np.repeat(step, QK, axis=1)[:, :48] / 2 + 1e-8).all()
    assert np.allclose(back[:, 48:], 0)
    assert np.allclose(scales[:, :2], 16 * scales[:, 2:])


def test_gguf_blocks_at_int8_activations_fold_the_remainders(gguf_model, tmp_path):
    """``--accuracy-level 4``: the Q4_1 kernels read ``[x, block sums]`` and hold their remainders as
    rows, so no float remainder MatMul is left; the logits stay as close to the exact artifact's as
    int8 activations with float remainders do (leaving the remainders out would not)."""
    exact, fast = tmp_path / "exact", tmp_path / "fast"
    for out, extra in ((exact, []), (fast, ["--accuracy-level", "4"])):
        assert main(["quantize", str(gguf_model / "cpu"), "--mode", "weight-only", "--from-gguf", "source",
                     *extra, "-o", str(out), "-q"]) == 0
    record = load_artifact(fast).manifest["quantization"]["gguf"]
    assert load_artifact(exact).manifest["quantization"]["gguf"]["remainders_folded"] == []
    assert len(record["remainders_folded"]) == 12  # per layer: q/k/v, gate/up (Q4_0 beside Q4_1), down
    graph = onnx.load(str(fast / "model.onnx")).graph
    assert not [n for n in graph.node if n.op_type == "MatMul" and "min_offset" in n.name]
    folded_kernels = [n for n in graph.node if n.op_type == "MatMulNBits" and n.input[0].endswith("x_with_block_sums")]
    assert len(folded_kernels) == 6
    enc = _prompts(load_artifact(exact))
    logits = {path: _prefill_logits(path, enc) for path in (exact, fast)}
    # measured: 0.026 folded, 0.028 with the float remainder MatMul at level 4, 0.49 with remainders left out
    err = np.abs(logits[fast] - logits[exact]).max() / np.abs(logits[exact]).max()
    assert err < 0.05, err
    _breakdown_runs_on(fast)


def _breakdown_runs_on(artifact):
    """benchmarks.decode_breakdown's variants of a folded artifact: each a valid model of the same
    outputs with the part gone (the lm_head a Gather, the fold's nodes a Pad), and the kernels alone."""
    from benchmarks import decode_breakdown as bd

    def ops(model):
        return [n.op_type for n in model.graph.node]

    model = onnx.load(str(artifact / "model.onnx"))
    kernels = sum(o == "MatMulNBits" for o in ops(model))
    assert bd.without_fold(model) and "ReduceSum" not in ops(model) and "Pad" in ops(model)
    assert bd.without_lm_head(model) and ops(model).count("MatMulNBits") == kernels - 1
    onnx.checker.check_model(model)
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.array([[3, 5, 7]])
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(3)[None]}
    feeds.update({i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
                  for i in sess.get_inputs() if i.name.startswith("past")})
    logits = sess.run(["logits"], feeds)[0]
    assert logits.shape[:2] == (1, 3) and np.isfinite(logits).all()
    alone = bd.kernels_alone(onnx.load(str(artifact / "model.onnx")))
    assert ops(alone) == ["MatMulNBits"] * kernels
    assert bd.main([str(artifact), "--rounds", "1", "--past", "3", "--steps", "2"]) == 0


# a Q4_K_M file's types: Q4_K and Q6_K, with Q5_0 where llama.cpp falls back (rows not a multiple of 256)
K_QUANT = {"attn_q": "Q4_K", "attn_k": "Q6_K", "attn_v": "Q4_K", "attn_output": "Q6_K", "ffn_gate": "Q4_K",
           "ffn_up": "Q5_0", "ffn_down": "Q6_K", "token_embd": "Q6_K"}


@pytest.fixture(scope="module")
def k_quant_model(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf_k")
    gguf_file = write_tiny_gguf(root / "tiny-k.gguf", tiny_llama, quant=K_QUANT, hidden=256, ff=256)
    assert main(["import-gguf", str(gguf_file), "-o", str(root / "hf"), "-q"]) == 0
    assert main(["export", str(root / "hf"), "--graph", "cpu", "-o", str(root / "cpu"), "-q"]) == 0
    return root


def test_k_quant_blocks_carried_over_exactly(k_quant_model, tmp_path):
    """Q4_K (eight blocks of 32 with a scale and a minimum each: the Q4_1 form), Q6_K (8 bits in
    blocks of 16) and Q5_0 (8 bits): every weight matched by value, the products the float model's."""
    out = tmp_path / "q"
    assert main(["quantize", str(k_quant_model / "cpu"), "--mode", "weight-only", "--from-gguf", "source",
                 "-o", str(out), "-q"]) == 0
    q = load_artifact(out).manifest["quantization"]
    assert q["quantized"] == 15 and q["kept_float"] == [] and q["gguf"]["float"] == []
    assert q["gguf"]["by_type"] == {"Q4_K": 6, "Q5_0": 2, "Q6_K": 7}
    assert q["gguf"]["matched"]["/lm_head/MatMul"] == "token_embd.weight (Q6_K)"
    graph = onnx.load(str(out / "model.onnx")).graph
    sizes = {(a.i if a.name == "block_size" else None) for n in graph.node if n.op_type == "MatMulNBits"
             for a in n.attribute if a.name == "block_size"}
    assert sizes == {16, 32}
    enc = _prompts(load_artifact(out))
    fa, fb = _prefill_logits(k_quant_model / "cpu", enc), _prefill_logits(out, enc)
    assert np.abs(fa - fb).max() < 1e-4 * max(1.0, np.abs(fa).max())
    assert np.array_equal(_tokens(out, enc), _tokens(k_quant_model / "hf", enc, "torch:cpu"))


def test_k_quant_blocks_at_int8_activations(k_quant_model, tmp_path):
    """--accuracy-level 4 on the same blocks (Q4_K's minimums folded into the kernels): close to the
    float model, not equal."""
    out = tmp_path / "q4"
    assert main(["quantize", str(k_quant_model / "cpu"), "--mode", "weight-only", "--from-gguf", "source",
                 "--accuracy-level", "4", "-o", str(out), "-q"]) == 0
    q = load_artifact(out).manifest["quantization"]
    assert q["kept_float"] == [] and len(q["gguf"]["remainders_folded"]) == 6
    enc = _prompts(load_artifact(out))
    fa, fb = _prefill_logits(k_quant_model / "cpu", enc), _prefill_logits(out, enc)
    assert np.abs(fa - fb).max() < 0.05 * np.abs(fa).max()


def test_rounding_a_gguf_model_again_notes_the_exact_path(gguf_model, tiny_llama_onnx, tmp_path, capsys):
    assert main(["quantize", str(gguf_model / "cpu"), "--mode", "weight-only", "-o", str(tmp_path / "rtn")]) == 0
    err = capsys.readouterr().err
    assert "imported from" in err and "(F32)" not in err and "--from-gguf source writes the file's own blocks" in err
    assert main(["quantize", str(tiny_llama_onnx), "--mode", "weight-only", "-o", str(tmp_path / "plain")]) == 0
    assert "--from-gguf" not in capsys.readouterr().err


def test_compact_graph_continues_several_tokens_after_a_past(tiny_llama, tmp_path):
    """GroupQueryAttention takes a chunk of tokens after a cache at batch 1 (PyTorch's numbers); at a
    larger batch ONNX Runtime refuses it, which the project's loops never ask (docs/llm.md)."""
    out = tmp_path / "cpu"
    assert main(["export", str(tiny_llama), "--graph", "cpu", "-o", str(out), "-q"]) == 0
    ids = np.array([[5, 9, 14, 3, 8, 21, 2]])
    logits = {}
    for path, runtime in ((out, "onnxruntime:cpu"), (tiny_llama, "torch:cpu")):
        with open_runner(load_artifact(path), runtime) as r:
            empty = {s.name: np.zeros((1, s.shape[1], 0, s.shape[3]), np.float32) for s in r.input_specs()
                     if s.name.startswith("past")}
            first = r.infer({"input_ids": ids[:, :4], "attention_mask": np.ones((1, 4), np.int64),
                             "position_ids": np.arange(4)[None], **empty})
            past = {"past_key_values" + k[len("present"):]: v for k, v in first.items() if k.startswith("present.")}
            logits[runtime] = r.infer({"input_ids": ids[:, 4:], "attention_mask": np.ones((1, 7), np.int64),
                                       "position_ids": np.arange(4, 7)[None], **past})["logits"]
    assert np.abs(logits["onnxruntime:cpu"] - logits["torch:cpu"]).max() < 1e-4


# a Q5_K_M file's types: Q5_K and Q6_K, Q5_1 where llama.cpp falls back; 8-bit kernels with minimums
K5_QUANT = {"attn_q": "Q5_K", "attn_k": "Q5_1", "attn_v": "Q5_K", "attn_output": "Q6_K", "ffn_gate": "Q5_K",
            "ffn_up": "Q5_1", "ffn_down": "Q5_K", "token_embd": "Q6_K"}


def _carried_over_at_levels_0_and_4(tiny_llama, tmp_path, quant):
    """A tiny Llama (hidden and FFN 256, for the K-quants' super-blocks) written to GGUF with ``quant``,
    imported, exported compact and quantized ``--from-gguf source`` at levels 0 and 4 (``q0``, ``q4``
    under ``tmp_path``); returns both manifests' quantization records."""
    gguf_file = write_tiny_gguf(tmp_path / "tiny.gguf", tiny_llama, quant=quant, hidden=256, ff=256)
    assert main(["import-gguf", str(gguf_file), "-o", str(tmp_path / "hf"), "-q"]) == 0
    assert main(["export", str(tmp_path / "hf"), "--graph", "cpu", "-o", str(tmp_path / "cpu"), "-q"]) == 0
    for level in ("0", "4"):
        assert main(["quantize", str(tmp_path / "cpu"), "--mode", "weight-only", "--from-gguf", "source",
                     "--accuracy-level", level, "-o", str(tmp_path / f"q{level}"), "-q"]) == 0
    return tuple(load_artifact(tmp_path / f"q{lv}").manifest["quantization"] for lv in "04")


def test_q5_blocks_with_minimums_carried_over(tiny_llama, tmp_path):
    """Q5_K and Q5_1 (five bits with a float minimum per block of 32) as 8-bit kernels with an integer
    zero point and the remainder: exact at level 0 (a float remainder MatMul), close at level 4
    (the remainders as the kernel's own 8-bit rows)."""
    q0, q4 = _carried_over_at_levels_0_and_4(tiny_llama, tmp_path, K5_QUANT)
    assert q0["kept_float"] == [] and q0["gguf"]["by_type"] == {"Q5_1": 4, "Q5_K": 8, "Q6_K": 3}
    assert q0["gguf"]["remainders_folded"] == [] and len(q4["gguf"]["remainders_folded"]) == 12
    graph = onnx.load(str(tmp_path / "q4" / "model.onnx")).graph
    assert any(n.input[0].endswith("/x_with_block_sums8") for n in graph.node if n.op_type == "MatMulNBits")
    enc = _prompts(load_artifact(tmp_path / "q0"))
    ref = _prefill_logits(tmp_path / "cpu", enc)
    assert np.abs(_prefill_logits(tmp_path / "q0", enc) - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
    assert np.abs(_prefill_logits(tmp_path / "q4", enc) - ref).max() < 0.05 * np.abs(ref).max()


# a Q2_K file's types and the IQ4 ones (llama.cpp's fallback for rows that are not a multiple of 256
# is IQ4_NL): Q2_K (2 bits with a minimum) and Q3_K (3 bits) in 4-bit kernels of blocks of 16, packed
# together where they read one input; IQ4_NL / IQ4_XS (indices into a table of int8 values) 8 bits
LOW_QUANT = {"attn_q": "Q2_K", "attn_k": "Q3_K", "attn_v": "IQ4_NL", "attn_output": "IQ4_XS", "ffn_gate": "Q2_K",
             "ffn_up": "Q3_K", "ffn_down": "IQ4_XS", "token_embd": "IQ4_NL"}


def test_two_and_three_bit_and_iq4_blocks_carried_over(tiny_llama, tmp_path, capsys):
    q0, q4 = _carried_over_at_levels_0_and_4(tiny_llama, tmp_path, LOW_QUANT)
    assert q0["kept_float"] == [] and q0["gguf"]["float"] == []
    assert q0["gguf"]["by_type"] == {"IQ4_NL": 3, "IQ4_XS": 4, "Q2_K": 4, "Q3_K": 4}
    assert q0["gguf"]["matched"]["/lm_head/MatMul"] == "token_embd.weight (IQ4_NL)"
    assert ["/model/layers.0/self_attn/q_proj/MatMul", "/model/layers.0/self_attn/k_proj/MatMul"] in q0["gguf"]["packed"]
    assert len(q4["gguf"]["remainders_folded"]) == 8  # the q/k and gate/up pairs: Q2_K's minimums as kernel rows
    graph = onnx.load(str(tmp_path / "q0" / "model.onnx")).graph
    kernels = {(attr(n, "bits"), attr(n, "block_size")) for n in graph.node if n.op_type == "MatMulNBits"}
    assert (4, 16) in kernels and all(block in (16, 32) for _, block in kernels)
    enc = _prompts(load_artifact(tmp_path / "q0"))
    ref = _prefill_logits(tmp_path / "cpu", enc)
    assert np.abs(_prefill_logits(tmp_path / "q0", enc) - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
    assert np.abs(_prefill_logits(tmp_path / "q4", enc) - ref).max() < 0.05 * np.abs(ref).max()
    assert np.array_equal(_tokens(tmp_path / "q0", enc), _tokens(tmp_path / "hf", enc, "torch:cpu"))
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "q4"), "--json"]) == 0  # what was carried over, at a glance
    shown = json.loads(capsys.readouterr().out)["quantization"]
    assert shown["gguf"]["by_type"] == q0["gguf"]["by_type"] and shown["matmuls"] == "15 of 15 quantized"
    assert shown["accuracy_level"] == 4 and shown["kept_float"] == []


def test_from_gguf_source_found_up_the_lineage_and_a_quantized_input_refused(gguf_model, tmp_path, capsys):
    """optimize, then quantize --from-gguf source: the GGUF is two steps up; quantizing the result
    again is refused (it names the artifact, not a scratch file)."""
    assert main(["optimize", str(gguf_model / "cpu"), "--target", "cpu", "-o", str(tmp_path / "opt"), "-q"]) == 0
    out = tmp_path / "q"
    assert main(["quantize", str(tmp_path / "opt"), "--mode", "weight-only", "--from-gguf", "source", "-o", str(out), "-q"]) == 0
    assert load_artifact(out).manifest["quantization"]["gguf"]["float"] == []
    capsys.readouterr()
    for mode in ("weight-only", "dynamic"):
        assert main(["quantize", str(out), "--mode", mode, "-o", str(tmp_path / f"again-{mode}")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{out}: the model is already quantized" in err[0], err


def test_a_gguf_that_matches_few_matmuls_is_warned_about(gguf_model, tiny_llama, tmp_path, capsys):
    """Another file of the same model (other types: only the Q8_0 embedding is the same) leaves most
    MatMuls float; that is said on stderr, not silently written."""
    other = {k: ("Q8_0" if v == "Q8_0" and k == "token_embd" else "Q5_0") for k, v in QUANT.items()}
    gguf_file = write_tiny_gguf(tmp_path / "other.gguf", tiny_llama, quant=other)
    assert main(["quantize", str(gguf_model / "cpu"), "--mode", "weight-only", "--from-gguf", str(gguf_file),
                 "-o", str(tmp_path / "q")]) == 0
    err = capsys.readouterr().err
    assert "warning: only 1 of 15 MatMuls equal a tensor" in err
