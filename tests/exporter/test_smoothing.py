"""Activation smoothing (SmoothQuant) before INT8: the float graph computes the same thing, the
residual keeps the unscaled tensor, and an outlier channel costs less precision once quantized."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporter.smoothing import channel_absmax, scales, sites, smooth, smooth_file
from tests.exporter.test_passes import run_ort

C, OUT = 32, 48


def block(outlier: float = 1.0, tied: bool = False, seed: int = 0):
    """LayerNorm -> two weight products (Q and V, say) and a residual Add, the shape of a BERT
    sublayer; ``outlier`` scales one channel of the LayerNorm's gamma."""
    rng = np.random.default_rng(seed)
    gamma = np.ones(C, np.float32)
    gamma[5] = outlier
    w1 = rng.normal(0, 0.2, (C, OUT)).astype(np.float32)
    w2 = rng.normal(0, 0.2, (C, OUT)).astype(np.float32)
    inits = [numpy_helper.from_array(gamma, "gamma"), numpy_helper.from_array(np.zeros(C, np.float32), "beta"),
             numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(rng.normal(0, 0.2, (OUT, C)).astype(np.float32), "w3")]
    if not tied:
        inits.append(numpy_helper.from_array(w2, "w2"))
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln", axis=-1),
             helper.make_node("MatMul", ["h", "w1"], ["a"], name="q"),
             helper.make_node("MatMul", ["h", "w1" if tied else "w2"], ["b"], name="v"),
             helper.make_node("Add", ["a", "b"], ["ab"], name="sum"),
             helper.make_node("MatMul", ["ab", "w3"], ["o"], name="out"),  # reads no normalization: left alone
             helper.make_node("Add", ["o", "h"], ["y"], name="residual")]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 7, C])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 7, C])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def feeds(n=4, seed=1):
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0, 1, (2, 7, C)).astype(np.float32)} for _ in range(n)]


def smoothed(model, alpha=0.5):
    found = sites(model)
    peaks = channel_absmax(model, [s.tensor for s in found], feeds())
    record = smooth(model, peaks, alpha, found)
    return model, record


def test_smoothing_keeps_the_float_graph_and_the_residual():
    before = block(outlier=20.0)
    ref = [run_ort(before, f)[0] for f in feeds(seed=7)]
    model, record = smoothed(block(outlier=20.0))
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["LayerNormalization", "Mul", "MatMul", "MatMul", "Add", "MatMul", "Add"]
    by_name = {n.name: n for n in model.graph.node}
    assert by_name["q"].input[0] == by_name["v"].input[0] == "h_smoothed" and by_name["residual"].input[1] == "h"
    assert by_name["out"].input[0] == "ab"  # not made by a normalization
    [site] = record["tensors"]
    assert site["tensor"] == "h" and site["consumers"] == ["q", "v"] and site["max_scale"] > 2 * site["min_scale"]
    for f, want in zip(feeds(seed=7), ref):
        np.testing.assert_allclose(run_ort(model, f)[0], want, rtol=1e-4, atol=1e-4)


def test_an_outlier_channel_costs_less_once_smoothed(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    float_model = block(outlier=40.0)
    onnx.save(float_model, str(tmp_path / "plain.onnx"))
    smooth_file(tmp_path / "plain.onnx", tmp_path / "smooth.onnx", feeds(), 0.5)
    errors = {}
    for name in ("plain", "smooth"):
        quantize_dynamic(str(tmp_path / f"{name}.onnx"), str(tmp_path / f"{name}-q.onnx"), per_channel=True,
                         weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
        q = onnx.load(str(tmp_path / f"{name}-q.onnx"))
        assert any(n.op_type == "MatMulInteger" for n in q.graph.node)
        errors[name] = np.mean([np.abs(run_ort(q, f)[0] - run_ort(float_model, f)[0]).mean() for f in feeds(seed=9)])
    assert errors["smooth"] < 0.75 * errors["plain"]  # 0.59x when written (the last product is not smoothed)


def test_a_tied_weight_is_not_smoothed(tmp_path):
    assert sites(block(tied=True)) == []
    model = block(tied=True)
    onnx.save(model, str(tmp_path / "t.onnx"))
    record = smooth_file(tmp_path / "t.onnx", tmp_path / "s.onnx", feeds(), 0.5)
    assert record["tensors"] == [] and [n.op_type for n in onnx.load(str(tmp_path / "s.onnx")).graph.node].count("Mul") == 0


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_scales_move_the_range_by_alpha(alpha):
    act, w = np.array([8.0, 1.0, 0.0, 2.0]), np.array([0.5, 2.0, 1.0, 0.0])
    s = scales(act, w, alpha)
    np.testing.assert_allclose(s[:2], act[:2] ** alpha / w[:2] ** (1 - alpha), rtol=1e-6)
    assert s[2] == s[3] == 1.0  # a silent channel or zero weights: nothing to move
