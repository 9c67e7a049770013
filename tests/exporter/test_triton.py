import json

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from exporter.triton import TritonConfig, write_repository
from runtimes.errors import UsageError


def _parse(path):
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def test_onnx_model_repository_parses_with_tritons_schema(tiny_onnx, tmp_path):
    repo = write_repository([tiny_onnx], tmp_path / "repo",
                            config=TritonConfig(max_batch_size=16, instance_count=2, tensorrt_accelerator=True,
                                                fp16_accelerator=True))
    c = _parse(repo / "onnx" / "config.pbtxt")
    assert (c.name, c.platform, c.max_batch_size) == ("onnx", "onnxruntime_onnx", 16)
    assert [(i.name, mc.DataType.Name(i.data_type), list(i.dims)) for i in c.input] == [
        ("input_ids", "TYPE_INT64", [-1]), ("attention_mask", "TYPE_INT64", [-1]), ("token_type_ids", "TYPE_INT64", [-1])]
    assert [(o.name, mc.DataType.Name(o.data_type), list(o.dims)) for o in c.output] == [
        ("last_hidden_state", "TYPE_FP32", [-1, 32])]
    assert c.dynamic_batching.max_queue_delay_microseconds == 100
    assert c.instance_group[0].count == 2 and c.instance_group[0].kind == mc.ModelInstanceGroup.Kind.KIND_GPU
    acc = c.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == "FP16"
    assert (repo / "onnx" / "1" / "model.onnx").is_file()


def test_engine_and_unbatched_configs(tiny_onnx, tmp_path):
    eng = tmp_path / "engine"
    eng.mkdir()
    (eng / "model.plan").write_bytes(b"plan bytes")
    manifest = json.loads((tiny_onnx / "manifest.json").read_text())
    (eng / "manifest.json").write_text(json.dumps({"kind": "trt", "model_file": "model.plan",
                                                    "inputs": manifest["inputs"], "outputs": manifest["outputs"]}))
    repo = write_repository([eng], tmp_path / "repo", config=TritonConfig(max_batch_size=0, cuda_graphs=True))
    c = _parse(repo / "engine" / "config.pbtxt")
    assert c.platform == "tensorrt_plan" and c.max_batch_size == 0 and c.optimization.cuda.graphs
    assert list(c.input[0].dims) == [-1, -1] and not c.HasField("dynamic_batching")
    assert (repo / "engine" / "1" / "model.plan").read_bytes() == b"plan bytes"


def test_bad_repository_requests(tiny_bert, tiny_onnx, tmp_path):
    with pytest.raises(UsageError, match="export"):
        write_repository([tiny_bert], tmp_path / "r")
    with pytest.raises(UsageError, match="share the model name"):
        write_repository([tiny_onnx, tiny_onnx], tmp_path / "r")
    with pytest.raises(UsageError, match="need --device gpu"):
        TritonConfig(device="cpu", tensorrt_accelerator=True)
    (tmp_path / "taken").mkdir()
    with pytest.raises(UsageError, match="--force"):
        write_repository([tiny_onnx], tmp_path / "taken")
    assert not (tmp_path / "r").exists()


def test_tokenizer_ensemble(tiny_onnx, tmp_path):
    import importlib.util

    repo = write_repository([tiny_onnx], tmp_path / "repo", config=TritonConfig(ensemble=True, ensemble_max_length=16))
    tok = _parse(repo / "onnx_tokenizer" / "config.pbtxt")
    ens = _parse(repo / "onnx_ensemble" / "config.pbtxt")
    assert tok.backend == "python" and [o.name for o in tok.output] == ["input_ids", "attention_mask", "token_type_ids"]
    assert ens.platform == "ensemble" and [o.name for o in ens.output] == ["last_hidden_state"]
    first, second = ens.ensemble_scheduling.step
    assert first.model_name == "onnx_tokenizer" and second.model_name == "onnx"
    wiring = {n: f"tok_{n}" for n in ("input_ids", "attention_mask", "token_type_ids")}
    assert dict(first.output_map) == wiring and dict(second.input_map) == wiring
    # the Python backend's tokenization, run here without Triton
    version = repo / "onnx_tokenizer" / "1"
    spec = importlib.util.spec_from_file_location("tok_model", version / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from transformers import AutoTokenizer

    settings = module.load_settings(version)
    arrays = module.encode(AutoTokenizer.from_pretrained(str(version / "tokenizer")), ["The build finished.", "Coffee first."],
                           settings["input_names"], settings["max_length"])
    assert {k: v.shape for k, v in arrays.items()} == {n: (2, 16) for n in settings["input_names"]}
    assert arrays["attention_mask"][1].sum() < arrays["attention_mask"][0].sum() <= 16
