import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from evaluation.data import load_texts
from exporter.optimize import optimize
from exporter.quantize import QuantizeConfig, quantize
from exporter.trtcheck import OPERATORS, OPSET_RANGE, SOURCE, TRT_VERSION, check_tensorrt
from exporter.trtcheck.check import CONTRIB_FIX, QDQ_FIX
from runtimes.errors import UsageError

FULL_PROFILE = {name: ((1, 1), (4, 32), (8, 128)) for name in ("input_ids", "attention_mask", "token_type_ids")}


def _save(tmp_path, nodes, inputs, outputs, inits=(), opset=18, domains=(), full_check=True):
    """A hand-made graph written as ``model.onnx`` in its own directory, checked by onnx first."""
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    *(helper.make_opsetid(d, 1) for d in domains)])
    onnx.checker.check_model(model, full_check=full_check)
    out = tmp_path / "graph"
    out.mkdir()
    onnx.save_model(model, str(out / "model.onnx"))
    return out


def _float(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _qdq_matmul(tmp_path, *, w_axis=1, act_zp=0, qtype=np.int8, op="MatMul", trans_b=0, quantize_x=True):
    """x[2,4] -> Q/DQ (per tensor) -> MatMul/Gemm with a per-channel DQ INT8 weight."""
    w = np.arange(12, dtype=np.int8).reshape((3, 4) if trans_b else (4, 3))
    inits = [_init("w", w), _init("w_scale", np.full(w.shape[w_axis], 0.1, np.float32)),
             _init("w_zp", np.zeros(w.shape[w_axis], np.int8)), _init("x_scale", np.float32(0.05)),
             _init("x_zp", np.asarray(act_zp, qtype))]
    nodes = [helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zp"], ["w_f"], name="dq_w", axis=w_axis)]
    x = "x"
    if quantize_x:
        nodes += [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], name="q_x"),
                  helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_f"], name="dq_x")]
        x = "x_f"
    attrs = {"transB": trans_b} if op == "Gemm" else {}
    nodes.append(helper.make_node(op, [x, "w_f"], ["y"], name="mm", **attrs))
    return _save(tmp_path, nodes, [_float("x", [2, 4])], [_float("y", [2, 3])], inits)


def _errors(report, op=None):
    return [f for f in report.errors if op is None or f.op == op]


def test_import_is_light():
    code = "import sys, exporter.trtcheck; print([m for m in ('torch', 'onnx', 'onnxruntime', 'tensorrt') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_table_is_tensorrt_10_with_its_source():
    assert TRT_VERSION.startswith("10.") and SOURCE["header"].startswith(f"TensorRT {TRT_VERSION} ")
    assert len(SOURCE["commit"]) == 40 and OPSET_RANGE == (9, 24)
    assert OPERATORS["LayerNormalization"].supported and "FP16" in OPERATORS["LayerNormalization"].types
    assert not OPERATORS["Unique"].supported and not OPERATORS["MatMulInteger"].supported
    assert OPERATORS["DequantizeLinear"].types == ("INT8", "FP8", "FP4", "INT4")
    assert "zero point" in OPERATORS["QuantizeLinear"].restriction


def test_plain_export_is_ready(tiny_onnx):
    report = check_tensorrt(tiny_onnx)
    assert report, str(report)
    assert report.errors == [] and report.warnings == []
    assert any("default profiles (min/opt/max) are default: batch_size 1/8/32" in f.message for f in report.infos)
    assert any("TensorRT 11" in f.message for f in report.infos)  # FP32 throughout: 11 builds FP32
    d = report.to_dict()
    assert d["ready"] is True and d["tensorrt"] == TRT_VERSION and json.dumps(d)
    assert str(report).splitlines()[0].endswith(f"ready (0 errors, 0 warnings, {len(report.infos)} notes)")


@pytest.mark.parametrize("fp16", [False, True])
def test_optimize_tensorrt_output_is_ready(tiny_onnx, tmp_path, fp16):
    art = optimize(tiny_onnx, tmp_path / "trt", target="tensorrt", fp16=fp16, progress=False)
    report = check_tensorrt(art)
    assert report, str(report)
    assert report.warnings == []
    assert check_tensorrt(art, shapes=FULL_PROFILE)


def test_quantize_tensorrt_output_is_ready_and_placed_well(tiny_onnx, tmp_path):
    art = quantize(tiny_onnx, tmp_path / "q", config=QuantizeConfig(target="tensorrt"), calib=load_texts(None),
                   progress=False)
    report = check_tensorrt(art)
    assert report, str(report)
    assert report.warnings == [], str(report)  # no mixed-precision MatMul, no DOUBLE


def test_optimize_cpu_output_fails_naming_the_contrib_op(tiny_onnx, tmp_path):
    report = check_tensorrt(optimize(tiny_onnx, tmp_path / "cpu", target="cpu", progress=False))
    assert not report
    attention = _errors(report, "com.microsoft::Attention")
    assert [f.node for f in attention] == ["Attention_0", "Attention_1"]
    assert all(f.fix == CONTRIB_FIX for f in attention)
    assert "Attention_0 [com.microsoft::Attention]" in str(report)
    assert {f.op for f in report.errors} >= {"com.microsoft::BiasGelu", "com.microsoft::EmbedLayerNormalization"}


def test_dynamic_quantization_fails_with_the_static_qdq_fix(tiny_onnx, tmp_path):
    art = quantize(tiny_onnx, tmp_path / "dyn", config=QuantizeConfig(mode="dynamic"), progress=False)
    report = check_tensorrt(art.model_file)  # a bare .onnx file is accepted too
    assert not report and {f.op for f in report.errors} == {"MatMulInteger", "DynamicQuantizeLinear"}
    assert all(f.fix == QDQ_FIX for f in report.errors)


def test_unsupported_and_unknown_ops_fail(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    nodes = [helper.make_node("Unique", ["x"], ["u"], name="uniq"),
             helper.make_node("Frobnicate", ["u"], ["y"], name="custom", domain="my.ops")]
    report = check_tensorrt(_save(tmp_path, nodes, [x], [_float("y", ["n"])], domains=["my.ops"], full_check=False))
    assert not report
    assert [(f.node, f.op) for f in report.errors] == [("uniq", "Unique"), ("custom", "my.ops::Frobnicate")]
    assert "not supported by TensorRT" in report.errors[0].message


@pytest.mark.parametrize("body_op, ok", [("Erf", True), ("Unique", False)])
def test_model_local_functions_are_checked_by_their_body(tmp_path, body_op, ok):
    fn = helper.make_function("my.fns", "Wrapped", ["a"], ["b"], [helper.make_node(body_op, ["a"], ["b"])],
                              [helper.make_opsetid("", 18)])
    graph = helper.make_graph([helper.make_node("Wrapped", ["x"], ["y"], name="call", domain="my.fns")], "g",
                              [_float("x", [4])], [_float("y", [4])])
    model = helper.make_model(graph, functions=[fn], opset_imports=[helper.make_opsetid("", 18),
                                                                    helper.make_opsetid("my.fns", 1)])
    (tmp_path / "fn").mkdir()
    onnx.save_model(model, str(tmp_path / "fn" / "model.onnx"))
    report = check_tensorrt(tmp_path / "fn")
    assert bool(report) is ok and [f.op for f in report.errors] == ([] if ok else ["Unique"])


def test_opset_outside_range_fails(tmp_path):
    node = helper.make_node("Relu", ["x"], ["y"], name="relu")
    report = check_tensorrt(_save(tmp_path, [node], [_float("x", [2])], [_float("y", [2])], opset=7))
    assert [f.op for f in report.errors] == ["opset"] and "7" in report.errors[0].message


def test_well_placed_qdq_passes(tmp_path):
    report = check_tensorrt(_qdq_matmul(tmp_path))
    assert report and report.warnings == [], str(report)


def test_nonzero_zero_point_fails(tmp_path):
    report = check_tensorrt(_qdq_matmul(tmp_path, act_zp=3))
    assert {f.node for f in report.errors} == {"q_x", "dq_x"}
    assert all("zero point" in f.message for f in report.errors)


def test_uint8_qdq_fails(tmp_path):
    report = check_tensorrt(_qdq_matmul(tmp_path, act_zp=128, qtype=np.uint8))
    assert {f.node for f in report.errors} == {"q_x", "dq_x"}
    assert all("UINT8" in f.message and "signed INT8" in f.message for f in report.errors)


def test_per_channel_scale_on_the_wrong_axis_fails(tmp_path):
    report = check_tensorrt(_qdq_matmul(tmp_path, w_axis=0))
    assert [(f.node, f.op) for f in report.errors] == [("mm", "MatMul")]
    assert "axis 0" in report.errors[0].message and "output-channel axis 1" in report.errors[0].message


@pytest.mark.parametrize("axis, ok", [(0, True), (1, False)])
def test_gemm_trans_b_wants_axis_0(tmp_path, axis, ok):
    assert bool(check_tensorrt(_qdq_matmul(tmp_path, op="Gemm", trans_b=1, w_axis=axis))) is ok


def test_weight_only_graph_is_one_note_and_mixed_precision_a_warning(tmp_path):
    report = check_tensorrt(_qdq_matmul(tmp_path, quantize_x=False))  # no QuantizeLinear anywhere: weight-only
    assert report and report.warnings == []
    assert [f.op for f in report.infos if f.op == "weight-only"] == ["weight-only"]
    # with activations quantized elsewhere in the graph, a MatMul whose activation is float is a warning
    w = np.arange(12, dtype=np.int8).reshape(4, 3)
    inits = [_init("w", w), _init("s", np.full(3, 0.1, np.float32)), _init("xs", np.float32(0.05)),
             _init("xz", np.int8(0))]
    nodes = [helper.make_node("DequantizeLinear", ["w", "s"], ["wf"], name="dq_w", axis=1),
             helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xf"], name="dq_x"),
             helper.make_node("MatMul", ["x", "wf"], ["y"], name="mm"), helper.make_node("Add", ["xf", "x"], ["z"])]
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    report = check_tensorrt(_save(mixed, nodes, [_float("x", [2, 4])], [_float("y", [2, 3]), _float("z", [2, 4])], inits))
    assert [f.node for f in report.warnings] == ["mm"] and "mixed-precision" in report.warnings[0].message


def test_computed_scale_fails(tmp_path):
    nodes = [helper.make_node("Abs", ["s"], ["s_abs"], name="abs"),
             helper.make_node("QuantizeLinear", ["x", "s_abs", "zp"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s_abs", "zp"], ["y"], name="dq")]
    d = _save(tmp_path, nodes, [_float("x", [4]), _float("s", [])], [_float("y", [4])], [_init("zp", np.int8(0))])
    assert {f.node for f in check_tensorrt(d).errors if "scale" in f.message} == {"q", "dq"}


@pytest.mark.parametrize("to, name", [(TensorProto.DOUBLE, "DOUBLE"), (TensorProto.STRING, "STRING")])
def test_cast_to_unsupported_type_fails(tmp_path, to, name):
    node = helper.make_node("Cast", ["x"], ["y"], name="cast", to=to)
    d = _save(tmp_path, [node], [_float("x", [2])], [helper.make_tensor_value_info("y", to, [2])])
    report = check_tensorrt(d)
    assert [(f.node, f.op) for f in report.errors] == [("cast", "Cast")] and f"Cast to {name}" in report.errors[0].message
    if name == "DOUBLE":
        assert [f.node for f in report.warnings] == ["y"]  # a DOUBLE graph output is cast down


def test_used_layernorm_statistics_fail(tmp_path):
    node = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y", "mean"], name="ln", axis=-1)
    d = _save(tmp_path, [node], [_float("x", [2, 4])], [_float("y", [2, 4]), _float("mean", [2, 1])],
              [_init("g", np.ones(4, np.float32)), _init("b", np.zeros(4, np.float32))])
    assert [(f.node, f.op) for f in check_tensorrt(d).errors] == [("ln", "LayerNormalization")]


def _dynamic(tmp_path):
    node = helper.make_node("Add", ["a", "b"], ["y"], name="add")
    return _save(tmp_path, [node], [_float("a", ["batch", "seq"]), _float("b", ["batch", 4])], [_float("y", ["batch", 4])])


def test_profiles_covering_every_dynamic_dim_pass(tmp_path, tiny_onnx):
    d = _dynamic(tmp_path)
    report = check_tensorrt(d, shapes={"a": ((1, 4), (2, 4), (8, 4)), "b": ((1, 4), (2, 4), (8, 4))})
    assert report and not any(f.op == "input" for f in report.findings), str(report)
    assert check_tensorrt(tiny_onnx, shapes=FULL_PROFILE)


def test_missing_profile_fails_and_no_shapes_only_warns(tmp_path):
    d = _dynamic(tmp_path)
    report = check_tensorrt(d, shapes={"a": ((1, 4), (2, 4), (8, 4))})
    assert report.errors == [] and report  # b's batch comes from a's
    report = check_tensorrt(d, shapes={"b": ((1, 4), (2, 4), (8, 4))})
    assert [f.message for f in report.errors] == ["no optimization profile covers input a dim 1 (seq)"]
    assert "add a:MIN,OPT,MAX to --shapes" in report.errors[0].fix
    plain = check_tensorrt(d)  # no manifest to derive profiles from: a warning, not an error
    assert plain and [f.op for f in plain.warnings] == ["input"]


def test_shapes_mean_what_they_mean_to_build(tmp_path, tiny_onnx):
    """An input left out takes its dims from the same dim names in the inputs given, as in build;
    a dim name given two ranges is refused, as build refuses it."""
    report = check_tensorrt(tiny_onnx, shapes={"input_ids": ((1, 1), (8, 128), (32, 512))})
    assert report and not any(f.op == "input" for f in report.findings), str(report)
    with pytest.raises(UsageError, match="two ranges"):
        check_tensorrt(_dynamic(tmp_path), shapes={"a": ((1, 4), (2, 4), (8, 4)), "b": ((1, 4), (4, 4), (16, 4))})


@pytest.mark.parametrize("shapes, match", [
    ({"a": ((1, 4), (2, 4), (8, 4)), "b": ((4, 4), (2, 4), (8, 4))}, r"MIN <= OPT <= MAX"),
    ({"a": ((1, 4), (2, 4), (8, 4)), "nope": ((1, 4), (2, 4), (8, 4))}, r"lacks.*\['a', 'b'\]"),
    ({"a": ((1,), (2,), (8,))}, r"rank"),
    ({"b": ((1, 3), (2, 3), (8, 3))}, r"fixes it at 4"),
    ({"a": ((1, 4), (8, 4))}, r"needs three shapes MIN,OPT,MAX"),
])
def test_bad_profiles_raise_usage_error(tmp_path, shapes, match):
    with pytest.raises(UsageError, match=match) as e:
        check_tensorrt(_dynamic(tmp_path), shapes=shapes)
    assert "\n" not in str(e.value)


def test_refuses_what_is_not_onnx(tiny_bert, tmp_path):
    with pytest.raises(UsageError, match="takes an ONNX artifact"):
        check_tensorrt(tiny_bert)
    with pytest.raises(UsageError, match="no such directory"):
        check_tensorrt(tmp_path / "missing")
    (tmp_path / "broken.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(UsageError, match="not a readable ONNX model"):
        check_tensorrt(tmp_path / "broken.onnx")
