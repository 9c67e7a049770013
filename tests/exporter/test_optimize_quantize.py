import onnx
import pytest

from evaluation.compare import run_compare
from evaluation.data import load_texts
from evaluation.parity import Tolerance
from exporter import export_hf
from exporter.optimize import contrib_ops, op_counts, optimize
from exporter.quantize import QuantizeConfig, quantize
from runtimes.errors import CheckFailed, UsageError
from evaluation.compare import CompareConfig
from tests.conftest import make_tiny_bert

LOOSE = Tolerance(atol=1e9, rtol=0, min_cosine=-1)


def test_optimize_cpu_fuses_with_contrib_ops_and_keeps_parity(tiny_onnx, tmp_path):
    art = optimize(tiny_onnx, tmp_path / "cpu", target="cpu", progress=False)
    o = art.manifest["optimization"]
    assert o["fused"].get("Attention") == 2 and o["fused"].get("EmbedLayerNormalization") == 1
    # SkipLayerNormalization is left out on the CPU (its kernel measured slower than Add + LayerNormalization)
    assert o["skip_layer_norm"] is False and "com.microsoft::SkipLayerNormalization" not in o["ops_after"]
    assert o["ops_after"]["LayerNormalization"] == 4 and o["skip_layer_norm_unfused"] == 4
    # and ONNX Runtime does not fuse it back when it loads the model (all optimizations on)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "as_loaded.onnx")
    ort.InferenceSession(str(art.model_file), so, providers=["CPUExecutionProvider"])
    loaded = {n.op_type for n in onnx.load(str(tmp_path / "as_loaded.onnx")).graph.node}
    assert "SkipLayerNormalization" not in loaded and "LayerNormalization" in loaded
    assert "com.microsoft::Attention" in o["contrib_ops"]
    assert sum(o["ops_after"].values()) < sum(o["ops_before"].values())
    assert art.manifest["parity"]["passed"] and (art.path / "tokenizer.json").is_file()
    fused = optimize(tiny_onnx, tmp_path / "sln", target="cpu", skip_layer_norm=True, progress=False)
    assert fused.manifest["optimization"]["ops_after"]["com.microsoft::SkipLayerNormalization"] == 4
    assert fused.manifest["parity"]["passed"]


def test_optimize_tensorrt_keeps_standard_ops(tiny_onnx, tmp_path):
    art = optimize(tiny_onnx, tmp_path / "trt", target="tensorrt", progress=False)
    assert contrib_ops(op_counts(art.model_file)) == []
    assert "LayerNormalization" in op_counts(art.model_file)
    onnx.checker.check_model(str(art.model_file), full_check=True)
    assert art.manifest["parity"]["outputs"][0]["max_abs"] < 1e-5


def test_optimize_fp16_converts_weights_and_keeps_fp32_io(tiny_onnx, tmp_path):
    art = optimize(tiny_onnx, tmp_path / "fp16", target="tensorrt", fp16=True, progress=False)
    m = onnx.load(str(art.model_file))
    kinds = {i.data_type for i in m.graph.initializer if len(i.dims) == 2}
    assert onnx.TensorProto.FLOAT16 in kinds and onnx.TensorProto.FLOAT not in kinds  # matrices are FP16
    assert [s.dtype for s in art.inputs] == ["int64"] * 3 and art.outputs[0].dtype == "float32"
    assert art.manifest["parity"]["passed"]


def test_optimize_refuses_bad_input(tiny_bert, tiny_onnx, tmp_path):
    with pytest.raises(UsageError, match="takes an ONNX artifact"):
        optimize(tiny_bert, tmp_path / "x", progress=False)
    with pytest.raises(UsageError, match="unknown target"):
        optimize(tiny_onnx, tmp_path / "x", target="tpu", progress=False)
    fused = optimize(tiny_onnx, tmp_path / "fused", target="cpu", progress=False)
    with pytest.raises(UsageError, match="contrib operators"):
        optimize(fused, tmp_path / "x", target="tensorrt", progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("cfg", [QuantizeConfig(mode="dynamic", per_channel=True),
                                 QuantizeConfig(mode="static", target="tensorrt"),
                                 QuantizeConfig(mode="static", target="cpu", method="entropy")])
def test_quantize_recipes_run_on_onnxruntime(tiny_bert, tiny_onnx, tmp_path, cfg):
    art = quantize(tiny_onnx, tmp_path / "q", config=cfg, calib=load_texts(None), progress=False)
    q = art.manifest["quantization"]
    ops = op_counts(art.model_file)
    if cfg.mode == "dynamic":
        assert ops.get("MatMulInteger", 0) == len(q["quantized_nodes"]) > 0
    else:
        assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
        assert q["calibration"]["rows"] == len(load_texts(None)) and q["calibration"]["hash"].startswith("sha256:")
    assert art.manifest["parity"]["mean_cosine"] > 0.9
    assert run_compare(tiny_bert, [art], load_texts(None), config=CompareConfig(tolerance=LOOSE), progress=False).passed


def test_tensorrt_placement_is_symmetric_per_channel_on_matmul_inputs(tiny_onnx, tmp_path):
    art = quantize(tiny_onnx, tmp_path / "q", config=QuantizeConfig(target="tensorrt"), calib=load_texts(None), progress=False)
    m = onnx.load(str(art.model_file))
    assert contrib_ops(op_counts(art.model_file)) == []
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    producers = {o: n for n in m.graph.node for o in n.output}
    dq_into_matmul = 0
    for n in m.graph.node:
        if n.op_type == "MatMul":
            for inp in n.input:
                p = producers.get(inp)
                assert p is not None and p.op_type == "DequantizeLinear", f"{n.name} input {inp} is not dequantized"
                dq_into_matmul += 1
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits:
            assert not inits[n.input[2]].any(), f"{n.name} has a non-zero zero point"
    assert dq_into_matmul > 0
    per_channel = [n for n in m.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[1]) is not None
                   and inits[n.input[1]].ndim == 1 and inits[n.input[1]].size > 1]
    assert per_channel, "weights should carry per-channel scales"


