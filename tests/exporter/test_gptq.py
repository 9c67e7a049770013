"""GPTQ (exporter/gptq.py): codes on RTN's fixed grid, chosen against the inputs' Hessian, written
to MatMulNBits with one rounding."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from exporter.gptq import dequantize, gptq_codes, layer_loss, round_to_grid, rtn_grid, write_matmulnbits


def _problem(k=128, n=48, seed=0):
    """A weight and the Hessian of correlated inputs with a few loud features, as LLM activations have."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((k, k)) * (rng.random(k) ** 3)[None, :] + np.eye(k)
    x = rng.standard_normal((400, k)) @ mix
    return (rng.standard_normal((k, n)) * 0.05).astype(np.float32), x.T @ x


def _rtn(w, scales, zero, bits, block):
    k, n = w.shape
    padded = np.pad(w, ((0, scales.shape[1] * block - k), (0, 0))).T.reshape(n, -1, block)
    return round_to_grid(padded, scales[..., None], zero[..., None], bits).astype(np.uint8)


@pytest.mark.parametrize("bits, symmetric", [(4, True), (4, False), (8, True)])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_lowers_the_layer_objective_against_rtn_on_the_same_grid(bits, symmetric, act_order):
    w, h = _problem()
    scales, zero = rtn_grid(w, bits, 32, symmetric)
    rtn = dequantize(_rtn(w, scales, zero, bits, 32), scales, zero, w.shape[0])
    # our RTN rounding on the kernel's grid is the kernel's RTN (so the comparison is with the shipped RTN)
    from exporter.weight_search import fake_quant

    np.testing.assert_allclose(rtn, fake_quant(w, bits, 32, symmetric), rtol=0, atol=1e-6)
    ours = dequantize(gptq_codes(w, h, scales, zero, bits, 32, act_order=act_order), scales, zero, w.shape[0])
    assert layer_loss(w, ours, h) < 0.75 * layer_loss(w, rtn, h)


def test_dead_inputs_and_a_ragged_last_block_round_to_nearest():
    w, h = _problem(k=80, n=16)
    h[:, 5] = h[5, :] = 0  # an input no token reaches
    scales, zero = rtn_grid(w, 4, 32, False)
    codes = gptq_codes(w, h, scales, zero, 4, 32)
    assert codes.shape == (16, 3, 32)
    np.testing.assert_array_equal(codes.reshape(16, -1)[:, 80:], np.repeat(zero[:, 2:], 16, axis=1))
    assert np.isfinite(dequantize(codes, scales, zero, 80)).all()


@pytest.mark.parametrize("bits, symmetric", [(4, True), (4, False), (8, False)])
def test_written_matmulnbits_computes_exactly_the_chosen_codes_times_scales(bits, symmetric):
    """One rounding: what ONNX Runtime's kernel multiplies by is ``scale * (code - zero)`` of GPTQ's
    own codes, not a re-quantization of them."""
    import onnxruntime as ort

    k, n = 96, 40
    w, h = _problem(k, n, seed=1)
    scales, zero = rtn_grid(w, bits, 32, symmetric)
    codes = gptq_codes(w, h, scales, zero, bits, 32)
    assert not np.array_equal(codes, _rtn(w, scales, zero, bits, 32))  # GPTQ moved some codes off nearest
    model = onnx.parser.parse_model(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, {k}] x) => (float[N, {n}] y) {{
        r = Relu (x)
        y = MatMul (r, w)
    }}""")
    model.graph.initializer.append(onnx.numpy_helper.from_array(w, "w"))
    model.graph.node[1].name = "/mm/MatMul"
    write_matmulnbits(model, {"/mm/MatMul": (codes, scales, zero, k)}, bits=bits, block_size=32, symmetric=symmetric)
    assert [nd.op_type for nd in model.graph.node] == ["Relu", "MatMulNBits"]
    assert [i.name for i in model.graph.initializer if i.name == "w"] == []
    onnx.checker.check_model(model, full_check=True)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    got = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
        None, {"x": np.eye(k, dtype=np.float32)})[0]
    np.testing.assert_array_equal(got, dequantize(codes, scales, zero, k))


@pytest.mark.parametrize("inline", [True, False])
def test_hessians_are_the_sum_of_xtx_over_every_token_of_every_text(monkeypatch, inline):
    """One Hessian per distinct MatMul input (two MatMuls share ``r``), summed over texts of different
    lengths and folded in chunks; the same through a file with external data (a model over 2 GB)."""
    import exporter.gptq as gptq
    import exporter.onnx_file as onnx_file

    monkeypatch.setattr(gptq, "FOLD_ROWS", 5)
    if not inline:
        monkeypatch.setattr(onnx_file, "INLINE_BYTES", 0)
    rng = np.random.default_rng(2)
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, T, 8] x) => (float[1, T, 4] y, float[1, T, 4] z) {
        r = Relu (x)
        y = MatMul (r, a)
        z = MatMul (r, b)
    }""")
    for name in "ab":
        model.graph.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), name))
    feeds = [{"x": rng.standard_normal((1, t, 8)).astype(np.float32)} for t in (3, 4, 2, 6)]
    hessians = gptq.collect_hessians(model, ["r"], feeds)
    x = np.concatenate([np.maximum(f["x"][0], 0) for f in feeds]).astype(np.float64)
    assert list(hessians) == ["r"]
    np.testing.assert_allclose(hessians["r"], x.T @ x, rtol=1e-12)
