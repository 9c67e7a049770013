"""Quantization-aware training: calibration, float layers, attention MatMuls, export and the weight fold."""

import pytest
import torch
import transformers

from exporter import export_hf
from exporter.compress import compress
from exporter.training import TrainConfig
from runtimes import open_runner
from runtimes.errors import UsageError
from tests.conftest import LABELS
from tests.exporter.conftest import compress_kw as _kw, dq_feeding as _dq_feeding


def test_qat_exports_qdq_with_the_trained_scales(classifier, splits, tmp_path):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from exporter.compress import QATConfig
    from exporter.compress.qat import load_scales, weight_scales

    art = compress(classifier, tmp_path / "qat", [QATConfig(calib_batches=2)], **_kw(splits))
    assert art.manifest["qat"]["layers"] == 12 and (art.path / "qat_scales.json").is_file()
    act = load_scales(art.path)
    onnx_art = export_hf(art.path, tmp_path / "onnx", progress=False)
    assert onnx_art.manifest["quantization"]["mode"] == "qat" and onnx_art.manifest["parity"]["passed"]
    m = onnx.load(str(onnx_art.model_file))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    consts = {o: numpy_helper.to_array(n.attribute[0].t) for n in m.graph.node if n.op_type == "Constant" for o in n.output}
    values = {**inits, **consts}
    dq_scales = [values[n.input[1]] for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[1] in values]
    # query, key and value read the same tensor, so they share one calibrated scale and one Q/DQ pair
    scalar = sorted({float(np.float32(s)) for s in dq_scales if s.size == 1})
    assert np.allclose(scalar, sorted({float(np.float32(v)) for v in act.values()}), rtol=1e-6), \
        "activation Q/DQ scales differ from the trained ones"
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(art.path))
    want = sorted((weight_scales(mod.weight).numpy() for name, mod in model.named_modules() if name in act), key=lambda a: float(a.sum()))
    got = sorted((s for s in dq_scales if s.size > 1), key=lambda a: float(a.sum()))
    assert len(got) == len(want) == 12
    assert all(np.allclose(g, w, rtol=1e-6) for g, w in zip(got, want)), "weight Q/DQ scales differ from max|w|/127"
    # the Q/DQ graph runs on ONNX Runtime CPU and agrees with the fake-quantized PyTorch model
    with open_runner(onnx_art) as r:
        assert [s.name for s in r.output_specs()] == ["logits"]
    # the weights as quantize --target tensorrt places them: an INT8 initializer [in, out] straight
    # into DequantizeLinear(axis 1) and the MatMul, no Transpose between, nothing for check to flag
    from exporter.trtcheck import check_tensorrt

    assert onnx_art.manifest["rewrite"] == {"folded_weights": 12}
    producer = {o: n for n in m.graph.node for o in n.output}
    linear = [n for n in m.graph.node if n.op_type == "MatMul" and n.input[1] in producer
              and producer[n.input[1]].op_type == "DequantizeLinear"]
    assert len(linear) == 12 and not any(n.op_type == "Transpose" and n.input[0] in producer
                                         and producer[n.input[0]].op_type == "DequantizeLinear" for n in m.graph.node)
    for mm in linear:
        dq = producer[mm.input[1]]
        assert inits[dq.input[0]].dtype == np.int8 and inits[dq.input[0]].ndim == 2
        assert next(a.i for a in dq.attribute if a.name == "axis") == 1
    report = check_tensorrt(onnx_art)
    assert report and not report.warnings, [str(f) for f in report.warnings]


