"""optimize and quantize from the command line."""

import json

from tests.cli.test_cli import one_line_error, run


def test_optimize_and_quantize_commands(capsys, tiny_onnx, tmp_path, monkeypatch):
    from enginewright.commands import quantize as cli

    code, out, _ = run(capsys, "optimize", str(tiny_onnx), "-o", str(tmp_path / "fused"), "-q")
    assert code == 0 and "fused Attention: 2" in out and "contrib ops" in out
    code, out, _ = run(capsys, "optimize", str(tiny_onnx), "-o", str(tmp_path / "trt16"), "--target", "tensorrt", "--fp16", "-q")
    assert code == 0 and "(fp16)" in out and "contrib" not in out
    code, out, err = run(capsys, "quantize", str(tiny_onnx), "-o", str(tmp_path / "dyn"), "--mode", "dynamic", "--per-channel", "-q")
    assert code == 0 and "nodes INT8" in out and "warning" not in err
    monkeypatch.setattr(cli, "QUANTIZE_WARN_BELOW", 1.01)  # any cosine is now too low: the warning names the remedy
    code, _, err = run(capsys, "quantize", str(tiny_onnx), "-o", str(tmp_path / "dyn2"), "--mode", "dynamic", "-q")
    assert code == 0 and "warning: mean pooled cosine vs float" in err and "--max-cosine-loss 0.01" in err
    code, out, _ = run(capsys, "quantize", str(tiny_onnx), "-o", str(tmp_path / "qdq"), "--target", "tensorrt",
                       "--calib", "builtin:samples", "--max-cosine-loss", "0.5", "-q")
    assert code == 0
    m = json.loads((tmp_path / "qdq" / "manifest.json").read_text())
    assert m["quantization"]["target"] == "tensorrt" and m["quantization"]["per_channel"] is True
    assert m["quantization"]["calibration"]["source"] == "builtin:samples"


def test_graph_commands_bad_input_exit_2(capsys, tiny_bert, tiny_onnx, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "cols.jsonl").write_text('{"sentence": "x"}\n')
    fused = tmp_path / "fused"
    assert run(capsys, "optimize", str(tiny_onnx), "-o", str(fused), "-q")[0] == 0
    dyn = tmp_path / "dyn"
    assert run(capsys, "quantize", str(tiny_onnx), "-o", str(dyn), "--mode", "dynamic", "-q")[0] == 0
    out = str(tmp_path / "out")
    cases = [
        (["quantize", str(tiny_onnx), "-o", out, "--mode", "static"], "needs calibration data"),
        (["quantize", str(tiny_onnx), "-o", out, "--per-channel", "--per-tensor"], "contradict"),
        (["quantize", str(tiny_onnx), "-o", out, "--select", "--target", "tensorrt", "--calib", "builtin:samples"],
         "--select chooses among CPU recipes"),
        (["quantize", str(tiny_onnx), "-o", out, "--calib", str(tmp_path / "missing.txt")], "data file not found"),
        (["quantize", str(tiny_onnx), "-o", out, "--calib", str(tmp_path / "empty.txt")], "data file is empty"),
        (["quantize", str(tiny_onnx), "-o", out, "--calib", str(tmp_path / "cols.jsonl")], "no column 'text'"),
        (["quantize", str(dyn), "-o", out, "--mode", "dynamic"], "already quantized"),
        (["quantize", str(tiny_onnx), "-o", out, "--mode", "dynamic", "--exclude", "nope"], "not in"),
        (["quantize", str(fused), "-o", out, "--target", "tensorrt", "--calib", "builtin:samples"], "contrib operators"),
        (["quantize", str(tiny_onnx), "-o", out, "--mode", "dynamic", "--target", "tensorrt"], "takes --mode static"),
        (["optimize", str(fused), "-o", out, "--target", "tensorrt"], "contrib operators"),
        (["optimize", str(tiny_bert), "-o", out], "takes an ONNX artifact"),
    ]
    for argv, words in cases:
        code, _, err = run(capsys, *argv, "-q")
        assert code == 2, (argv, err)
        one_line_error(err, words)
    for argv in (["quantize", str(tiny_onnx), "-o", out, "--method", "kl"], ["optimize", str(tiny_onnx), "-o", out, "--target", "tpu"]):
        try:
            run(capsys, *argv)
        except SystemExit as e:
            assert e.code == 2
        one_line_error(capsys.readouterr().err, "invalid choice")
    assert not (tmp_path / "out").exists()


