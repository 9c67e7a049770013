"""The perplexity-budgeted weight-only search on a tiny Llama export: costliest MatMul first, the
budget met or exit 1 in one line, the choices in the manifest."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest

from enginewright.cli import main
from exporter.weight_only import WeightOnlyConfig, quantize_weights
from exporter.weight_search import fake_quant
from runtimes.errors import CheckFailed, UsageError

PLANTED = "/lm_head/MatMul"


@pytest.fixture(scope="module")
def planted_onnx(tiny_llama, tmp_path_factory):
    """The tiny Llama export with one outlier per block of the lm_head's weight, so INT4 of that
    MatMul crushes the rest of its blocks (unplanted, o_proj of layer 0 is the costliest)."""
    from exporter import export_hf
    from exporter.passes.transposed_weights import fold_transposed_matmul_weights
    from runtimes import load_artifact

    art = export_hf(tiny_llama, tmp_path_factory.mktemp("ws") / "onnx", progress=False)
    model = onnx.load(str(art.model_file))
    fold_transposed_matmul_weights(model)
    name = next(n.input[1] for n in model.graph.node if n.name == PLANTED)
    init = next(i for i in model.graph.initializer if i.name == name)
    w = onnx.numpy_helper.to_array(init).copy()
    w[::32] = 12 * np.abs(w).max()
    init.CopyFrom(onnx.numpy_helper.from_array(w.astype(np.float32), name))
    onnx.save(model, str(art.model_file))
    manifest = json.loads((art.path / "manifest.json").read_text())
    data = art.model_file.read_bytes()
    manifest["files"]["model.onnx"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (art.path / "manifest.json").write_text(json.dumps(manifest))
    return load_artifact(art.path).path


def test_fake_quant_is_the_matmulnbits_kernel():
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from onnxruntime.quantization import matmul_nbits_quantizer as mq

    rng = np.random.default_rng(0)
    w, x = rng.standard_normal((80, 24)).astype(np.float32), rng.standard_normal((3, 80)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 80])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 24])], [onnx.numpy_helper.from_array(w, "w")])
    for bits, sym in ((4, True), (4, False), (8, True)):
        q = mq.MatMulNBitsQuantizer(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]),
                                    algo_config=WeightOnlyConfig(bits=bits, symmetric=sym).algo_config())
        q.process()
        y = ort.InferenceSession(q.model.model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_allclose(y, x @ fake_quant(w, bits, 32, sym), atol=1e-4)


def _scorer(model_dir):
    from evaluation.data import load_texts
    from exporter.passes.transposed_weights import fold_transposed_matmul_weights
    from exporter.weight_search import Scorer
    from runtimes.tasks import get_task

    model = onnx.load(str(model_dir / "model.onnx"))
    fold_transposed_matmul_weights(model)
    consts = {i.name for i in model.graph.initializer}
    weights = {n.name: n.input[1] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in consts}
    task = get_task("text-generation")
    data = load_texts(None)
    encoded = task.encode_batches(task.load_processor(model_dir), type(data)(source="s", texts=data.texts[:8]), 4,
                                  max_length=40)
    return Scorer(model, weights, encoded)


def test_the_planted_matmul_is_costliest_and_promoted_first(planted_onnx):
    from exporter.weight_search import search

    scorer = _scorer(planted_onnx)
    # a random model's perplexity moves either way under INT4: -100% cannot be met, so every step is taken
    with pytest.raises(CheckFailed, match="not met with the 1 costliest"):
        search(scorer, -1.0, 1, 32, True)
    steps = []
    with pytest.raises(CheckFailed, match="not met with the 2 costliest"):
        search(scorer, -1.0, 2, 32, True, log=steps.append)
    costs = {n: scorer.score({n: fake_quant(w, 4, 32, True)})[1] for n, w in scorer.float.items()}
    assert max(costs, key=costs.get) == PLANTED


def test_a_loose_budget_is_met_and_the_choices_are_recorded(planted_onnx, tmp_path, capsys):
    argv = ["quantize", str(planted_onnx), "--mode", "weight-only", "--max-ppl-increase", "1000%", "-o", str(tmp_path / "q")]
    assert main(argv) == 0
    assert "0 MatMuls kept INT8, 0 float, 15 INT4" in capsys.readouterr().out
    art = quantize_weights(planted_onnx, tmp_path / "q8", WeightOnlyConfig(max_ppl_increase=10.0, max_promoted=15))
    s = art.manifest["quantization"]["weight_only"]
    assert s["costs"][PLANTED]["rank"] == 1 and sum(s["counts"].values()) == 15
    assert set(s["kept"]) == set(art.manifest["quantization"]["kept_int8"]) | set(art.manifest["quantization"]["kept_float"])
    # measured again on the written MatMulNBits model: the search's de-quantized weights up to the kernels' float order
    assert abs(s["ppl_change_built"] - s["ppl_change_calibration"]) < 1e-4 and s["kl_mean_built"] > 0
    assert abs(s["kl_mean_built"] - s["kl_mean_calibration"]) < 0.05 * s["kl_mean_calibration"]


def test_a_built_model_over_the_budget_is_exit_1_and_nothing_written(planted_onnx, tmp_path, capsys, monkeypatch):
    """The search met the budget on its de-quantized weights, the written model does not (as int8
    activations could make it): exit 1 in one line, no artifact."""
    from exporter import weight_search

    real = weight_search.Scorer.score_model
    monkeypatch.setattr(weight_search.Scorer, "score_model", lambda self, path: (real(self, path)[0] + 1.0, 0.0))
    argv = ["quantize", str(planted_onnx), "--mode", "weight-only", "--max-ppl-increase", "50%", "-o", str(tmp_path / "q")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "--max-ppl-increase 50.00%: the built model measures" in err[-1]
    assert not (tmp_path / "q").exists()


def _budget_met_after(monkeypatch, promotions: int) -> None:
    """Make the search's scores 100 points worse until ``promotions`` MatMuls are out of INT4 (after
    the 15 single-MatMul scores and the all-INT4 one), so it promotes exactly that many."""
    from exporter import weight_search

    real, calls = weight_search.Scorer.score, []

    def score(self, overrides):
        calls.append(1)
        ppl, kl = real(self, overrides)
        return (ppl if len(calls) > 15 + promotions else ppl + 1.0), kl

    monkeypatch.setattr(weight_search.Scorer, "score", score)


def test_mixed_int8_and_int4_are_built_as_chosen(planted_onnx, tmp_path, monkeypatch):
    _budget_met_after(monkeypatch, 2)
    art = quantize_weights(planted_onnx, tmp_path / "q", WeightOnlyConfig(max_ppl_increase=0.5, max_promoted=15))
    q = art.manifest["quantization"]
    assert q["weight_only"]["counts"] == {"int4": 13, "int8": 2, "float": 0} and PLANTED in q["kept_int8"]
    assert [s["step"] for s in q["weight_only"]["steps"]][:2] == ["all int4", f"{PLANTED} -> int8"]
    bits = {n.name: {a.name: a.i for a in n.attribute}.get("bits") for n in onnx.load(str(art.model_file)).graph.node
            if n.op_type == "MatMulNBits"}
    # the two INT8 MatMuls run at float activations, so each is two exact 4-bit kernels (passes/nibbles.py)
    assert sorted(bits.values()) == [4] * (13 + 2 * 2) and q["int8_as_two_int4_kernels"] == 2
    assert sorted(n.rsplit("/", 1)[-1] for n in bits if n.startswith(PLANTED)) == ["high", "low"]


def test_an_unreachable_budget_is_exit_1_in_one_line(planted_onnx, tmp_path, capsys, monkeypatch):
    from exporter import weight_search

    real = weight_search.Scorer.score
    monkeypatch.setattr(weight_search.Scorer, "score", lambda self, o: (real(self, o)[0] + 1.0, 0.0))
    argv = ["quantize", str(planted_onnx), "--mode", "weight-only", "--max-ppl-increase", "2%", "--max-promoted", "2",
            "-o", str(tmp_path / "q")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "--max-ppl-increase 2.00%: not met with the 2 costliest MatMuls in float" in err[-1]
    assert not (tmp_path / "q").exists()
    with pytest.raises(UsageError, match="searches INT4 models: pass --bits 4"):
        WeightOnlyConfig(bits=8, max_ppl_increase=0.02)


def test_the_search_scores_and_writes_hqqs_weights(planted_onnx, tmp_path, monkeypatch):
    """``--algorithm hqq --max-ppl-increase``: the search scores HQQ's INT4 weights (its own routine),
    promotes to RTN INT8, writes the rest with HQQ, and the written model measures what it scored."""
    from exporter import weight_search

    _budget_met_after(monkeypatch, 1)
    art = quantize_weights(planted_onnx, tmp_path / "hqq", WeightOnlyConfig(algorithm="hqq", symmetric=False,
                                                                            max_ppl_increase=0.5))
    q = art.manifest["quantization"]
    s = q["weight_only"]
    assert "(HQQ, de-quantized)" in s["method"] and q["kept_int8"] == [PLANTED] and s["counts"]["int4"] == 14
    assert q["float_zero_points_as_integer"]["rewritten"] == 14  # HQQ's, as integer zero points
    # the written model is the scored one: the same perplexity change up to the kernels' float order
    assert abs(s["ppl_change_built"] - s["ppl_change_calibration"]) < 1e-4
    direct = weight_search.hqq_fake_quant(np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32), 4, 32)
    assert direct.shape == (40, 6) and np.isfinite(direct).all()


def test_the_search_scores_and_writes_gptqs_codes(planted_onnx, tmp_path):
    """``--algorithm gptq --max-ppl-increase``: the search measures the INT4 weights GPTQ chose (closer
    to the float model than round to nearest on the same texts) and the artifact holds those codes."""
    config = {"max_ppl_increase": 10.0, "calib_rows": 8}
    rtn = quantize_weights(planted_onnx, tmp_path / "rtn", WeightOnlyConfig(**config))
    gptq = quantize_weights(planted_onnx, tmp_path / "gptq", WeightOnlyConfig(algorithm="gptq", **config))
    r, g = (a.manifest["quantization"]["weight_only"] for a in (rtn, gptq))
    assert "GPTQ's codes" in g["method"] and "round to nearest" in r["method"]
    # (the planted lm_head dominates both: measured KL 0.090 against 0.100)
    assert g["steps"][0]["step"] == "all int4" and g["steps"][0]["kl_mean"] < r["steps"][0]["kl_mean"]
    assert gptq.manifest["quantization"]["gptq"]["matmuls"] == 15

    def codes(art):
        model = onnx.load(str(art.model_file))
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
        return {n.name: (inits[n.input[1]], inits[n.input[2]]) for n in model.graph.node if n.op_type == "MatMulNBits"}

    a, b = codes(gptq), codes(rtn)
    assert a.keys() == b.keys() and len(a) == 15 and all(np.array_equal(a[k][1], b[k][1]) for k in a)
    assert sum(not np.array_equal(a[k][0], b[k][0]) for k in a) >= 10


def test_the_last_grown_step_is_bisected_to_the_fewest_promotions(planted_onnx, monkeypatch):
    """Steps grow (1 at a time, then a quarter more of those done); when the budget is first met by a
    step of several, the search keeps the shortest costliest-first part of it that still meets it."""
    from exporter import weight_search
    from exporter.weight_search import search

    scorer = _scorer(planted_onnx)
    q4 = {n: fake_quant(w, 4, 32, True) for n, w in scorer.float.items()}
    real = weight_search.Scorer.score

    def score(self, weights):  # sensitivities are real; the whole model meets the budget from 13 promotions on
        if len(weights) == 1:
            return real(self, weights)
        promoted = sum(not np.array_equal(w, q4[n]) for n, w in weights.items())
        return (0.0 if promoted >= 13 else 1.0), 0.0

    monkeypatch.setattr(weight_search.Scorer, "score", score)
    result = search(scorer, 0.5, 15, 32, True)
    steps = [s["step"] for s in result.steps]
    # 8 single steps, then 2, 2 and 3 (12 -> 15 meets the budget), bisected back to 13
    assert steps[-2].startswith("3 more") and steps[-1] == "bisect: the first 1 of the last 3 -> int8"
    assert sum(c == "int8" for c in result.choices.values()) == 13 and result.ppl_change == 0.0
