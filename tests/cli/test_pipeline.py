"""enginewright run PIPELINE.yaml: validation with line numbers, step caching, gates."""

import pytest

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
    dirs = sorted(d.name for d in (tmp_path / "runs").iterdir() if d.is_dir())
    assert len([d for d in dirs if "-" in d[3:]]) == 4  # export, optimize, quantize x2
    assert [d for d in dirs if d[3:] in ("compare", "bench")] == ["04-compare", "05-bench"]  # the check stages' reports


def test_pipeline_file_errors_name_file_and_line(capsys, tiny_bert, tmp_path):
    cases = [
        ("stages:\n  - exprot: {}\n", "pipe.yaml:4: unknown stage 'exprot'"),
        ("stages:\n  - export: {task: feature-extraction}\n  - quantize: {mode: dynamic, per_chanel: true}\n",
         "pipe.yaml:5: unknown option 'per_chanel' for quantize"),
        ("stages:\n  - export: {}\n  - compare: {data: nope.jsonl}\n", "pipe.yaml:5: compare.data: data file 'nope.jsonl' not found"),
        ("stages:\n  - export: {}\n  - quantize: {mode: dynamic,\n      max_float_nodes: many}\n",
         "pipe.yaml:6: quantize.max_float_nodes must be an integer, got 'many'"),
        ("stages:\n  - export: {}\n  - quantize: {mode: dynamic, per_channel: 1}\n", "quantize.per_channel must be true or false"),
        ("stages:\n  - export: {}\n  - compare: {max_new_tokens: 0}\n", "pipe.yaml:5: compare.max_new_tokens: --max-new-tokens 0: must be at least 1"),
        ("stages:\n  - export: {task: x\n  - compare: {}\n", "pipe.yaml:5: not valid YAML (expected ',' or '}'"),
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
    assert len(examples) == 4
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


LLM_STAGES = """\
stages:
  - import-gguf: {{}}
  - export: {{limit: 4, max_length: 16}}
  - quantize: {{mode: weight-only, bits: 4, exclude: /lm_head/MatMul}}
  - compare: {{data: builtin:samples, limit: 4, max_length: 16, batch_size: 2, max_new_tokens: 4,
              max_ppl_increase: 1000%, min_top1_agreement: 0.0}}
  - bench: {{batch: [1, 2], seq: [8], max_new_tokens: 4, warmup: 0, rounds: 1{bench}}}
"""


@pytest.fixture(scope="module")
def tiny_gguf_file(tiny_llama, tmp_path_factory):
    from tests.exporter.test_gguf import write_tiny_gguf

    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", tiny_llama)


def test_a_gguf_pipeline_imports_exports_quantizes_compares_and_benches_an_llm(capsys, tiny_gguf_file, tmp_path):
    import json

    pipe = _write(tmp_path, tiny_gguf_file, stages=LLM_STAGES.replace("{bench}", ""))
    code, out, err = run(capsys, "run", str(pipe), "-q")
    assert code == 0, err
    assert [line.split(":")[0] for line in _lines(out)] == [f"[{i}/5] {s}" for i, s in enumerate(
        ("import-gguf", "export", "quantize", "compare", "bench"), 1)]
    runs = tmp_path / "runs"
    made = {d.name.split("-")[1]: json.loads((d / "manifest.json").read_text()) for d in runs.glob("0[123]-*")}
    assert made["import"]["source"]["format"] == "gguf" and made["export"]["task"] == "text-generation"
    q = made["quantize"]["quantization"]
    assert q["kept_float"] == ["/lm_head/MatMul"] and q["quantized"] == q["matmuls_with_constant_weights"] - 1
    compare, bench = (json.loads((runs / d / "report.json").read_text()) for d in ("04-compare", "05-bench"))
    assert compare["kind"] == bench["kind"] == "llm" and len(compare["candidates"]) == 2 and compare["passed"]
    assert {r["runtime"] for r in bench["results"]} == {"torch:cpu", "onnxruntime:cpu"} and len(bench["results"]) == 8
    summary = (runs / "summary.md").read_text()
    assert "| runner" in summary and "decode tokens/s" in summary and "perplexity" in summary
    rows = [line for line in summary.splitlines() if line.startswith("| 0")]
    assert len(rows) == 3 + 1  # the reference, two candidates and transformers' generate()
    ref_row = next(r for r in rows if r.startswith("| 01-import-gguf") and "generate()" not in r)
    assert "+0.00%" in ref_row and "1.0000" in ref_row
    assert (runs / "tradeoff.png").stat().st_size > 1000
    code, out, err = run(capsys, "run", str(pipe), "-q")
    assert code == 0, err
    assert ["reused" in line for line in _lines(out)[:3]] == [True] * 3  # the GGUF's hash keys the import


def test_an_llm_bench_stage_gates_on_a_baseline_of_decode_tokens_per_s(capsys, tiny_gguf_file, tmp_path):
    import json
    import shutil

    stages = LLM_STAGES.replace("{bench}", ", no_hf_generate: true")
    pipe = _write(tmp_path, tiny_gguf_file, stages=stages)
    code, _, err = run(capsys, "run", str(pipe), "-q")
    assert code == 0, err
    base = tmp_path / "base"
    shutil.copytree(tmp_path / "runs" / "05-bench", base)
    pipe = _write(tmp_path, tiny_gguf_file, stages=stages.replace("no_hf_generate: true",
                                                                 f"no_hf_generate: true, baseline: {base}, max_regression: 99%"))
    code, out, err = run(capsys, "run", str(pipe), "-q", "--from", "bench")
    assert code == 0, err
    assert "throughput against" in out and "6 passed, 0 failed" in out.split("throughput against")[1].splitlines()[0]
    report = json.loads((base / "report.json").read_text())
    for r in report["results"]:
        r["decode_tokens_per_s"] *= 1000
    (base / "report.json").write_text(json.dumps(report))
    code, _, err = run(capsys, "run", str(pipe), "-q", "--from", "bench")
    assert code == 1 and "bench against" in err and "decode tokens/s" in err


def test_a_tensor_baseline_is_refused_for_an_llm_bench(capsys, tiny_gguf_file, tiny_bert, tmp_path):
    code, _, err = run(capsys, "run", str(_write(tmp_path, tiny_bert)), "-q")
    assert code == 0, err
    (tmp_path / "llm").mkdir()
    pipe = _write(tmp_path / "llm", tiny_gguf_file, stages=LLM_STAGES.replace(
        "{bench}", f", baseline: {tmp_path / 'runs' / '05-bench'}"))
    code, _, err = run(capsys, "run", str(pipe), "-q", "--from", "bench")
    assert code == 2
    one_line_error(err, "a tensor bench report, and these artifacts take an LLM")  # -q silences the import's bar too


def test_a_gguf_model_and_the_import_stage_go_together(capsys, tiny_gguf_file, tiny_llama, tmp_path):
    cases = [
        (tiny_gguf_file, "stages:\n  - export: {}\n", "pipe.yaml:1: model tiny.gguf is a GGUF file; make '- import-gguf: {}'"),
        (tiny_llama, "stages:\n  - import-gguf: {}\n  - export: {}\n", "pipe.yaml:4: import-gguf reads the pipeline's model"),
        (tiny_gguf_file, "stages:\n  - import-gguf: {}\n  - import-gguf: {}\n", "pipe.yaml:5: import-gguf reads"),
        (tmp_path / "nope.gguf", "stages:\n  - import-gguf: {}\n", "pipe.yaml:1: model"),
        ("smollm3", "stages:\n  - import-gguf: {}\n", "or one of minilm"),
    ]
    for model, stages, words in cases:
        p = tmp_path / "pipe.yaml"
        p.write_text(f"model: {model}\nrun_dir: runs\n" + stages)
        code, _, err = run(capsys, "run", str(p))
        assert code == 2, err
        one_line_error(err, words)
    assert not (tmp_path / "runs").exists()


def test_the_smollm2_example_recipe_on_a_quantized_tiny_gguf(capsys, tiny_llama, tmp_path):
    """examples/smollm2-cpu-int4.yaml's recipe: the compact graph and the GGUF's own blocks hold
    the example's tight gates (the weights are the reference's own)."""
    import json

    from tests.exporter.test_decoder_graph import QUANT
    from tests.exporter.test_gguf import write_tiny_gguf

    gguf_file = write_tiny_gguf(tmp_path / "tiny-q.gguf", tiny_llama, quant=QUANT)
    stages = """\
stages:
  - import-gguf: {{}}
  - export: {{graph: cpu, limit: 4, max_length: 16}}
  - quantize: {{mode: weight-only, from_gguf: source}}
  - compare: {{data: builtin:samples, limit: 4, max_length: 16, batch_size: 2, max_new_tokens: 4,
              max_ppl_increase: 1%, min_top1_agreement: 0.99}}
"""
    pipe = _write(tmp_path, gguf_file, stages=stages)
    code, out, err = run(capsys, "run", str(pipe), "-q")
    assert code == 0, err
    runs = tmp_path / "runs"
    q = json.loads(next(runs.glob("03-*/manifest.json")).read_text())["quantization"]
    assert q["kept_float"] == [] and set(q["gguf"]["by_type"]) == {"Q4_0", "Q4_1", "Q8_0"}
    compare = json.loads(next(runs.glob("04-*/report.json")).read_text())
    assert compare["passed"] and compare["candidates"][0]["top1_agreement"] == 1.0