def test_unreachable_cosine_target_exits_1(capsys, tiny_onnx, tmp_path):
    code, _, err = run(capsys, "quantize", str(tiny_onnx), "-o", str(tmp_path / "q"), "--calib", "builtin:samples",
                       "--max-cosine-loss", "0", "--max-float-nodes", "0", "-q")
    assert code == 1 and "misses --max-cosine-loss" in err
    assert not (tmp_path / "q").exists()


def test_check_tensorrt_readiness(capsys, tiny_onnx, tmp_path):
    code, out, _ = run(capsys, "check", str(tiny_onnx), "--target", "tensorrt", "--json", str(tmp_path / "new" / "r.json"))
    assert code == 0 and "ready (0 errors" in out
    assert json.loads((tmp_path / "new" / "r.json").read_text())["findings"] is not None
    assert run(capsys, "optimize", str(tiny_onnx), "-o", str(tmp_path / "fused"), "-q")[0] == 0
    code, out, _ = run(capsys, "check", str(tmp_path / "fused"))
    assert code == 1 and "com.microsoft::Attention" in out and "--target tensorrt" in out
    code, _, err = run(capsys, "check", str(tiny_onnx), "--shapes", "input_ids:8x8,1x16,32x64")
    assert code == 2
    one_line_error(err, "MIN <= OPT <= MAX")
    code, _, err = run(capsys, "check", str(tiny_onnx), "--shapes", "nope:1x8,8x16,32x64")
    assert code == 2
    code, _, err = run(capsys, "check", str(tiny_onnx), "--shapes", "input_ids:1x8,8x16,32x64", "--shapes",
                       "input_ids:1x8,8x16,32x64")
    assert code == 2
    one_line_error(err, "--shapes names input 'input_ids' twice")


def test_tensorrt_paths_refuse_in_one_line_without_tensorrt(capsys, tiny_bert, tiny_onnx, tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        import pytest

        pytest.skip("TensorRT is installed here; the refusal is for machines without it")
    code, _, err = run(capsys, "build", str(tiny_onnx), "-o", str(tmp_path / "engine"))
    assert code == 2
    one_line_error(err, "TensorRT is not installed: on a GPU machine, make install EXTRAS=gpu,dev")
    code, _, err = run(capsys, "build", str(tiny_bert), "-o", str(tmp_path / "engine"))
    assert code == 2
    one_line_error(err, "build takes an ONNX artifact")
    code, _, err = run(capsys, "build", str(tiny_onnx), "-o", str(tmp_path / "engine"), "--shapes", "input_ids:8x8,1x16,32x64")
    assert code == 2
    one_line_error(err, "MIN <= OPT <= MAX")
    assert not (tmp_path / "engine").exists()


def test_inspect_and_env(capsys, tiny_bert, tiny_onnx, tmp_path):
    code, out, _ = run(capsys, "inspect", str(tiny_onnx))
    assert code == 0 and "onnx artifact, task feature-extraction" in out and "made from:" in out
    assert "last_hidden_state: float32[batch_size,sequence_length,32]" in out
    code, out, _ = run(capsys, "inspect", str(tiny_onnx), "--json")
    info = json.loads(out)
    assert info["kind"] == "onnx" and info["parity"]["passed"] is True and info["source"]["kind"] == "hf"
    code, out, _ = run(capsys, "inspect", str(tiny_bert))
    assert code == 0 and "hf artifact" in out and "num_hidden_layers=2" in out
    code, _, err = run(capsys, "inspect", str(tmp_path / "nope"))
    assert code == 2
    one_line_error(err, "no such directory")
    code, out, _ = run(capsys, "env", "--json")
    env = json.loads(out)
    assert code == 0 and "CPUExecutionProvider" in env["onnxruntime_providers"]
    assert {"torch", "onnxruntime"} <= set(env["versions"]) and "cpu_features" in env["machine"]
    assert list(env["onnxruntime_distributions"]) == ["onnxruntime"]  # the cpu extra, and not the GPU wheel too
    from benchmarks.inspect_env import env_text

    both = {**env, "onnxruntime_distributions": {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"}}
    assert "WARNING: onnxruntime and onnxruntime-gpu are both installed" in env_text(both)
    assert "WARNING" not in env_text(env)
