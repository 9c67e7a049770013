"""Any torch.nn.Module: ``export_factory`` with declared inputs, then compare and bench on seeded
synthetic feeds of those shapes (a quantized copy finds the declaration through its lineage)."""

import textwrap

import pytest

from benchmarks.throughput import BenchConfig, run_bench
from evaluation.compare import CompareConfig, run_compare
from evaluation.parity import Tolerance
from exporter.factory import parse_inputs
from exporter.factory import export_factory
from exporter.quantize import QuantizeConfig, quantize
from exporter.trtbuild import derive_profiles
from runtimes import load_artifact
from runtimes.errors import UsageError
from runtimes.tasks import get_task

INPUTS = ["x:batch_size,sequence_length,16:float32", "ids:batch_size,sequence_length:int64"]
SOURCE = '''
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(16, 8)

        def forward(self, x, ids):
            return torch.relu(self.lin(x)).sum(1) + ids.float().mean(1, keepdim=True)

    def make():
        torch.manual_seed(0)
        return Net()

    def not_a_module():
        return 3
'''


@pytest.fixture(scope="module")
def factory(tmp_path_factory):
    import sys

    d = tmp_path_factory.mktemp("factory")
    (d / "ew_tiny_factory.py").write_text(textwrap.dedent(SOURCE))
    sys.path.insert(0, str(d))
    yield "ew_tiny_factory:make"
    sys.path.remove(str(d))


@pytest.fixture(scope="module")
def module_onnx(factory, tmp_path_factory):
    return export_factory(factory, INPUTS, tmp_path_factory.mktemp("module") / "net")


def test_parse_inputs_names_dims_and_example_sizes():
    specs, sizes = parse_inputs(["a:batch_size,seq=12,4:float32", "b:batch_size,width:int32"])
    assert [s.shape for s in specs] == [("batch_size", "seq", 4), ("batch_size", "width")]
    assert sizes == {"seq": 12, "batch_size": 2, "width": 3}


@pytest.mark.parametrize("inputs, words", [
    ([], "declare the module's inputs"), (["x:4"], "expected NAME:DIMS:DTYPE"), (["x:4:complex64"], "dtype"),
    (["x:4:float32", "x:2:float32"], "twice"), (["x:a-b:float32"], "must be an int or a name"),
    (["x:n=2:float32", "y:n=3:float32"], "sizes 2 and 3"),
])
def test_bad_input_declarations_are_one_line(inputs, words):
    with pytest.raises(UsageError, match=words):
        parse_inputs(inputs)


@pytest.mark.parametrize("name, words", [
    ("no_such_pkg_ew:make", "cannot import"), ("ew_tiny_factory:missing", "no callable"),
    ("ew_tiny_factory:not_a_module", "not a torch.nn.Module"), ("ew_tiny_factory", "package.module:factory"),
])
def test_bad_factories_are_one_line(factory, tmp_path, name, words):
    with pytest.raises(UsageError, match=words):
        export_factory(name, INPUTS, tmp_path / "out")


def test_export_records_the_declared_inputs(module_onnx):
    art = load_artifact(module_onnx.path)
    assert art.task == "module" and art.kind == "onnx"
    assert [s.shape for s in art.inputs] == [("batch_size", "sequence_length", 16), ("batch_size", "sequence_length")]
    assert [s.name for s in art.outputs] == ["output"] and art.outputs[0].shape == ("batch_size", 8)
    assert art.manifest["module"]["dim_sizes"] == {"batch_size": 2, "sequence_length": 8}
    assert art.manifest["module"]["factory"] == "ew_tiny_factory:make" and art.manifest["parity"]["passed"]


def test_synthetic_feeds_are_seeded_and_follow_the_declared_shapes(module_onnx):
    from evaluation.data import load_texts

    task = get_task("module")
    feeds = task.load_processor(module_onnx.path)
    batch = load_texts(None).take(3)
    a, b = task.encode(feeds, batch), task.encode(feeds, batch)
    assert a["x"].shape == (3, 8, 16) and a["ids"].shape == (3, 8) and a["ids"].dtype == "int64"
    assert (a["x"] == b["x"]).all()
    assert task.encode(feeds, batch, max_length=20, pad_to_max=True)["x"].shape == (3, 20, 16)


def test_compare_and_bench_accept_the_export_and_its_quantized_copy(module_onnx, tmp_path):
    q = quantize(module_onnx.path, tmp_path / "q", config=QuantizeConfig(mode="dynamic"), progress=False)
    assert "module" not in q.manifest and get_task("module").has_processor(q.path)  # found through the lineage
    loose = CompareConfig(batch_size=8, tolerance=Tolerance(atol=0.5, rtol=0.1, min_cosine=0.99))
    outcome = run_compare(q.path, [module_onnx.path], None, config=loose, progress=False)
    assert outcome.passed, outcome.markdown()
    assert outcome.report["candidates"][0]["outputs"][0]["rows"] == 43  # one row per synthetic sample
    report = run_bench([module_onnx.path, q.path], None, config=BenchConfig(batches=(1, 4), seqs=(8, 32), iters=2,
                                                                           rounds=1, warmup=0), progress=False)
    assert {(r["batch"], r["seq"]) for r in report["results"]} == {(1, 8), (1, 32), (4, 8), (4, 32)}


def test_build_profiles_come_from_the_declared_dims(module_onnx):
    art = load_artifact(module_onnx.path)
    assert derive_profiles(art.inputs, task=art.task, model_dir=art.path) == [
        {"x": ((1, 1, 16), (8, 128, 16), (32, 512, 16)), "ids": ((1, 1), (8, 128), (32, 512))}]


def test_the_command_line_runs_a_module_export(capsys, factory, tmp_path):
    from enginewright.cli import main

    net, q = str(tmp_path / "net"), str(tmp_path / "q")
    args = ["--inputs", INPUTS[0], "--inputs", INPUTS[1]]
    assert main(["export", "--module", factory, *args, "-o", net, "-q"]) == 0
    assert main(["quantize", net, "-o", q, "--mode", "dynamic", "-q"]) == 0
    assert main(["compare", net, q, "--atol", "0.5", "--rtol", "0.1", "--min-cosine", "0.99", "-q"]) == 0
    assert main(["bench", net, q, "--batch", "1,2", "--seq", "8", "--iters", "2", "--rounds", "1", "--warmup", "0",
                 "-q"]) == 0
    assert main(["check", net, "--target", "tensorrt"]) == 0
    out = capsys.readouterr().out
    assert "exported ew_tiny_factory:make" in out and "PASS" in out
    assert main(["export", "--module", factory, "-o", str(tmp_path / "x")]) == 2  # no --inputs
    assert "--inputs" in capsys.readouterr().err
    assert main(["export", "--module", factory, *args, "--pooling", "mean", "-o", str(tmp_path / "x")]) == 2
    assert "--pooling applies to MODEL_DIR exports" in capsys.readouterr().err
    assert load_artifact(net).manifest["command"].startswith("enginewright export --module")


def test_the_default_recipe_smooths_nothing_without_a_normalization(capsys, module_onnx, tmp_path):
    from tests.cli.test_cli import run

    code, out, _ = run(capsys, "quantize", str(module_onnx.path), "-o", str(tmp_path / "q"), "-q")
    assert code == 0 and "default recipe" in out and "smoothed" not in out
    smoothing = load_artifact(tmp_path / "q").manifest["quantization"]["smoothing"]
    assert smoothing["tensors"] == [] and smoothing["alpha"] == 0.5
