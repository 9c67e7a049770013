"""triton for a decoder: the KV-cache graph unbatched, and the Python-backend generate model, whose loop
runs here without Triton (a stand-in triton_python_backend_utils answers its BLS requests with an
ONNX Runtime session) and must give the tokens of the project's own generate()."""

import importlib.util
import json
import sys
import types

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from exporter.triton import TritonConfig, write_repository
from runtimes.errors import UsageError

PROMPTS = ["the quick brown fox", "a model that runs on the CPU and on a GPU alike"]


def _parse(path):
    return text_format.Parse(path.read_text(), mc.ModelConfig())


@pytest.fixture(scope="module")
def repo(tiny_llama_onnx, tmp_path_factory):
    return write_repository([tiny_llama_onnx], tmp_path_factory.mktemp("triton") / "repo",
                            config=TritonConfig(device="cpu", max_new_tokens=5))


def test_a_decoder_gets_an_unbatched_graph_and_a_generate_model(repo):
    dec, gen = _parse(repo / "llama_onnx" / "config.pbtxt"), _parse(repo / "llama_onnx_generate" / "config.pbtxt")
    assert (dec.platform, dec.max_batch_size) == ("onnxruntime_onnx", 0) and not dec.HasField("dynamic_batching")
    dims = {i.name: list(i.dims) for i in dec.input}
    assert dims["input_ids"] == [-1, -1] and dims["past_key_values.0.key"] == [-1, 2, -1, 8] and len(dims) == 7
    assert {o.name for o in dec.output} == {"logits", *(f"present.{i}.{k}" for i in (0, 1) for k in ("key", "value"))}
    assert (gen.backend, gen.max_batch_size) == ("python", 0)
    assert [(i.name, i.optional) for i in gen.input][:2] == [("PROMPT", False), ("MAX_NEW_TOKENS", True)]
    assert [o.name for o in gen.output] == ["TEXT", "TOKENS", "LENGTHS"]
    version = repo / "llama_onnx_generate" / "1"
    settings = json.loads((version / "settings.json").read_text())
    assert settings["decoder"] == "llama_onnx" and settings["eos_token_ids"] == [0] and settings["max_new_tokens"] == 5
    assert settings["max_positions"] == 128 and [p["name"] for p in settings["past"]][:2] == [
        "past_key_values.0.key", "past_key_values.0.value"]
    assert (version / "model.py").is_file() and (version / "tokenizer" / "tokenizer.json").is_file()
    assert (repo / "llama_onnx" / "1" / "model.onnx").is_file()


class _Tensor:
    def __init__(self, name, array):
        self._name, self._array = name, np.asarray(array)

    def name(self):
        return self._name

    def as_numpy(self):
        return self._array

    def is_cpu(self):
        return True


def fake_pb_utils(repo):
    """A stand-in for Triton's triton_python_backend_utils: BLS requests run the repository's decoder on
    ONNX Runtime CPU, with the inputs and outputs its config.pbtxt declares."""
    import onnxruntime as ort

    sessions = {}
    m = types.ModuleType("triton_python_backend_utils")

    class TritonModelException(Exception):
        pass

    class TritonError:
        def __init__(self, msg):
            self._msg = msg

        def message(self):
            return self._msg

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.output_tensors, self._error = list(output_tensors), error

        def has_error(self):
            return self._error is not None

        def error(self):
            return self._error

    class InferenceRequest:
        def __init__(self, model_name, requested_output_names, inputs):
            self.model_name, self.names, self.inputs = model_name, list(requested_output_names), list(inputs)

        def exec(self):
            config = _parse(repo / self.model_name / "config.pbtxt")
            declared = {i.name for i in config.input}
            given = {t.name(): t.as_numpy() for t in self.inputs}
            if set(given) != declared or not set(self.names) <= {o.name for o in config.output}:
                return InferenceResponse([], TritonError(f"inputs {sorted(given)} do not match {sorted(declared)}"))
            if self.model_name not in sessions:
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = 1
                sessions[self.model_name] = ort.InferenceSession(str(repo / self.model_name / "1" / "model.onnx"), opts)
            out = sessions[self.model_name].run(self.names, given)
            return InferenceResponse([_Tensor(n, a) for n, a in zip(self.names, out)])

    def by_name(holder, name):
        return next((t for t in holder if t.name() == name), None)

    m.Tensor, m.InferenceRequest, m.InferenceResponse = _Tensor, InferenceRequest, InferenceResponse
    m.TritonError, m.TritonModelException = TritonError, TritonModelException
    m.get_input_tensor_by_name = lambda request, name: by_name(request.inputs, name)
    m.get_output_tensor_by_name = lambda response, name: by_name(response.output_tensors, name)
    return m