def test_qat_keeps_the_calibrated_model_when_the_fine_tune_only_hurts(classifier, splits, tmp_path):
    """An absurd learning rate wrecks the model: the QAT fine-tune must not beat the calibrated
    starting point (epoch 0) on agreement with the input model, so the saved weights are the input's."""
    from safetensors.torch import load_file

    from exporter.compress import QATConfig

    wreck = TrainConfig(epochs=1, batch_size=8, max_length=32, lr=5.0, patience=None)
    art = compress(classifier, tmp_path / "qat", [QATConfig(calib_batches=2)], train_data=splits / "train.jsonl",
                   eval_data=splits / "eval.jsonl", recovery=wreck, progress=False)
    t = art.manifest["training"]
    assert t["history"][0]["epoch"] == 0 and t["history"][0]["eval_metric"] == t["best_metric"]
    assert t["best_epoch"] == 0 and t["epochs_run"] == 1 and t["history"][1]["eval_metric"] < t["best_metric"]
    assert t["selected_by"].startswith("agreement")
    before, after = load_file(str(classifier / "model.safetensors")), load_file(str(art.path / "model.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_fidelity_and_tie_breaking_epoch_selection(classifier, splits):
    """Agreement first, then the second element of the key: equal agreement at every epoch, and a
    tie-break that improves each epoch, keeps the last epoch; the baseline (epoch 0) loses."""
    import numpy as np

    from evaluation.data import load_tokenizer
    from exporter.compress.api import fidelity
    from exporter.finetune import prepare_text_classification
    from exporter.training import train

    ref = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
    assert fidelity(ref.copy(), ref) == (1.0, 0.0)
    agree, kl = fidelity(np.roll(ref, 1, axis=1), ref)
    assert agree == 0.0 and kl > 0
    assert fidelity([ref[:1], ref[1:]], [ref[:1], ref[1:]]) == (1.0, 0.0)  # per token

    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(classifier))
    data = prepare_text_classification(load_tokenizer(classifier), splits / "train.jsonl", splits / "eval.jsonl", 32,
                                       names=sorted(LABELS))
    calls = iter(range(10))
    result = train(model, data.train, TrainConfig(epochs=2, batch_size=8, max_length=32, patience=None),
                   evaluate=lambda m: (0.5, next(calls)), baseline=True, progress=False)
    assert result.best_epoch == 2 and result.best_metric == 0.5 and result.epochs_run == 2
    assert [h["eval_key"] for h in result.history] == [[0.5, 0.0], [0.5, 1.0], [0.5, 2.0]]


def test_qat_percentile_calibration_clips_below_the_maximum(classifier, splits):
    from evaluation.data import load_tokenizer
    from exporter.compress import QATConfig
    from exporter.compress.qat import calibrate
    from exporter.finetune import prepare_text_classification
    from exporter.training import collate

    with pytest.raises(UsageError, match="percentile"):
        QATConfig(act_percentile=80)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(classifier))
    data = prepare_text_classification(load_tokenizer(classifier), splits / "train.jsonl", splits / "eval.jsonl", 32,
                                       names=sorted(LABELS))
    batches = [collate(data.train, list(range(i, i + 8))) for i in (0, 8)]
    full, clipped = calibrate(model, batches), calibrate(model, batches, percentile=99.0)
    assert full.keys() == clipped.keys() and len(full) == 12
    assert all(clipped[k] <= full[k] for k in full) and any(clipped[k] < full[k] for k in full)


def test_qat_keeps_a_planted_outlier_layer_in_float(classifier, splits, tmp_path):
    """One FFN channel held at 1000 makes the next Linear's per-tensor input scale useless for the
    other channels: the sensitivity ranking must put that layer first and keep it in float."""
    import shutil

    import onnx

    from exporter.compress import QATConfig
    from exporter.compress.qat import load_scales

    planted = tmp_path / "planted"
    shutil.copytree(classifier, planted)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(planted))
    layer = model.bert.encoder.layer[1]
    with torch.no_grad():
        layer.intermediate.dense.weight[3] = 0
        layer.intermediate.dense.bias[3] = 1000  # GELU(1000) = 1000 on every token
        layer.output.dense.weight[:, 3] /= 1000
    model.save_pretrained(str(planted), safe_serialization=True)
    target = "bert.encoder.layer.1.output.dense"

    art = compress(planted, tmp_path / "qat", [QATConfig(calib_batches=2, float_layers=1, sensitivity_batches=2)], **_kw(splits))
    qat = art.manifest["qat"]
    assert qat["float_layers"] == [target] and next(iter(qat["sensitivity"])) == target
    assert qat["layers"] == 11 and target not in load_scales(art.path)
    assert qat["dropout_disabled"] > 0  # the QAT fine-tune ran without dropout
    onnx_art = export_hf(art.path, tmp_path / "onnx", progress=False)
    m = onnx.load(str(onnx_art.model_file))
    matmul = next(n for n in m.graph.node if n.op_type == "MatMul" and "layer.1/output/dense" in n.name)
    producers = {o: n.op_type for n in m.graph.node for o in n.output}
    assert all(producers.get(i) != "DequantizeLinear" for i in matmul.input), "the float layer got Q/DQ"
    assert sum(n.op_type == "QuantizeLinear" for n in m.graph.node) > 0


