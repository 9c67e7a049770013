"""enginewright run PIPELINE.yaml: validation with line numbers, step caching, gates."""

from tests.cli.test_cli import one_line_error, run

STAGES = """\
stages:
  - export: {{task: feature-extraction}}
  - optimize: {{target: tensorrt}}
  - quantize: {{mode: dynamic, per_channel: {pc}}}
  - compare: {{data: builtin:samples, atol: 10, rtol: 0, min_cosine: 0.5}}
  - bench: {{data: builtin:samples, batch: [1], seq: [8], iters: 2}}
"""


def _write(tmp_path, model, pc="true", stages=STAGES):
    p = tmp_path / "pipe.yaml"
    p.write_text(f"model: {model}\nrun_dir: runs\n" + stages.format(pc=pc))
    return p


def _lines(out):
    return [line for line in out.splitlines() if line.startswith("[")]


def test_stages_are_cached_and_a_change_reruns_what_follows(capsys, tiny_bert, tmp_path):
    pipe = _write(tmp_path, tiny_bert)
    code, out, _ = run(capsys, "run", str(pipe), "-q")
    assert code == 0 and all("running" in line for line in _lines(out))
    code, out, _ = run(capsys, "run", str(pipe), "-q")
    lines = _lines(out)
    assert code == 0 and [("reused" in line) for line in lines[:3]] == [True, True, True]
    _write(tmp_path, tiny_bert, pc="false")
    code, out, _ = run(capsys, "run", str(pipe), "-q", "--to", "quantize")
    lines = _lines(out)
    assert code == 0 and "reused" in lines[0] and "reused" in lines[1] and "running" in lines[2] and len(lines) == 3
    code, out, _ = run(capsys, "run", str(pipe), "-q", "--from", "optimize", "--to", "quantize")
    lines = _lines(out)
    assert "reused" in lines[0] and "running" in lines[1] and "running" in lines[2]
    assert len([d for d in (tmp_path / "runs").iterdir() if d.is_dir()]) == 4  # export, optimize, quantize x2


def test_pipeline_file_errors_name_file_and_line(capsys, tiny_bert, tmp_path):
    cases = [
        ("stages:\n  - exprot: {}\n", "pipe.yaml:4: unknown stage 'exprot'"),
        ("stages:\n  - export: {task: feature-extraction}\n  - quantize: {mode: dynamic, per_chanel: true}\n",
         "pipe.yaml:5: unknown option 'per_chanel' for quantize"),
        ("stages:\n  - export: {}\n  - compare: {data: nope.jsonl}\n", "pipe.yaml:5: compare.data: data file 'nope.jsonl' not found"),
        ("stages:\n  - export: {}\n  - quantize: {mode: dynamic,\n      max_float_nodes: many}\n",
         "pipe.yaml:6: quantize.max_float_nodes must be an integer, got 'many'"),
        ("stages:\n  - export: {}\n  - quantize: {mode: dynamic, per_channel: 1}\n", "quantize.per_channel must be true or false"),
    ]
    for stages, words in cases:
        p = tmp_path / "pipe.yaml"
        p.write_text(f"model: {tiny_bert}\nrun_dir: runs\n" + stages)
        code, _, err = run(capsys, "run", str(p))
        assert code == 2, err
        one_line_error(err, words)
    assert not (tmp_path / "runs").exists()


def test_a_failed_gate_exits_1(capsys, tiny_bert, tmp_path):
    stages = """\
stages:
  - export: {{}}
  - quantize: {{mode: dynamic}}
  - compare: {{data: builtin:samples, atol: 0, rtol: 0, min_cosine: 1.0}}
"""
    code, _, err = run(capsys, "run", str(_write(tmp_path, tiny_bert, stages=stages)), "-q", "--junit", str(tmp_path / "j.xml"))
    assert code == 1 and "compare failed" in err
    import xml.etree.ElementTree as ET

    suite = ET.parse(tmp_path / "j.xml").getroot().find("testsuite")
    assert int(suite.get("failures")) >= 1 and suite.find("testcase/failure") is not None


def test_summary_and_plots(capsys, tiny_bert, tmp_path):
    pipe = _write(tmp_path, tiny_bert)
    code, out, _ = run(capsys, "run", str(pipe), "-q")
    assert code == 0 and "summary:" in out
    runs = tmp_path / "runs"
    assert (runs / "tradeoff.png").stat().st_size > 1000 and "<table>" in (runs / "summary.html").read_text()
    assert "| artifact" in (runs / "summary.md").read_text()


def test_example_pipelines_validate():
    from pathlib import Path

    from enginewright.pipeline import load_pipeline

    examples = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
    assert len(examples) == 3
    for f in examples:
        assert load_pipeline(f).stages  # file, stages, options and data paths all check out


def test_qat_options_reach_compress(capsys, tiny_classifier, splits, tmp_path):
    import json

    stages = f"""\
stages:
  - compress: {{{{train: {splits / 'train.jsonl'}, eval: {splits / 'eval.jsonl'}, qat: true, qat_float_layers: 1,
                qat_attention: true, qat_float_attention: 1, distill: true, alpha: 1.0, temperature: 1.0, epochs: 1, max_length: 32}}}}
  - export: {{{{}}}}
"""
    code, out, err = run(capsys, "run", str(_write(tmp_path, tiny_classifier, stages=stages)), "-q")
    assert code == 0, err
    manifests = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/manifest.json")]
    qat = next(m["qat"] for m in manifests if m.get("qat"))
    assert len(qat["float_layers"]) == 1 and qat["attention_matmuls"] == 3 and len(qat["float_attention"]) == 1
    distill = next(c for m in manifests for c in m.get("compression") or [] if c["technique"] == "distillation")
    assert distill["alpha"] == 1.0 and distill["temperature"] == 1.0
    assert any(m.get("quantization", {}).get("mode") == "qat" for m in manifests)


def test_a_pipeline_with_a_build_refuses_before_running_anything_without_tensorrt(capsys, tiny_bert, tmp_path):
    import importlib.util

    import pytest

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    stages = """\
stages:
  - export: {{task: feature-extraction}}
  - quantize: {{target: tensorrt, calib: builtin:samples}}
  - build: {{shapes: {{input_ids: [[1, 1], [2, 8], [4, 16]]}}, fp16: true, hardware_compatible: true}}
"""
    code, _, err = run(capsys, "run", str(_write(tmp_path, tiny_bert, stages=stages)), "-q")
    assert code == 2
    one_line_error(err, "TensorRT is not installed")
    assert not (tmp_path / "runs").exists()  # no export or calibration first
    code, _, _ = run(capsys, "run", str(tmp_path / "pipe.yaml"), "-q", "--to", "quantize")
    assert code == 0  # without the build stage the rest runs