def test_search_keeps_a_planted_outlier_in_float(tmp_path):
    import torch
    import transformers

    src = make_tiny_bert(tmp_path / "m")
    model = transformers.BertModel.from_pretrained(str(src))
    with torch.no_grad():
        ffn = model.encoder.layer[1]
        ffn.output.dense.weight.mul_(20)  # let the FFN, not the residual, carry this layer's output
        w = ffn.intermediate.dense.weight
        w[0, 0] = 500 * w.abs().max()  # one huge weight: per-tensor INT8 zeroes all the others
    model.save_pretrained(str(src))
    onnx_art = export_hf(src, tmp_path / "onnx", progress=False)
    cfg = QuantizeConfig(mode="static", target="cpu", per_channel=False, max_cosine_loss=0.002)
    art = quantize(onnx_art, tmp_path / "q", config=cfg, calib=load_texts(None), progress=False)
    q = art.manifest["quantization"]
    planted = "/encoder/layer.1/intermediate/dense/MatMul"
    assert q["loss_all_quantized"] > 0.002
    assert q["float_nodes"][0] == planted and planted not in q["quantized_nodes"]
    assert max(q["node_costs"], key=q["node_costs"].get) == planted
    assert q["cosine_loss"] <= 0.002 and art.manifest["parity"]["mean_cosine"] >= 0.998

    with pytest.raises(CheckFailed, match="misses --max-cosine-loss"):
        quantize(onnx_art, tmp_path / "q0", config=QuantizeConfig(per_channel=False, max_cosine_loss=0.002, max_float_nodes=0),
                 calib=load_texts(None), progress=False)
    assert not (tmp_path / "q0").exists()


def test_quantize_refuses_bad_input(tiny_onnx, tiny_bert, tmp_path):
    with pytest.raises(UsageError, match="needs calibration data"):
        quantize(tiny_onnx, tmp_path / "x", config=QuantizeConfig(mode="static"), progress=False)
    with pytest.raises(UsageError, match="not in"):
        quantize(tiny_onnx, tmp_path / "x", config=QuantizeConfig(exclude=("no_such_node",)), calib=load_texts(None), progress=False)
    with pytest.raises(UsageError, match="takes --mode static"):
        QuantizeConfig(mode="dynamic", target="tensorrt")
    with pytest.raises(UsageError, match="unknown calibration method"):
        QuantizeConfig(method="kl")
    q = quantize(tiny_onnx, tmp_path / "q", config=QuantizeConfig(mode="dynamic"), progress=False)
    with pytest.raises(UsageError, match="already quantized"):
        quantize(q, tmp_path / "x", config=QuantizeConfig(mode="dynamic"), progress=False)
    fused = optimize(tiny_onnx, tmp_path / "fused", progress=False)
    with pytest.raises(UsageError, match="contrib operators"):
        quantize(fused, tmp_path / "x", config=QuantizeConfig(target="tensorrt"), calib=load_texts(None), progress=False)
    with pytest.raises(UsageError, match="takes an ONNX artifact"):
        quantize(tiny_bert, tmp_path / "x", config=QuantizeConfig(mode="dynamic"), progress=False)
    assert not (tmp_path / "x").exists()


def test_quantize_works_on_a_fused_artifact(tiny_onnx, tmp_path):
    fused = optimize(tiny_onnx, tmp_path / "fused", progress=False)
    for mode in ("dynamic", "static"):
        art = quantize(fused, tmp_path / mode, config=QuantizeConfig(mode=mode), calib=load_texts(None), progress=False)
        assert art.manifest["parity"]["mean_cosine"] > 0.9
        if mode == "dynamic":  # the fused Attention's QKV projection is quantized too, not left in float
            ops = op_counts(art.model_file)
            assert ops.get("com.microsoft::QAttention") == 2 and "com.microsoft::Attention" not in ops


def test_dynamic_all_matmuls_quantizes_the_attention_products(tiny_onnx, tmp_path):
    """weight_only=False: the activation x activation MatMuls (Q.K^T, P.V) become MatMulInteger as well."""
    weights = quantize(tiny_onnx, tmp_path / "w", config=QuantizeConfig(mode="dynamic"), progress=False)
    every = quantize(tiny_onnx, tmp_path / "a", config=QuantizeConfig(mode="dynamic", weight_only=False), progress=False)
    w_ops, a_ops = op_counts(weights.model_file), op_counts(every.model_file)
    assert a_ops["MatMulInteger"] == w_ops["MatMulInteger"] + 4 and "MatMul" not in a_ops
    assert every.manifest["parity"]["mean_cosine"] > 0.9
