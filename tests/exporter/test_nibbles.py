"""The 8-bit MatMulNBits split (exporter/passes/nibbles.py): two 4-bit kernels, the same product."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporter.passes.nibbles import split_8bit_matmulnbits


def _model(k: int, n: int, zero: bool, level: int = 0, seed: int = 0):
    rng = np.random.default_rng(seed)
    block = 32
    blocks = -(-k // block)
    u = rng.integers(0, 256, size=(n, blocks, block), dtype=np.uint8)
    scale = (rng.random((n, blocks)) * 0.02 + 0.001).astype(np.float32)
    z = rng.integers(0, 256, size=(n, blocks), dtype=np.uint8) if zero else np.full((n, blocks), 128, np.uint8)
    w = ((u.astype(np.float32) - z[..., None]) * scale[..., None]).reshape(n, -1)[:, :k]
    inits = [numpy_helper.from_array(u, "B"), numpy_helper.from_array(scale.reshape(-1), "S")]
    ins = ["A", "B", "S"]
    if zero:
        inits.append(numpy_helper.from_array(z, "Z"))
        ins.append("Z")
    node = helper.make_node("MatMulNBits", ins, ["Y"], name="/lm_head/MatMul_Q8", domain="com.microsoft", K=k, N=n, bits=8,
                            block_size=block, accuracy_level=level)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    return model, w.T


def _run(model, a):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"A": a})[0]


@pytest.mark.parametrize("k,zero", [(96, True), (80, False), (64, True)])  # 80: a last block of 16, padded
def test_two_4bit_kernels_make_the_8bit_product(k, zero):
    model, w = _model(k, 48, zero)
    a = np.random.default_rng(1).standard_normal((3, k)).astype(np.float32)
    before = _run(model, a)
    result = split_8bit_matmulnbits(model)
    assert result.modified and result.count == 1
    ops = [(n.op_type, {x.name: x.i for x in n.attribute}.get("bits")) for n in model.graph.node]
    assert ops == [("MatMulNBits", 4), ("MatMulNBits", 4), ("Add", None)]
    onnx.checker.check_model(model)
    after = _run(model, a)
    exact = a @ w
    assert np.abs(before - exact).max() < 1e-4 * np.abs(exact).max()
    assert np.abs(after - exact).max() < 1e-4 * np.abs(exact).max()
    assert {i.name for i in model.graph.initializer}.isdisjoint({"B", "S", "Z"})  # the 8-bit weight is gone


def test_int8_activations_and_4bit_nodes_are_left_alone():
    model, _ = _model(64, 16, True, level=4)
    assert not split_8bit_matmulnbits(model).modified
    assert [n.op_type for n in model.graph.node] == ["MatMulNBits"]


def test_weight_only_int8_is_written_as_4bit_pairs(tiny_llama_onnx, tmp_path):
    from enginewright.cli import main
    from runtimes import load_artifact

    out = tmp_path / "int8"
    assert main(["quantize", str(tiny_llama_onnx), "--mode", "weight-only", "--bits", "8", "-o", str(out), "-q"]) == 0
    q = load_artifact(out).manifest["quantization"]
    bits = [{a.name: a.i for a in n.attribute}["bits"] for n in onnx.load(str(out / "model.onnx")).graph.node
            if n.op_type == "MatMulNBits"]
    assert q["int8_as_two_int4_kernels"] == q["quantized"] > 0 and bits == [4] * (2 * q["quantized"])
