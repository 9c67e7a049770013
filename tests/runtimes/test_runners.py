import numpy as np
import pytest

from runtimes import load_artifact, open_runner, parse_runtime
from runtimes.errors import UsageError


def _feeds(n=2, s=7, with_types=True):
    rng = np.random.default_rng(0)
    f = {"input_ids": rng.integers(5, 60, (n, s)).astype(np.int64), "attention_mask": np.ones((n, s), np.int64)}
    f["attention_mask"][1, 4:] = 0
    if with_types:
        f["token_type_ids"] = np.zeros((n, s), np.int64)
    return f


def test_torch_and_onnxruntime_share_one_interface(tiny_bert, tiny_onnx):
    outs = {}
    for path, runtime in ((tiny_bert, "torch"), (tiny_onnx, "onnxruntime:cpu")):
        with open_runner(path, runtime, threads=1) as r:
            assert [s.name for s in r.input_specs()] == ["input_ids", "attention_mask", "token_type_ids"]
            assert [s.name for s in r.output_specs()] == ["last_hidden_state"]
            outs[runtime] = r.infer(_feeds())["last_hidden_state"]
            assert r.describe()["threads"] == 1
    assert outs["torch"].shape == (2, 7, 32)
    np.testing.assert_allclose(outs["torch"], outs["onnxruntime:cpu"], atol=1e-4)


def test_runner_requires_activation(tiny_onnx):
    r = open_runner(tiny_onnx)
    with pytest.raises(RuntimeError, match="activate"):
        r.infer(_feeds())


def test_wrong_feeds_get_a_clear_error(tiny_onnx):
    with open_runner(tiny_onnx) as r:
        with pytest.raises(UsageError, match="missing \\['token_type_ids'\\]"):
            r.infer(_feeds(with_types=False))
        bad = _feeds()
        bad["input_ids"] = bad["input_ids"].astype(np.float32)
        with pytest.raises(UsageError, match="dtype float32; expected input_ids: int64"):
            r.infer(bad)


def test_corrupt_onnx_is_refused_in_one_line(tiny_onnx, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_onnx, bad)
    (bad / "model.onnx").write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(UsageError) as e:
        open_runner(bad).activate()
    assert "cannot load this model" in str(e.value) and "\n" not in str(e.value)


def test_runtime_names_and_kinds(tiny_bert, tiny_onnx):
    assert parse_runtime("onnxruntime") == ("onnxruntime", "cpu")
    assert parse_runtime("torch:cuda") == ("torch", "cuda")
    with pytest.raises(UsageError, match="unknown runtime"):
        parse_runtime("tflite")
    with pytest.raises(UsageError, match="cannot run on torch"):
        open_runner(tiny_onnx, "torch")
    with pytest.raises(UsageError, match="unknown device"):
        open_runner(tiny_onnx, "onnxruntime:tpu")
    assert load_artifact(tiny_bert).kind == "hf"


def test_missing_gpu_providers_are_refused_clearly(tiny_onnx):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the refusal path is for CPU-only installs")
    with pytest.raises(UsageError, match="needs CUDAExecutionProvider.*onnxruntime-gpu"):
        open_runner(tiny_onnx, "onnxruntime:cuda").activate()


def test_a_provider_that_falls_back_is_refused(tiny_onnx, monkeypatch):
    """onnxruntime lists a GPU provider it cannot start and quietly runs on the next one; the
    runner must refuse rather than report CPU numbers under the CUDA or TensorRT name."""
    import onnxruntime as ort

    real = ort.InferenceSession

    asked = []

    def falls_back(path, sess_options=None, providers=None):  # what onnxruntime does when the EP fails to start
        asked.append(providers)
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                                 "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", falls_back)
    monkeypatch.setenv("ENGINEWRIGHT_CACHE", str(tiny_onnx.parent / "cache"))
    for device in ("cuda", "tensorrt"):
        runner = open_runner(tiny_onnx, f"onnxruntime:{device}", provider_options={"device_id": 1})
        with pytest.raises(UsageError, match="could not start it and fell back to CPUExecutionProvider"):
            runner.activate()
    # what the GPU providers were asked for: CUDA in strict FP32 like the torch baseline, and the
    # CUDA EP behind TensorRT on the same GPU
    cuda, trt = (dict(p) for p in asked)
    assert cuda["CUDAExecutionProvider"] == {"use_tf32": "0", "device_id": 1}
    assert trt["CUDAExecutionProvider"] == {"use_tf32": "0", "device_id": 1}
    assert trt["TensorrtExecutionProvider"]["device_id"] == 1 and "CPUExecutionProvider" in trt
    cpu = open_runner(tiny_onnx, "onnxruntime:cpu")
    cpu.activate()
    assert cpu._session._enable_fallback is False  # a failed run() must not move to another provider
    cpu.deactivate()