class _Request:
    def __init__(self, **inputs):
        self.inputs = [_Tensor(k, v) for k, v in inputs.items()]


@pytest.fixture
def model(repo, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils(repo))
    spec = importlib.util.spec_from_file_location("generate_model", repo / "llama_onnx_generate" / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    m = module.TritonPythonModel()
    m.initialize({})
    return m


def _ours(onnx_dir, prompts, **config):
    """The project's own loop on ONNX Runtime CPU, over the same left-padded prompts."""
    from runtimes import open_runner
    from runtimes.generation import GenerationConfig, generate
    from runtimes.tasks import get_task

    task = get_task("text-generation")
    tok = task.load_processor(onnx_dir)
    enc = task.encode(tok, type("Batch", (), {"texts": tuple(prompts)})(), max_length=127)
    with open_runner(onnx_dir, "onnxruntime:cpu", threads=1) as runner:
        got = generate(runner, enc, GenerationConfig(eos_token_ids=(0,), pad_token_id=tok.pad_token_id, **config))
    return got, tok


@pytest.mark.parametrize("sampling", [{}, {"do_sample": True, "temperature": 0.8, "top_k": 20, "top_p": 0.9, "seed": 3}])
def test_the_generate_models_loop_gives_the_tokens_of_generate(model, tiny_llama_onnx, sampling):
    names = {"do_sample": "DO_SAMPLE", "temperature": "TEMPERATURE", "top_k": "TOP_K", "top_p": "TOP_P", "seed": "SEED"}
    types_ = {"do_sample": np.bool_, "temperature": np.float32, "top_k": np.int32, "top_p": np.float32, "seed": np.int64}
    extra = {names[k]: np.array([v], dtype=types_[k]) for k, v in sampling.items()}
    prompts = np.array([p.encode() for p in PROMPTS], dtype=np.object_)
    [response] = model.execute([_Request(PROMPT=prompts, MAX_NEW_TOKENS=np.array([12], np.int32), **extra)])
    assert not response.has_error(), response.error() and response.error().message()
    out = {t.name(): t.as_numpy() for t in response.output_tensors}
    ours, tok = _ours(tiny_llama_onnx, PROMPTS, max_new_tokens=12, **sampling)
    assert out["TOKENS"].shape[1] >= 2 and np.array_equal(out["TOKENS"], ours.tokens)
    assert np.array_equal(out["LENGTHS"], ours.lengths)
    assert [t.decode() for t in out["TEXT"]] == [tok.decode(r[:n].tolist(), skip_special_tokens=True)
                                                 for r, n in zip(ours.tokens, ours.lengths)]


def test_the_default_token_count_and_a_bad_request(model, tiny_llama_onnx):
    good = _Request(PROMPT=np.array([PROMPTS[0].encode()], dtype=np.object_))
    bad = _Request(PROMPT=np.array([b"x"], dtype=np.object_), TEMPERATURE=np.array([0.0], np.float32))
    first, second = model.execute([good, bad])
    ours, _ = _ours(tiny_llama_onnx, PROMPTS[:1], max_new_tokens=5)  # --max-new-tokens 5 when written
    assert np.array_equal(next(t.as_numpy() for t in first.output_tensors if t.name() == "TOKENS"), ours.tokens)
    assert second.has_error() and "TEMPERATURE > 0" in second.error().message()


def test_decoder_repository_refusals(tiny_llama_onnx, tmp_path, capsys):
    from enginewright.cli import main

    for config, words in ((TritonConfig(max_batch_size=8), "--max-batch-size 8: a decoder's model is unbatched"),
                          (TritonConfig(ensemble=True), "--ensemble is for encoders"),
                          (TritonConfig(max_new_tokens=128), "--max-new-tokens 128: the model's context is 128")):
        with pytest.raises(UsageError, match=words):
            write_repository([tiny_llama_onnx], tmp_path / "r", config=config)
    assert not (tmp_path / "r").exists()
    assert main(["triton", str(tiny_llama_onnx), "-o", str(tmp_path / "r"), "--device", "cpu", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "llama_onnx_generate/1/model.py" in out and "llama_onnx/1/model.onnx" in out
