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


def _held_out_kl(reference, candidate, texts) -> float:
    """Mean KL(reference || candidate) of the next-token distributions over every position of ``texts``."""
    import onnxruntime as ort

    from evaluation.data import TextDataset
    from evaluation.llm_metrics import log_softmax
    from exporter.weight_search import prefill_feeds
    from runtimes.tasks import get_task

    task = get_task("text-generation")
    model = onnx.load(str(reference / "model.onnx"))
    encoded = task.encode_batches(task.load_processor(reference), TextDataset(source="held out", texts=texts), 1,
                                  max_length=64)
    runs = [ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"]) for d in (reference, candidate)]
    kl, positions = 0.0, 0
    for feed in prefill_feeds(model, encoded):
        ref, cand = (log_softmax(r.run(["logits"], feed)[0][0]) for r in runs)
        kl += float((np.exp(ref) * (ref - cand)).sum())
        positions += len(ref)
    return kl / positions


def test_gptq_beats_rtn_on_held_out_texts_with_one_rounding_on_rtns_grid(llama_onnx, tmp_path, capsys):
    """GPTQ on 30 calibration sentences: every MatMul in 4-bit MatMulNBits whose scales are RTN's
    (the grid of the float weight), recorded in the manifest, and a lower KL against the float model
    than RTN's on the 13 sentences it did not see."""
    from evaluation.data import load_texts
    from exporter.gptq import rtn_grid

    texts = load_texts(None).texts
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(texts[:30]) + "\n")
    gptq, rtn = tmp_path / "gptq", tmp_path / "rtn"
    assert main(["quantize", str(llama_onnx), "--mode", "weight-only", "--algorithm", "gptq", "--calib", str(calib),
                 "--calib-rows", "30", "-o", str(gptq)]) == 0
    assert "15 of 15 MatMuls" in capsys.readouterr().out
    assert main(["quantize", str(llama_onnx), "--mode", "weight-only", "-o", str(rtn), "-q"]) == 0
    q = load_artifact(gptq).manifest["quantization"]
    assert q["gptq"]["calibration_rows"] == 30 and q["gptq"]["matmuls"] == 15
    assert load_artifact(gptq).manifest["options"]["algorithm"] == "gptq"

    def blocks(path):
        model = onnx.load(str(path / "model.onnx"))
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
        return {n.name: (inits[n.input[1]], inits[n.input[2]]) for n in model.graph.node if n.op_type == "MatMulNBits"}

    a, b = blocks(gptq), blocks(rtn)
    assert a.keys() == b.keys() and len(a) == 15
    assert all(np.array_equal(a[k][1], b[k][1]) for k in a)  # RTN's scales: the codes were rounded once, on its grid
    assert sum(not np.array_equal(a[k][0], b[k][0]) for k in a) >= 10  # and GPTQ chose other codes
    float_model = onnx.load(str(llama_onnx / "model.onnx"))
    fold_transposed_matmul_weights(float_model)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in float_model.graph.initializer}
    lm_head = next(n for n in float_model.graph.node if n.name == "/lm_head/MatMul")
    np.testing.assert_array_equal(a["/lm_head/MatMul_Q4"][1], rtn_grid(inits[lm_head.input[1]], 4, 32, True)[0])
    held_out = texts[30:]
    kl_gptq, kl_rtn = _held_out_kl(llama_onnx, gptq, held_out), _held_out_kl(llama_onnx, rtn, held_out)
    assert kl_gptq < 0.8 * kl_rtn, (kl_gptq, kl_rtn)


def test_gptq_takes_8_bits_exclusions_and_accuracy_levels(llama_onnx, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", str(llama_onnx), "--mode", "weight-only", "--algorithm", "gptq", "--calib-rows", "4",
                 "--bits", "8", "--exclude", "/lm_head/MatMul", "--accuracy-level", "4", "-o", str(out)]) == 0
    assert "14 of 15 MatMuls, 1 kept in float" in capsys.readouterr().out
    levels = _levels(out / "model.onnx")
    assert len(levels) == 14 and set(levels.values()) == {(8, 4)} and "/lm_head/MatMul_Q8" not in levels


def test_gptq_refuses_tensorrt_in_one_line(llama_onnx, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", str(llama_onnx), "--mode", "weight-only", "--algorithm", "gptq", "--target", "tensorrt",
                 "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no --target tensorrt" in err[0], err
    assert not out.exists()


def _prefill(path):
    """Logits of a fixed prompt (batch 1, empty cache) through an ONNX artifact."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(load_artifact(path).model_file), providers=["CPUExecutionProvider"])
    ids = np.array([[3, 17, 5, 9, 2, 11]])
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    names = {i.name for i in sess.get_inputs()}
    if "position_ids" in names:
        feeds["position_ids"] = np.arange(ids.shape[1])[None]
    feeds.update({i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in sess.get_inputs()
                  if i.name.startswith("past")})
    return sess.run(["logits"], feeds)[0]


@pytest.mark.parametrize("block", [32, 16])
def test_hqq_float_zero_points_become_integer_ones_plus_the_remainder(llama_onnx, tmp_path, monkeypatch, block):
    """ONNX Runtime's HQQ writes float zero points (a slow CPU path); they are rewritten as integer
    zero points plus the remainder: the same logits at accuracy level 0, close at 4 (folded rows)."""
    from exporter import weight_only

    config = WeightOnlyConfig(algorithm="hqq", symmetric=False, block_size=block)
    art = quantize_weights(llama_onnx, tmp_path / "fast", config)
    record = art.manifest["quantization"]["float_zero_points_as_integer"]
    assert record["rewritten"] == 15 and len(record["packed"]) == 4 and record["remainders_folded"] == []
    graph = onnx.load(str(art.model_file)).graph
    floats = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    assert not [n for n in graph.node if n.op_type == "MatMulNBits" and len(n.input) > 3 and n.input[3] in floats]
    monkeypatch.setattr(weight_only, "integer_zero_points", lambda model: {})  # ONNX Runtime's form, as written
    slow = quantize_weights(llama_onnx, tmp_path / "slow", config)
    assert slow.manifest["quantization"]["float_zero_points_as_integer"] is None
    reference = _prefill(slow.path)
    assert np.abs(_prefill(art.path) - reference).max() < 1e-4 * max(1.0, np.abs(reference).max())
    monkeypatch.undo()
    folded = quantize_weights(llama_onnx, tmp_path / "int8", WeightOnlyConfig(algorithm="hqq", symmetric=False,
                                                                             block_size=block, accuracy_level=4))
    assert len(folded.manifest["quantization"]["float_zero_points_as_integer"]["remainders_folded"]) == 15
    assert np.abs(_prefill(folded.path) - reference).max() < 0.05 * np.abs(reference).max()
