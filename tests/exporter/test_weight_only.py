"""Weight-only INT4/INT8 (MatMulNBits) on a tiny Llama export, the tied lm_head included."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from enginewright.cli import main
from exporter.passes.transposed_weights import fold_transposed_matmul_weights
from exporter.weight_only import WeightOnlyConfig, quantize_weights
from runtimes import load_artifact
from runtimes.errors import UsageError

GRAPH = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3] x) => (float[2, 4] y) <float[4, 3] emb = {1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12.}> {
    t = Transpose <perm = [1, 0]> (emb)
    y = MatMul (x, t)
}
"""


def _run(model, x):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_the_transposed_embedding_becomes_a_constant_matmul_weight():
    model = onnx.parser.parse_model(GRAPH)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    before = _run(model, x)
    result = fold_transposed_matmul_weights(model)
    assert result.modified and result.count == 1
    assert [n.op_type for n in model.graph.node] == ["MatMul"]
    np.testing.assert_array_equal(_run(model, x), before)
    onnx.checker.check_model(model, full_check=True)
    again = fold_transposed_matmul_weights(model)
    assert not again.modified and again.count == 0


@pytest.fixture(scope="module")
def llama_onnx(tiny_llama, tmp_path_factory):
    from exporter import export_hf

    return export_hf(tiny_llama, tmp_path_factory.mktemp("wo") / "onnx", progress=False).path


@pytest.mark.parametrize("bits", [4, 8])
def test_every_matmul_weight_is_quantized_including_the_lm_head(llama_onnx, tmp_path, bits):
    art = quantize_weights(llama_onnx, tmp_path / "q", WeightOnlyConfig(bits=bits))
    q = art.manifest["quantization"]
    assert q["quantized"] == q["matmuls_with_constant_weights"] == 15 and "folded" in q["lm_head"]
    nodes = onnx.load(str(art.model_file)).graph.node
    lm_head = [n for n in nodes if n.name.startswith("/lm_head") and n.op_type == "MatMulNBits"]
    # 8 bits at float activations are written as two exact 4-bit kernels (exporter/passes/nibbles.py)
    assert [dict((a.name, a.i) for a in n.attribute)["bits"] for n in lm_head] == ([4] if bits == 4 else [4, 4])
    assert art.size_bytes() < load_artifact(llama_onnx).size_bytes()


def test_int8_keeps_the_tokens_and_excluded_matmuls_stay_float(tiny_llama, llama_onnx, tmp_path, capsys):
    from evaluation.data import TextDataset
    from evaluation.llm_compare import LlmCompareConfig, run_llm_compare

    argv = ["quantize", str(llama_onnx), "--mode", "weight-only", "--bits", "8", "--exclude", "/lm_head/MatMul",
            "-o", str(tmp_path / "int8")]
    assert main(argv) == 0
    assert "14 of 15 MatMuls, 1 kept in float" in capsys.readouterr().out
    data = TextDataset(source="inline", texts=("the quick brown fox jumps over the lazy dog", "hello there"))
    out = run_llm_compare(tiny_llama, [tmp_path / "int8"], data, config=LlmCompareConfig(max_new_tokens=4))
    assert out.report["candidates"][0]["top1_agreement"] > 0.9


def test_bad_weight_only_settings_are_one_line(llama_onnx, tmp_path):
    with pytest.raises(UsageError, match="--block-size 48"):
        WeightOnlyConfig(block_size=48)
    with pytest.raises(UsageError, match="--bits 3"):
        WeightOnlyConfig(bits=3)
    with pytest.raises(UsageError, match="hqq"):
        WeightOnlyConfig(algorithm="hqq", symmetric=True)
    with pytest.raises(UsageError, match="--exclude 'nope'"):
        quantize_weights(llama_onnx, tmp_path / "q", WeightOnlyConfig(exclude=("nope",)))
    assert not (tmp_path / "q").exists()


def _levels(model_file) -> dict[str, tuple[int, int]]:
    """MatMulNBits node -> (bits, accuracy_level)."""
    out = {}
    for n in onnx.load(str(model_file), load_external_data=False).graph.node:
        if n.op_type == "MatMulNBits":
            a = {x.name: x.i for x in n.attribute}
            out[n.name] = (a["bits"], a.get("accuracy_level", 0))
    return out