def test_disable_dropout_turns_every_dropout_off(classifier):
    from exporter.compress.qat import disable_dropout

    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(classifier), attn_implementation="sdpa")
    assert disable_dropout(model) > 0
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert all(getattr(m, "dropout_prob", 0.0) == 0 for m in model.modules())
    assert disable_dropout(model) == 0


def test_qat_attention_puts_qdq_on_both_operands_of_the_attention_matmuls(classifier, splits, tmp_path):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from exporter.compress import QATConfig
    from exporter.compress.qat import load_attention_scales

    art = compress(classifier, tmp_path / "qat", [QATConfig(calib_batches=2, attention=True)], **_kw(splits))
    assert art.manifest["qat"]["attention_matmuls"] == 4
    attn = load_attention_scales(art.path)
    assert len(attn) == 2 and all(len(v) == 4 for v in attn.values())
    # the probabilities' scale is max(P)/127 with max(P) <= 1
    assert all(0 < v[2] <= 1 / 127 + 1e-9 for v in attn.values())
    onnx_art = export_hf(art.path, tmp_path / "onnx", progress=False)
    assert onnx_art.manifest["parity"]["passed"] and onnx_art.manifest["quantization"]["attention_matmuls"] == 4
    m = onnx.load(str(onnx_art.model_file))
    # the scores and context MatMuls (the projections are named .../self/query/MatMul and so on)
    act_matmuls = [n for n in m.graph.node if n.op_type == "MatMul" and "/attention/self/MatMul" in n.name]
    assert len(act_matmuls) == 4
    values = {**{i.name: numpy_helper.to_array(i) for i in m.graph.initializer},
              **{o: numpy_helper.to_array(n.attribute[0].t) for n in m.graph.node if n.op_type == "Constant" for o in n.output}}
    scales = set()
    for mm in act_matmuls:
        dqs = [_dq_feeding(m, i) for i in mm.input]
        assert all(dqs), f"{mm.name}: an operand without Q/DQ"
        scales |= {float(values[d.input[1]]) for d in dqs}
    assert np.allclose(sorted(scales), sorted({float(np.float32(x)) for v in attn.values() for x in v}), rtol=1e-6)