def test_torch_cuda_without_gpu_is_refused(tiny_bert):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(UsageError, match="torch:cuda"):
        open_runner(tiny_bert, "torch:cuda").activate()


@pytest.mark.gpu
def test_torch_cuda_matches_cpu(tiny_bert):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU with a CUDA build of torch (torch.cuda.is_available() is False)")
    with open_runner(tiny_bert, "torch:cpu") as cpu, open_runner(tiny_bert, "torch:cuda") as gpu:
        a = cpu.infer(_feeds())["last_hidden_state"]
        b = gpu.infer(_feeds())["last_hidden_state"]
    np.testing.assert_allclose(a, b, atol=1e-3)


def test_tensorrt_runtime_defaults_to_cuda_and_engines_plan_to_it():
    from runtimes import default_runtime
    from runtimes.artifact import Artifact

    assert parse_runtime("tensorrt") == ("tensorrt", "cuda")
    assert default_runtime(Artifact(__import__("pathlib").Path("e"), "trt", None, {})) == "tensorrt:cuda"


def test_tensorrt_ep_defaults_follow_the_graph_precision(tiny_onnx, tmp_path):
    from evaluation.data import load_texts
    from exporter.optimize import optimize
    from exporter.quantize import QuantizeConfig, quantize
    from runtimes.onnxrt.runner import tensorrt_ep_defaults

    fp32 = tensorrt_ep_defaults(load_artifact(tiny_onnx), tmp_path)
    assert fp32["trt_engine_cache_enable"] and fp32["trt_timing_cache_path"] == str(tmp_path)
    assert "trt_fp16_enable" not in fp32 and "trt_int8_enable" not in fp32
    fp16 = optimize(tiny_onnx, tmp_path / "fp16", target="tensorrt", fp16=True, progress=False)
    assert tensorrt_ep_defaults(fp16, tmp_path)["trt_fp16_enable"] is True
    qdq = quantize(tiny_onnx, tmp_path / "qdq", config=QuantizeConfig(target="tensorrt"), calib=load_texts(None), progress=False)
    assert tensorrt_ep_defaults(qdq, tmp_path)["trt_int8_enable"] is True


def test_tensorrt_ep_engine_cache_is_keyed_by_the_weights(tiny_onnx, tmp_path):
    """onnxruntime keys cached TensorRT engines on names, not weights: same graph, other weights
    must get another engine directory; an identical copy may share it."""
    import shutil

    import onnx
    from onnx import numpy_helper

    from runtimes.onnxrt.runner import tensorrt_ep_defaults

    def engines(path):
        return tensorrt_ep_defaults(load_artifact(path), tmp_path)["trt_engine_cache_path"]

    same, retrained = tmp_path / "same", tmp_path / "retrained"
    shutil.copytree(tiny_onnx, same)
    shutil.copytree(tiny_onnx, retrained)
    m = onnx.load(str(retrained / "model.onnx"))
    w = next(i for i in m.graph.initializer if numpy_helper.to_array(i).ndim == 2)
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 1.01, w.name))
    onnx.save(m, str(retrained / "model.onnx"))
    assert engines(tiny_onnx) == engines(same) and engines(tiny_onnx).startswith(str(tmp_path / "engines"))
    assert engines(retrained) != engines(tiny_onnx)