def test_accuracy_level_per_matmul(llama_onnx, tmp_path, capsys):
    """A bare level sets every MatMul, NAME=LEVEL the ones whose name contains NAME (the last match
    wins); an 8-bit MatMul left at 4 keeps ONNX Runtime's 8-bit kernel, at 0 it becomes two 4-bit ones."""
    out = tmp_path / "q"
    assert main(["quantize", str(llama_onnx), "--mode", "weight-only", "--bits", "8", "--accuracy-level", "4",
                 "--accuracy-level", "layers.1=0", "--accuracy-level", "layers.1/mlp/down=4", "-o", str(out)]) == 0
    assert "accuracy level 4, except" in capsys.readouterr().out
    q = load_artifact(out).manifest["quantization"]
    assert set(q["accuracy_levels"]) == {f"/model/layers.1/{p}/MatMul" for p in
                                         ("self_attn/q_proj", "self_attn/k_proj", "self_attn/v_proj", "self_attn/o_proj",
                                          "mlp/gate_proj", "mlp/up_proj")}
    assert set(q["accuracy_levels"].values()) == {0} and q["int8_as_two_int4_kernels"] == 6
    levels = _levels(out / "model.onnx")
    assert levels["/lm_head/MatMul_Q8"] == (8, 4) and levels["/model/layers.1/mlp/down_proj/MatMul_Q8"] == (8, 4)
    assert sum(v == (4, 0) for v in levels.values()) == 12  # six MatMuls of layer 1, each two exact 4-bit kernels
    assert all(v == (8, 4) for k, v in levels.items() if "layers.1/" not in k or "down_proj" in k)


@pytest.mark.parametrize("args, words", [
    (["--accuracy-level", "nope=4"], "no MatMul of"),
    (["--accuracy-level", "lm_head=7"], "a level 0..4"),
    (["--accuracy-level", "=4"], "a level 0..4"),
    (["--accuracy-level", "lm_head=4", "--target", "tensorrt"], "MatMulNBits setting"),
])
def test_bad_accuracy_levels_are_one_line(llama_onnx, tmp_path, capsys, args, words):
    out = tmp_path / "q"
    try:
        code = main(["quantize", str(llama_onnx), "--mode", "weight-only", *args, "-o", str(out)])
    except SystemExit as e:  # argparse's own refusal of the value
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not out.exists()


def test_accuracy_levels_from_yaml():
    from enginewright.commands._args import AccuracyLevelArg

    arg = AccuracyLevelArg("--accuracy-level")
    assert [arg(t) for t in arg.from_yaml({"lm_head": 4})] == [("lm_head", 4)]
    assert [arg(t) for t in arg.from_yaml(0)] == [(None, 0)]


def test_gptq_rounds_with_calibration_and_differs_from_rtn(llama_onnx, tmp_path, capsys):
    """ONNX Runtime's GPTQ, fed prefills of the calibration texts: every MatMul in 4-bit MatMulNBits,
    the rounding moved by the Hessians (not RTN's grid), recorded in the manifest."""
    gptq, rtn = tmp_path / "gptq", tmp_path / "rtn"
    assert main(["quantize", str(llama_onnx), "--mode", "weight-only", "--algorithm", "gptq", "--calib-rows", "4",
                 "-o", str(gptq)]) == 0
    assert "15 of 15 MatMuls" in capsys.readouterr().out
    assert main(["quantize", str(llama_onnx), "--mode", "weight-only", "-o", str(rtn), "-q"]) == 0
    q = load_artifact(gptq).manifest["quantization"]
    assert q["gptq"]["calibration_rows"] == 4 and load_artifact(gptq).manifest["options"]["algorithm"] == "gptq"

    def packed(path):
        model = onnx.load(str(path / "model.onnx"))
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
        return {n.name: inits[n.input[1]] for n in model.graph.node if n.op_type == "MatMulNBits"}

    a, b = packed(gptq), packed(rtn)
    assert a.keys() == b.keys() and len(a) == 15
    assert sum(not np.array_equal(a[k], b[k]) for k in a) >= 10


@pytest.mark.parametrize("args, words", [
    (["--bits", "8"], "pass --bits 4"),
    (["--exclude", "/lm_head/MatMul"], "drop --exclude"),
    (["--target", "tensorrt"], "no --target tensorrt"),
])
def test_gptq_refusals_are_one_line(llama_onnx, tmp_path, capsys, args, words):
    out = tmp_path / "q"
    assert main(["quantize", str(llama_onnx), "--mode", "weight-only", "--algorithm", "gptq", *args, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not out.exists()