def test_qat_keeps_a_planted_outlier_attention_matmul_in_float(classifier, splits, tmp_path):
    """One value channel of layer 1 scaled by 1000 (and the output projection's matching column
    divided by 1000, so the float model is unchanged) makes the per-tensor scale of V useless for
    the other channels. The Linear ranking keeps the output projection, whose input carries the
    same channel, in float; the attention ranking must then put layer 1's P.V first and keep it in
    float, and the export must leave exactly that MatMul without Q/DQ."""
    import shutil

    import onnx

    from exporter.compress import QATConfig
    from exporter.compress.qat import load_attention_scales

    with pytest.raises(UsageError, match="attention"):
        QATConfig(float_attention=1)
    planted = tmp_path / "planted"
    shutil.copytree(classifier, planted)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(planted))
    layer = model.bert.encoder.layer[1].attention
    with torch.no_grad():
        layer.self.value.weight[0] *= 1000
        layer.self.value.bias[0] *= 1000
        layer.output.dense.weight[:, 0] /= 1000
    model.save_pretrained(str(planted), safe_serialization=True)
    with pytest.raises(UsageError, match="leaves no attention MatMul"):
        compress(planted, tmp_path / "all", [QATConfig(calib_batches=1, attention=True, float_attention=4)], **_kw(splits))

    art = compress(planted, tmp_path / "qat", [QATConfig(calib_batches=2, float_layers=1, attention=True,
                                                         float_attention=1, sensitivity_batches=2)], **_kw(splits))
    qat = art.manifest["qat"]
    target = "bert.encoder.layer.1.attention.self"
    assert qat["float_layers"] == ["bert.encoder.layer.1.attention.output.dense"]
    assert qat["float_attention"] == [f"{target}:context"] and next(iter(qat["attention_sensitivity"])) == f"{target}:context"
    assert qat["attention_matmuls"] == 3
    attn = load_attention_scales(art.path)
    assert attn[target][2:] == [None, None] and all(v is not None for v in attn[target][:2])
    onnx_art = export_hf(art.path, tmp_path / "onnx", progress=False)
    assert onnx_art.manifest["parity"]["passed"] and onnx_art.manifest["quantization"]["attention_matmuls"] == 3
    m = onnx.load(str(onnx_art.model_file))
    act_matmuls = {n.name: n for n in m.graph.node if n.op_type == "MatMul" and "/attention/self/MatMul" in n.name}
    assert len(act_matmuls) == 4
    for name, mm in act_matmuls.items():
        context = name.endswith("/layer.1/attention/self/MatMul_1")
        assert [_dq_feeding(m, i) is not None for i in mm.input] == ([False, False] if context else [True, True]), name


def test_calibrate_attention_leaves_the_attention_fake_quantized(classifier, splits):
    """The QAT fine-tune must see the attention MatMuls quantized, not merely observed."""
    from evaluation.data import load_tokenizer
    from exporter.compress.qat import calibrate_attention
    from exporter.finetune import prepare_text_classification
    from exporter.training import collate

    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(classifier), attn_implementation="eager").eval()
    data = prepare_text_classification(load_tokenizer(classifier), splits / "train.jsonl", splits / "eval.jsonl", 32,
                                       names=sorted(LABELS))
    batch = {k: v for k, v in collate(data.train, list(range(8))).items() if k != "labels"}
    with torch.inference_mode():
        before = model(**batch).logits
    scales = calibrate_attention(model, [batch])
    modules = dict(model.named_modules())
    assert all(modules[n]._ew_attn_scales == scales[n] for n in scales)
    # a coarse probability scale makes the quantization visible in the logits
    for n in scales:
        modules[n]._ew_attn_scales[2] = 0.25
    with torch.inference_mode():
        after = model(**batch).logits
    assert not torch.allclose(before, after)


def test_weight_fold_is_exact_and_leaves_no_orphan_external_data(tmp_path):
    """float W -> Q -> DQ(axis 0) -> Transpose -> MatMul becomes INT8 W^T -> DQ(axis 1) -> MatMul with the
    same output on ONNX Runtime; a graph saved with per-tensor external data ends up without orphans."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from exporter.qat_export import fold_weight_quantization

    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    w[1, 2], w[2, 0] = 0.625, -0.375  # on rounding ties (2.5 and -1.5 steps): half to even, as ONNX rounds
    scale = np.full(4, 0.25, np.float32)
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(scale, "s"),
             numpy_helper.from_array(np.zeros(4, np.int8), "zp")]
    nodes = [helper.make_node("QuantizeLinear", ["W", "s", "zp"], ["wq"], axis=0),
             helper.make_node("DequantizeLinear", ["wq", "s", "zp"], ["wd"], axis=0),
             helper.make_node("Transpose", ["wd"], ["wt"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "wt"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], inits)
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path),
              save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0)
    assert len(list(tmp_path.iterdir())) > 1
    x = rng.normal(size=(2, 3)).astype(np.float32)

    def run():
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    before = run()
    assert fold_weight_quantization(path) == {"folded_weights": 1}
    assert np.array_equal(run(), before)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    m = onnx.load(str(path))
    assert [n.op_type for n in m.graph.node] == ["DequantizeLinear", "MatMul"]
    assert numpy_helper.to_array(next(i for i in m.graph.initializer if i.name.endswith("_int8_t"))).shape == (3, 4)
