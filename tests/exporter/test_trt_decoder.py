"""The TensorRT route for decoder-only LLMs, on the CPU: what check says of each decoder form, the
weight-only DequantizeLinear form (layout, parity with MatMulNBits on ONNX Runtime), optimize for
TensorRT, and the prefill/decode profiles build derives (TensorRT itself is never imported)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporter.trtbuild import check_range, derive_profiles, profile_set
from exporter.trtcheck import check_tensorrt
from exporter.weight_only import WeightOnlyConfig, quantize_weights
from exporter.weight_qdq import int4_blocks
from runtimes import load_artifact
from runtimes.errors import UsageError
from runtimes.tasks import get_task
from runtimes.trt.engine import select_profile
from tests.conftest import make_tiny_lm

BLOCK = 128


def _session_logits(model_file, feeds):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # so they cannot hide a bug
    return ort.InferenceSession(str(model_file), so, providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]


@pytest.fixture(scope="module")
def llama128_onnx(tmp_path_factory):
    """A tiny Llama with hidden size 128 (K a multiple of TensorRT's INT4 blocks), each weight block's
    largest-magnitude entry made negative: there MatMulNBits' signed scale and TensorRT's positive one
    round alike, so the two forms must agree to float rounding."""
    import torch
    import transformers

    from exporter import export_hf

    d = make_tiny_lm(tmp_path_factory.mktemp("llama128") / "hf", hidden=128)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(d))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2 and p.shape[1] % BLOCK == 0:  # [out, in]: blocks of the MatMul's K are runs of `in`
                blocks = p.view(p.shape[0], -1, BLOCK)
                pick = blocks.abs().argmax(dim=2, keepdim=True)
                sign = torch.where(blocks.gather(2, pick) > 0, -1.0, 1.0)
                blocks.mul_(sign)
    model.save_pretrained(str(d), safe_serialization=True)
    return export_hf(d, tmp_path_factory.mktemp("llama128") / "onnx", progress=False).path


def _prefill(art):
    task = get_task("text-generation")
    tok = task.load_processor(art.path)
    batch = type("B", (), {"texts": ("the quick brown fox jumps", "a longer sentence than the first one, to pad")})()
    enc = task.encode(tok, batch)
    return task.feeds_for(enc, art.inputs, str(art.path)), enc["attention_mask"].astype(bool)


# -- check on each decoder form ------------------------------------------------------------------------
def test_fp32_decoder_export_is_ready_with_its_default_profiles(tiny_llama_onnx):
    report = check_tensorrt(tiny_llama_onnx)
    assert report and report.errors == [] and report.warnings == [], str(report)
    note = next(f.message for f in report.infos if "default profiles" in f.message)
    assert "prefill: batch_size 1/8/32, sequence_length 1/128/128, past_sequence_length 0/0/0" in note
    assert "decode: batch_size 1/8/32, sequence_length 1/1/1, past_sequence_length 1/127/127" in note


def test_matmulnbits_form_fails_naming_the_tensorrt_form(tiny_llama_onnx, tmp_path):
    art = quantize_weights(tiny_llama_onnx, tmp_path / "q", WeightOnlyConfig(bits=4))
    report = check_tensorrt(art)
    assert not report and len(report.errors) == 15
    assert {f.op for f in report.errors} == {"com.microsoft::MatMulNBits"}
    assert all("--mode weight-only --target tensorrt" in f.fix for f in report.errors)


@pytest.mark.parametrize("op, fix", [("GroupQueryAttention", "optimize the plain decoder export with --target tensorrt"),
                                     ("SkipSimplifiedLayerNormalization", "optimize with --target tensorrt"),
                                     ("RotaryEmbedding", "optimize with --target tensorrt"),
                                     ("MultiHeadAttention", "optimize with --target tensorrt")])
def test_ort_decoder_fusions_fail_with_a_fix(tmp_path, op, fix):
    from tests.exporter.test_trtcheck import _float, _save

    node = helper.make_node(op, ["x"], ["y"], name="fused", domain="com.microsoft")
    report = check_tensorrt(_save(tmp_path, [node], [_float("x", [1, 4])], [_float("y", [1, 4])],
                                  domains=["com.microsoft"], full_check=False))
    (err,) = report.errors
    assert err.op == f"com.microsoft::{op}" and "contrib operator" in err.message and fix in err.fix


# -- the weight-only DequantizeLinear form ----------------------------------------------------------------
def test_int4_blocks_are_symmetric_positive_and_exact_where_the_extreme_is_negative():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(256, 6)).astype(np.float32)
    q, scale = int4_blocks(w, BLOCK)
    assert q.min() >= -8 and q.max() <= 7 and scale.shape == (2, 6) and (scale > 0).all()
    deq = (q.reshape(2, BLOCK, 6) * scale[:, None, :]).reshape(256, 6)
    assert np.abs(deq - w).max() <= scale.max() + 1e-6  # half a step, or one where +8 was clipped to 7
    blocks = w.reshape(2, BLOCK, 6)  # a view: make each block's largest-magnitude entry negative
    extreme = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1)[:, None, :], axis=1)
    blocks *= np.where(extreme > 0, -1.0, 1.0).astype(np.float32)
    q, scale = int4_blocks(w, BLOCK)
    deq = (q.reshape(2, BLOCK, 6) * scale[:, None, :]).reshape(256, 6)
    assert np.abs(deq - w).max() <= scale.max() / 2 + 1e-6


def test_int4_qdq_form_matches_matmulnbits_and_passes_check(llama128_onnx, tmp_path):
    qdq = quantize_weights(llama128_onnx, tmp_path / "qdq", WeightOnlyConfig(bits=4, format="qdq"))
    nbits = quantize_weights(llama128_onnx, tmp_path / "nbits", WeightOnlyConfig(bits=4, block_size=BLOCK))
    model = onnx.load(str(qdq.model_file))
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert "MatMulNBits" not in ops and all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dqs) == 15 and next(o.version for o in model.opset_import if o.domain == "") == 21
    inits = {t.name: t for t in model.graph.initializer}
    for dq in dqs:
        attrs = {a.name: a.i for a in dq.attribute}
        w, s = inits[dq.input[0]], numpy_helper.to_array(inits[dq.input[1]])
        assert attrs == {"axis": 0, "block_size": BLOCK} and w.data_type == TensorProto.INT4 and len(dq.input) == 2
        assert s.shape == (w.dims[0] // BLOCK, w.dims[1]) and (s > 0).all()
    q = qdq.manifest["quantization"]
    assert q["format"] == "qdq" and q["quantized"] == 15 and "blocked on K, block 128" in q["kind"]

    feeds, mask = _prefill(load_artifact(llama128_onnx))
    a, b = _session_logits(nbits.model_file, feeds), _session_logits(qdq.model_file, feeds)
    f = _session_logits(llama128_onnx / "model.onnx", feeds)
    assert np.abs(a - b)[mask].max() < 1e-4 * max(1.0, np.abs(a[mask]).max())
    assert np.abs(f - b)[mask].max() > 1e-3  # it is quantized: the match above is not float against float

    report = check_tensorrt(qdq)
    assert report and report.errors == [] and report.warnings == [], str(report)
    assert any(f.op == "weight-only" and "INT4" in f.message for f in report.infos)


def test_int8_qdq_form_is_per_output_channel(llama128_onnx, tmp_path):
    art = quantize_weights(llama128_onnx, tmp_path / "q8", WeightOnlyConfig(bits=8, format="qdq"))
    model = onnx.load(str(art.model_file))
    onnx.checker.check_model(model, full_check=True)
    inits = {t.name: t for t in model.graph.initializer}
    src = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(llama128_onnx / "model.onnx")).graph.initializer}
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dqs) == 15 and art.manifest["options"]["block_size"] is None
    for dq in dqs:
        q, s = numpy_helper.to_array(inits[dq.input[0]]), numpy_helper.to_array(inits[dq.input[1]])
        assert {a.name: a.i for a in dq.attribute} == {"axis": 1} and q.dtype == np.int8 and s.shape == (q.shape[1],)
        w = src.get(dq.input[0].removesuffix("_DQ_Q8"))
        if w is not None:  # the lm_head's weight is the folded embedding, made in quantize
            assert np.abs(q * s - w).max() <= s.max() / 2 + 1e-6
    report = check_tensorrt(art)
    assert report and report.warnings == [] and any(f.op == "weight-only" and "INT8" in f.message for f in report.infos)


@pytest.mark.parametrize("kwargs, match", [
    ({"symmetric": False}, "symmetric weights only"),
    ({"block_size": 32}, "--block-size 32 .* 64 or 128"),
    ({"bits": 8, "block_size": 64}, "per output channel"),
    ({"accuracy_level": 4}, "MatMulNBits setting"),
    ({"max_ppl_increase": 0.02}, "searches the MatMulNBits form"),
])
def test_qdq_config_refuses_what_tensorrt_cannot_take(kwargs, match):
    with pytest.raises(UsageError, match=match):
        WeightOnlyConfig(format="qdq", **kwargs)


def test_qdq_defaults_block_128_and_matmulnbits_keeps_32():
    assert WeightOnlyConfig(format="qdq").block_size == 128 and WeightOnlyConfig().block_size == 32
    assert WeightOnlyConfig(format="qdq", bits=8).block_size is None


def test_a_model_whose_weights_fit_no_block_is_refused(tiny_llama_onnx, tmp_path):
    with pytest.raises(UsageError, match="no MatMul weight fits TensorRT's INT4 layout .*K = 32"):
        quantize_weights(tiny_llama_onnx, tmp_path / "q", WeightOnlyConfig(format="qdq"))
    assert not (tmp_path / "q").exists()


# -- check of blocked DequantizeLinear --------------------------------------------------------------------
def _blocked(tmp_path, q, scale, block, dtype=TensorProto.INT4, axis=0):
    from tests.exporter.test_trtcheck import _float, _save

    k, n = q.shape
    inits = [helper.make_tensor("w", dtype, [k, n], q.flatten().tolist()),
             numpy_helper.from_array(scale.astype(np.float32), "s")]
    nodes = [helper.make_node("DequantizeLinear", ["w", "s"], ["wf"], name="dq", axis=axis, block_size=block),
             helper.make_node("MatMul", ["x", "wf"], ["y"], name="mm")]
    return _save(tmp_path, nodes, [_float("x", [2, k])], [_float("y", [2, n])], inits, opset=21)


@pytest.mark.parametrize("shape, block, dtype, severity, words", [
    ((128, 4), 64, TensorProto.INT8, "error", "block-dequantizes INT4, FP8 and FP4 only"),
    ((96, 4), 64, TensorProto.INT4, "error", "not a multiple of block_size 64"),
    ((128, 3), 64, TensorProto.INT4, "error", "odd last dimension"),
    ((128, 4), 32, TensorProto.INT4, "warning", "block size 32"),
    ((128, 4), 64, TensorProto.UINT4, "error", "UINT4"),
    ((128, 4), 128, TensorProto.INT4, None, None),
])
def test_blocked_dequantize_as_tensorrt_takes_it(tmp_path, shape, block, dtype, severity, words):
    k, n = shape
    q = np.ones(shape, np.int64)
    report = check_tensorrt(_blocked(tmp_path, q, np.full((-(-k // block), n), 0.1), block, dtype))
    found = [f for f in report.findings if f.node == "dq" and f.severity in ("error", "warning")]
    if severity is None:
        assert found == [] and report
    else:
        assert [f.severity for f in found] == [severity] and words in found[0].message


def test_negative_scales_fail(tmp_path):
    report = check_tensorrt(_blocked(tmp_path, np.ones((128, 4), np.int64), np.full((1, 4), -0.1), 128))
    assert any("not positive" in f.message for f in report.errors)


# -- optimize for TensorRT -----------------------------------------------------------------------------------
def test_optimize_tensorrt_on_a_decoder_keeps_standard_ops_and_passes_check(tiny_llama_onnx, tmp_path):
    from exporter.optimize import optimize

    art = optimize(tiny_llama_onnx, tmp_path / "trt", target="tensorrt", progress=False)
    opt = art.manifest["optimization"]
    assert opt["contrib_ops"] == [] and sum(opt["ops_after"].values()) < sum(opt["ops_before"].values())
    parity = art.manifest["parity"]
    assert parity["kind"] == "teacher-forced prefill + one decode step" and parity["top1_agreement"] >= 0.99
    assert parity["prefill_max_abs"] <= 1e-3 and parity["decode_max_abs"] <= 1e-3
    assert check_tensorrt(art)
    with pytest.raises(UsageError, match="--fp16 of a decoder"):
        optimize(tiny_llama_onnx, tmp_path / "fp16", target="tensorrt", fp16=True, progress=False)


# -- profiles -------------------------------------------------------------------------------------------
def test_decoder_profiles_are_prefill_and_decode(tiny_llama_onnx):
    art = load_artifact(tiny_llama_onnx)
    profiles = profile_set(art.inputs, task=art.task, model_dir=art.path, seqs=(1, 16, 64))
    assert list(profiles) == ["prefill", "decode"]
    pre, dec = profiles["prefill"], profiles["decode"]
    assert pre["input_ids"] == ((1, 1), (8, 16), (32, 64))
    assert pre["past_key_values.1.value"] == ((1, 2, 0, 8), (8, 2, 0, 8), (32, 2, 0, 8))
    assert pre["attention_mask"] == pre["input_ids"]  # past 0 + sequence
    assert dec["input_ids"] == ((1, 1), (8, 1), (32, 1)) == dec["position_ids"]
    assert dec["past_key_values.0.key"] == ((1, 2, 1, 8), (8, 2, 16, 8), (32, 2, 127, 8))  # twice 64, within 128
    assert dec["attention_mask"] == ((1, 2), (8, 17), (32, 128))  # past + 1
    ordered = [profiles[k] for k in profiles]
    feeds = {"input_ids": (4, 20), "attention_mask": (4, 20), "past_key_values.0.key": (4, 2, 0, 8)}
    assert select_profile(ordered, feeds) == 0
    feeds = {"input_ids": (4, 1), "attention_mask": (4, 21), "past_key_values.0.key": (4, 2, 20, 8)}
    assert select_profile(ordered, feeds) == 1
    with pytest.raises(UsageError, match="outside every optimization profile"):  # a prefill over a non-empty cache
        select_profile(ordered, {"input_ids": (4, 5), "past_key_values.0.key": (4, 2, 20, 8)})


def test_dims_replace_a_phase_range_and_are_validated(tiny_llama_onnx):
    art = load_artifact(tiny_llama_onnx)
    dims = {"past_sequence_length": (1, 64, 100), "batch_size": (1, 1, 4), "sequence_length": (1, 32, 32)}
    pre, dec = derive_profiles(art.inputs, task=art.task, model_dir=art.path, dims=dims)
    assert pre["input_ids"] == ((1, 1), (1, 32), (4, 32)) and pre["past_key_values.0.key"][2] == (4, 2, 0, 8)
    assert dec["past_key_values.0.key"] == ((1, 2, 1, 8), (1, 2, 64, 8), (4, 2, 100, 8))
    with pytest.raises(UsageError, match="--dims names dim 'heads'"):
        derive_profiles(art.inputs, task=art.task, model_dir=art.path, dims={"heads": (1, 2, 3)})
    with pytest.raises(UsageError, match="--dims past_sequence_length: need 0 <= MIN"):
        derive_profiles(art.inputs, task=art.task, model_dir=art.path, dims={"past_sequence_length": (4, 2, 8)})
    with pytest.raises(UsageError, match="--dims and --shapes"):
        derive_profiles(art.inputs, {"input_ids": ((1, 1), (1, 8), (1, 8))}, task=art.task, dims={"batch_size": (1, 1, 1)})
    assert check_range("x", (0, 0, 1)) == (0, 0, 1)
    with pytest.raises(UsageError, match="MAX >= 1"):
        check_range("x", (0, 0, 0))


def test_given_shapes_make_one_profile_and_cover_the_mask(tiny_llama_onnx):
    art = load_artifact(tiny_llama_onnx)
    shapes = {"input_ids": ((1, 1), (2, 8), (4, 32)), "past_key_values.0.key": ((1, 2, 0, 8), (2, 2, 8, 8), (4, 2, 64, 8))}
    (profile,) = derive_profiles(art.inputs, shapes, task=art.task)
    assert profile["attention_mask"] == ((1, 1), (2, 16), (4, 96)) and profile["past_key_values.1.value"][0] == (1, 2, 0, 8)
    assert check_tensorrt(tiny_llama_onnx, shapes=shapes)


def test_build_records_the_decoder_profiles(tiny_llama_onnx, tmp_path, monkeypatch):
    """Everything build does before TensorRT's builder, with TensorRT and the GPU stood in."""
    import types

    import exporter.trtbuild as tb

    monkeypatch.setattr(tb, "require_tensorrt", lambda: types.SimpleNamespace(__version__="10.16.1"))
    monkeypatch.setattr(tb, "require_cuda", lambda: None)
    monkeypatch.setattr(tb, "gpu_info", lambda: {"name": "NVIDIA H200", "compute_capability": "9.0"})
    monkeypatch.setattr(tb, "_build", lambda *a, **k: b"not a real plan")
    art = tb.build_engine(tiny_llama_onnx, tmp_path / "engine", dims={"batch_size": (1, 2, 4)}, progress=False)
    m = json.loads((art.path / "manifest.json").read_text())
    assert m["builder"]["profile_names"] == ["prefill", "decode"]
    assert m["builder"]["profile_dims"] == {"batch_size": [1, 2, 4]}
    assert [p["input_ids"] for p in m["profiles"]] == [[[1, 1], [2, 128], [4, 128]], [[1, 1], [2, 1], [4, 1]]]
