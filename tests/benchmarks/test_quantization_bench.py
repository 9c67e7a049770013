"""benchmarks/quantization.py's hand-written peer recipe, and the instruction set in bench reports."""

import onnx

from benchmarks.quantization import peer_quantize
from evaluation.machine import describe_machine, instruction_set, machine_line
from exporter.optimize import op_counts


def test_the_peer_recipe_quantizes_exactly_the_constant_weight_matmuls(tiny_onnx, tmp_path):
    out = peer_quantize(tiny_onnx, tmp_path / "peer")
    model = onnx.load(str(tiny_onnx / "model.onnx"))
    weights = {i.name for i in model.graph.initializer}
    constant = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    ops = op_counts(out / "model.onnx")
    assert ops["MatMulInteger"] == len(constant) > 0 and ops["MatMul"] == sum(n.op_type == "MatMul" for n in model.graph.node) - len(constant)
    assert (out / "config.json").exists() and not (out / "manifest.json").exists()


def test_the_instruction_set_is_named_in_words():
    assert instruction_set(["avx2", "fma"]) == "AVX2, no VNNI"
    assert instruction_set(["avx2", "avx512f", "avx512_vnni"]) == "AVX2, AVX-512, VNNI (AVX-512 VNNI)"
    assert instruction_set(["avx2", "avx_vnni", "amx_int8"]) == "AVX2, VNNI (AVX-VNNI), AMX-INT8"
    assert instruction_set([]) == "no AVX2, no VNNI"
    m = describe_machine()
    assert m["instruction_set"] == instruction_set(m["cpu_features"]) and f"instruction set: {m['instruction_set']}" in machine_line(m)


def test_bench_reports_state_the_instruction_set(tiny_onnx):
    from benchmarks.throughput import BenchConfig, bench_markdown, run_bench
    from evaluation.data import load_texts

    report = run_bench([tiny_onnx], load_texts(None), config=BenchConfig(batches=(1,), seqs=(8,), iters=2, rounds=1), progress=False)
    assert report["instruction_set"] == describe_machine()["instruction_set"]
    assert f"- instruction set: **{report['instruction_set']}**" in bench_markdown(report)
