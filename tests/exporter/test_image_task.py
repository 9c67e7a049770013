"""image-classification end to end on a tiny random ViT: export -> compare -> bench -> quantize -> check,
through the Python API and the command line, with the project's sample images or an ImageFolder."""

import json

import pytest

from benchmarks.throughput import BenchConfig, run_bench
from evaluation.compare import run_compare
from evaluation.images import load_images
from exporter.quantize import QuantizeConfig, quantize
from exporter.trtbuild import derive_profiles
from exporter.trtcheck import check_tensorrt
from runtimes import load_artifact, open_runner
from runtimes.errors import UsageError

QUICK = BenchConfig(batches=(1, 2), seqs=(8, 16), iters=2, rounds=1, warmup=0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Sample images in sub-folders named after the tiny ViT's labels."""
    import shutil

    from tests.conftest import LABELS

    root = tmp_path_factory.mktemp("images") / "labelled"
    for i, p in enumerate(load_images(None).paths):
        (root / LABELS[i % 3]).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / LABELS[i % 3] / p.name)
    return root


def test_export_writes_pixel_values_and_the_image_processor(tiny_vit, tiny_vit_onnx):
    assert load_artifact(tiny_vit).task == "image-classification"
    art = load_artifact(tiny_vit_onnx)
    assert art.task == "image-classification"
    assert [s.to_dict() for s in art.inputs] == [
        {"name": "pixel_values", "dtype": "float32", "shape": ["batch_size", "num_channels", "height", "width"]}]
    assert art.manifest["outputs"][0]["shape"] == ["batch_size", 3]
    assert (art.path / "preprocessor_config.json").is_file()
    assert art.manifest["parity"]["data"]["source"] == "builtin:samples" and art.manifest["parity"]["passed"]


def test_torch_runner_takes_the_task_specs(tiny_vit):
    with open_runner(tiny_vit) as r:
        assert [s.name for s in r.input_specs()] == ["pixel_values"]
        assert r.output_specs()[0].shape == ("batch_size", 3)


def test_compare_on_labelled_images_reports_accuracy(tiny_vit, tiny_vit_onnx, folder):
    outcome = run_compare(tiny_vit, [tiny_vit_onnx], load_images(folder), progress=False)
    assert outcome.passed, outcome.markdown()
    out = outcome.report["candidates"][0]["outputs"][0]
    assert out["name"] == "logits" and out["rows"] == 12  # one row per image: nothing is masked
    assert outcome.report["reference"]["task_metric"]["accuracy"] == outcome.report["candidates"][0]["task_metric"]["accuracy"]


def test_bench_has_one_cell_per_batch_size(tiny_vit, tiny_vit_onnx):
    report = run_bench([tiny_vit, tiny_vit_onnx], None, config=QUICK, progress=False)
    cells = {(r["batch"], r["seq"]) for r in report["results"]}
    assert cells == {(1, "fixed"), (2, "fixed")}  # --seq does not change an image model's shapes
    assert report["data"]["source"] == "builtin:samples" and report["data"]["kind"] == "images"
    assert all(r["real_tokens_per_s"] == r["samples_per_s"] for r in report["results"])


def test_quantize_static_calibrates_on_images(tiny_vit_onnx, folder, tmp_path):
    q = quantize(tiny_vit_onnx, tmp_path / "q", config=QuantizeConfig(calib_rows=8, eval_rows=8, batch_size=4),
                 calib=load_images(folder), progress=False)
    assert q.manifest["quantization"]["calibration"]["rows"] == 8
    assert q.manifest["parity"]["mean_cosine"] > 0.99
    assert (q.path / "preprocessor_config.json").is_file()
    assert run_compare(tiny_vit_onnx, [q.path], None, progress=False).report["candidates"][0]["outputs"][0]["rows"] == 12


def test_text_calibration_for_an_image_model_is_one_line(tiny_vit_onnx, tmp_path):
    from evaluation.data import load_texts

    (tmp_path / "t.txt").write_text("hello\n")
    with pytest.raises(UsageError, match="takes images"):
        quantize(tiny_vit_onnx, tmp_path / "q", calib=load_texts(tmp_path / "t.txt"), progress=False)


def test_check_and_build_profiles_fix_the_image_size(tiny_vit_onnx):
    assert check_tensorrt(tiny_vit_onnx)
    art = load_artifact(tiny_vit_onnx)
    assert derive_profiles(art.inputs, task=art.task, model_dir=art.path) == [
        {"pixel_values": ((1, 3, 32, 32), (8, 3, 32, 32), (32, 3, 32, 32))}]


def test_the_command_line_runs_an_image_model(capsys, tiny_vit, folder, tmp_path):
    from enginewright.cli import main

    def run(*argv):
        code = main(list(argv))
        return code, capsys.readouterr()

    code, (out, _) = run("export", str(tiny_vit), "-o", str(tmp_path / "onnx"), "-q")
    assert code == 0 and "task image-classification" in out and "parity logits" in out
    code, (out, _) = run("compare", str(tiny_vit), str(tmp_path / "onnx"), "--data", str(folder), "-q",
                         "-o", str(tmp_path / "cmp"))
    assert code == 0 and "PASS" in out and "accuracy" in out
    assert json.loads((tmp_path / "cmp" / "report.json").read_text())["data"]["rows"] == 12
    code, (out, _) = run("bench", str(tmp_path / "onnx"), "--batch", "2", "--iters", "2", "--rounds", "1",
                         "--warmup", "0", "-q")
    assert code == 0 and "fixed" in out
    code, (out, _) = run("quantize", str(tmp_path / "onnx"), "-o", str(tmp_path / "q"), "--calib", str(folder), "-q")
    assert code == 0 and (tmp_path / "q" / "model.onnx").is_file()
    assert run("check", str(tmp_path / "onnx"))[0] == 0
    code, (_, err) = run("compare", str(tiny_vit), str(tmp_path / "onnx"), "--data", str(tmp_path / "nowhere"), "-q")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not found" in err
