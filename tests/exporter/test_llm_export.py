"""Export of causal LMs with the KV cache (tiny Llama and GPT-2), checked against PyTorch, and the
ONNX Runtime generation loop beside the PyTorch one."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from enginewright.cli import main
from runtimes import load_artifact, open_runner
from runtimes.errors import CheckFailed, UsageError
from runtimes.generation import GenerationConfig, generate
from runtimes.tasks import get_task

TASK = get_task("text-generation")


class Batch:
    def __init__(self, *texts):
        self.texts = texts


@pytest.fixture(scope="session")
def tiny_llama_onnx(tiny_llama, tmp_path_factory):
    from exporter import export_hf

    return export_hf(tiny_llama, tmp_path_factory.mktemp("tiny_onnx") / "llama_onnx", progress=False).path


def test_export_names_the_cache_and_records_teacher_forced_parity(tiny_llama_onnx):
    art = load_artifact(tiny_llama_onnx)
    assert art.task == "text-generation" and art.manifest["options"]["kv_cache"] is True
    inputs = {s.name: s.shape for s in art.inputs}
    assert inputs["past_key_values.0.key"] == ("batch_size", 2, "past_sequence_length", 8)
    assert inputs["attention_mask"] == ("batch_size", "past_sequence_length + sequence_length")
    assert {s.name for s in art.outputs} >= {"logits", "present.1.value"}
    parity = art.manifest["parity"]
    assert parity["prefill_max_abs"] <= 1e-3 and parity["decode_max_abs"] <= 1e-3 and parity["top1_agreement"] >= 0.99


def test_gpt2_exports_from_the_command_line(tiny_gpt2, tmp_path, capsys):
    assert main(["export", str(tiny_gpt2), "-o", str(tmp_path / "onnx"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "task text-generation" in out and "decode step max abs" in out and "top-1 agreement 1.0000" in out


def test_onnx_runtime_generates_the_tokens_pytorch_does(tiny_llama, tiny_llama_onnx):
    tok = TASK.load_processor(tiny_llama)
    enc = TASK.encode(tok, Batch("the quick brown fox jumps", "hello"))
    tokens = {}
    for path, runtime in ((tiny_llama, "torch:cpu"), (tiny_llama_onnx, "onnxruntime:cpu")):
        with open_runner(load_artifact(path), runtime) as runner:
            tokens[runtime] = generate(runner, enc, GenerationConfig(max_new_tokens=8)).tokens
    np.testing.assert_array_equal(tokens["torch:cpu"], tokens["onnxruntime:cpu"])


def test_a_parity_failure_writes_nothing(tiny_llama, tmp_path):
    from evaluation.parity import Tolerance
    from exporter import export_hf

    with pytest.raises(CheckFailed, match="prefill logits"):
        export_hf(tiny_llama, tmp_path / "out", tolerance=Tolerance(atol=0.0, rtol=0.0), progress=False)
    assert not (tmp_path / "out").exists()


def test_a_model_directory_without_a_tokenizer_is_one_line(tiny_llama, tmp_path):
    from exporter import export_hf

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_llama / name, bare / name)
    with pytest.raises(UsageError, match="no tokenizer"):
        export_hf(bare, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
