"""Graph passes, each on a model written inline in ONNX text: the op types after, the same outputs on
ONNX Runtime CPU with its own optimizations off (so they cannot hide a bug), and onnx.checker's
full check."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper, parser

from exporter.passes import (
    BEFORE_QUANTIZE, CPU_FUSION_CLEANUP, QAT_EXPORT, GraphIndex, PassResult, fold_transposed_weight_qdq,
    name_unnamed_nodes, run_passes, unfuse_skip_layer_norm,
)
from runtimes.errors import CheckFailed

SKIP_LAYER_NORM = """
<ir_version: 8, opset_import: ["" : 17, "com.microsoft" : 1]>
g (float[2, 3, 4] x, float[2, 3, 4] skip) => (float[2, 3, 4] y) <float[4] gamma = {1.0, 2.0, 0.5, 1.5},
    float[4] beta = {0.1, -0.2, 0.3, 0.0}, float[4] bias = {0.5, -0.5, 0.25, 1.0}> {
    y, mean, inv, total = com.microsoft.SkipLayerNormalization <epsilon: float = 1e-5> (x, skip, gamma, beta, bias)
}
"""

QDQ_WEIGHT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3] x) => (float[2, 4] y) <float[4, 3] W = {0.1, -0.6, 0.625, 1.2, -0.375, 0.0, 0.3, 0.8, -1.1, 0.45, 0.2, -0.9},
    float[4] s = {0.25, 0.25, 0.125, 0.5}, int8[4] zp = {0, 0, 0, 0}> {
    wq = QuantizeLinear <axis = 0> (W, s, zp)
    wd = DequantizeLinear <axis = 0> (wq, s, zp)
    wt = Transpose <perm = [1, 0]> (wd)
    y = MatMul (x, wt)
}
"""

UNNAMED = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3] x) => (float[2, 3] y) {
    a = Relu (x)
    Relu_1 = Neg (a)
    y = Abs (Relu_1)
}
"""

# a graph none of the passes matches: a plain Transpose -> MatMul, named nodes, no contrib ops
PLAIN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3] x) => (float[2, 4] y) <float[4, 3] W = {0.1, -0.6, 0.625, 1.2, -0.375, 0.0, 0.3, 0.8, -1.1, 0.45, 0.2, -0.9}> {
    [t] wt = Transpose <perm = [1, 0]> (W)
    [m] y = MatMul (x, wt)
}
"""


def run_ort(model, feeds):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def apply(p, text, feeds):
    """Parse ``text``, run it, apply the pass ``p``, check the result; returns (result, before, after)."""
    model = parser.parse_model(text)
    before = run_ort(model, feeds)
    result = p(model)
    assert isinstance(result, PassResult) and result.model is model
    onnx.checker.check_model(result.model, full_check=True)
    return result, before, run_ort(result.model, feeds)


def ops(model):
    return [n.op_type for n in model.graph.node]


def test_unfuse_skip_layer_norm():
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(2, 3, 4)).astype(np.float32), "skip": rng.normal(size=(2, 3, 4)).astype(np.float32)}
    result, before, after = apply(unfuse_skip_layer_norm, SKIP_LAYER_NORM, feeds)
    assert result.modified and result.count == 1
    assert ops(result.model) == ["Add", "Add", "LayerNormalization"]
    assert onnx.helper.get_attribute_value(result.model.graph.node[2].attribute[1]) == pytest.approx(1e-5)
    np.testing.assert_allclose(after[0], before[0], rtol=1e-5, atol=1e-5)


def test_unfuse_skip_layer_norm_leaves_one_whose_statistics_are_read():
    text = SKIP_LAYER_NORM.replace("=> (float[2, 3, 4] y)", "=> (float[2, 3, 4] y, float[2, 3, 1] mean)")
    model = parser.parse_model(text)
    result = unfuse_skip_layer_norm(model)
    assert not result.modified and ops(model) == ["SkipLayerNormalization"]


def test_unfuse_skip_layer_norm_needs_opset_17():
    model = parser.parse_model(SKIP_LAYER_NORM.replace('"" : 17', '"" : 16'))
    with pytest.raises(CheckFailed, match="opset 17"):
        unfuse_skip_layer_norm(model)


def test_fold_transposed_weight_qdq():
    feeds = {"x": np.random.default_rng(1).normal(size=(2, 3)).astype(np.float32)}
    result, before, after = apply(fold_transposed_weight_qdq, QDQ_WEIGHT, feeds)
    assert result.modified and result.count == 1
    assert ops(result.model) == ["DequantizeLinear", "MatMul"]
    inits = GraphIndex(result.model.graph).initializers
    assert sorted(inits) == ["W_int8_t", "s", "zp"]  # the float weight is gone
    assert numpy_helper.to_array(inits["W_int8_t"]).dtype == np.int8
    assert numpy_helper.to_array(inits["W_int8_t"]).shape == (3, 4)
    np.testing.assert_array_equal(after[0], before[0])


def test_fold_leaves_an_asymmetric_pair():
    model = parser.parse_model(QDQ_WEIGHT.replace("int8[4] zp = {0, 0, 0, 0}", "int8[4] zp = {0, 1, 0, 0}"))
    assert not fold_transposed_weight_qdq(model).modified and len(model.graph.node) == 4


def test_name_unnamed_nodes():
    feeds = {"x": np.random.default_rng(2).normal(size=(2, 3)).astype(np.float32)}
    result, before, after = apply(name_unnamed_nodes, UNNAMED, feeds)
    assert result.modified and result.count == 3
    assert [n.name for n in result.model.graph.node] == ["Relu_0", "Neg_1", "Abs_2"]
    assert ops(result.model) == ["Relu", "Neg", "Abs"]
    np.testing.assert_array_equal(after[0], before[0])


@pytest.mark.parametrize("p", [unfuse_skip_layer_norm, fold_transposed_weight_qdq, name_unnamed_nodes])
def test_a_pass_on_a_graph_it_does_not_match_changes_nothing(p):
    model = parser.parse_model(PLAIN)
    onnx.checker.check_model(model, full_check=True)
    text = model.SerializeToString()
    result = p(model)
    assert result == PassResult(model, False, 0)
    assert model.SerializeToString() == text


def test_pipelines_are_tuples_of_passes():
    for pipeline in (CPU_FUSION_CLEANUP, QAT_EXPORT, BEFORE_QUANTIZE):
        assert isinstance(pipeline, tuple) and all(callable(p) for p in pipeline)
    model = parser.parse_model(QDQ_WEIGHT)
    result = run_passes((name_unnamed_nodes, fold_transposed_weight_qdq), model)
    assert result.modified and result.count == 4 + 1 and ops(model) == ["DequantizeLinear", "MatMul"]


def test_graph_index_lookups():
    model = parser.parse_model(PLAIN)
    index = GraphIndex(model.graph)
    assert index.producers["wt"].name == "t" and [n.name for n in index.consumers["wt"]] == ["m"]
    assert index.made_by("wt", "Transpose") is index.producers["wt"] and index.made_by("wt", "MatMul") is None
    assert index.uses("y") == 1 and index.uses("W") == 1 and not index.is_used("nothing")
    assert index.is_const("W") and not index.is_const("wt") and index.const("W").shape == (4, 3)
    assert set(index.value_infos) == {"x", "y"}
