import json

import numpy as np
import onnx
import pytest

from evaluation.compare import run_compare
from evaluation.data import load_texts
from exporter import export_hf, export_module
from runtimes import load_artifact, open_runner
from runtimes.errors import CheckFailed, UsageError


def test_export_writes_a_checked_artifact_with_a_manifest(tiny_onnx, tiny_bert):
    m = json.loads((tiny_onnx / "manifest.json").read_text())
    assert m["kind"] == "onnx" and m["task"] == "feature-extraction" and m["schema_version"] == 1
    assert m["inputs"][0] == {"name": "input_ids", "dtype": "int64", "shape": ["batch_size", "sequence_length"]}
    assert m["outputs"] == [{"name": "last_hidden_state", "dtype": "float32", "shape": ["batch_size", "sequence_length", 32]}]
    assert m["source"]["hash"].startswith("sha256:") and m["source"]["kind"] == "hf"
    assert {"torch", "onnx", "onnxruntime", "transformers"} <= set(m["versions"])
    assert m["parity"]["passed"] and m["parity"]["outputs"][0]["max_abs"] < 1e-4
    assert m["checks"] == {"onnx_checker": "full_check", "shape_inference": "strict"}
    assert "model.onnx" in m["files"] and (tiny_onnx / "tokenizer.json").is_file()
    onnx.checker.check_model(str(tiny_onnx / "model.onnx"), full_check=True)


@pytest.mark.parametrize("task", ["text-classification", "token-classification"])
def test_export_classification_tasks(task, tmp_path):
    from tests.conftest import make_tiny_bert

    src = make_tiny_bert(tmp_path / "m", task=task)
    art = export_hf(src, tmp_path / "onnx", progress=False)
    assert art.task == task and [o.name for o in art.outputs] == ["logits"]
    want = ["batch_size", "sequence_length", 3] if task == "token-classification" else ["batch_size", 3]
    assert list(art.outputs[0].shape) == want
    assert run_compare(src, [art], load_texts(None), progress=False).passed


def test_dynamic_axes_serve_any_batch_and_length(tiny_onnx):
    with open_runner(tiny_onnx) as r:
        for b, s in ((1, 3), (5, 40)):
            f = {n.name: np.ones((b, s), np.int64) for n in r.input_specs()}
            assert r.infer(f)["last_hidden_state"].shape == (b, s, 32)


def test_forced_external_data(tiny_bert, tmp_path):
    art = export_hf(tiny_bert, tmp_path / "ext", external_data=True, progress=False)
    assert art.manifest["external_data"] is True
    data = tmp_path / "ext" / "model.onnx_data"
    assert data.is_file() and data.stat().st_size > (tmp_path / "ext" / "model.onnx").stat().st_size
    assert art.manifest["parity"]["passed"]
    assert run_compare(tiny_bert, [art], load_texts(None), progress=False).passed


def test_export_refuses_bad_input_and_writes_nothing(tiny_bert, tiny_onnx, tmp_path):
    with pytest.raises(UsageError, match="output already exists; pass --force"):
        export_hf(tiny_bert, tiny_onnx, progress=False)
    with pytest.raises(UsageError, match="unknown task 'translation'"):
        export_hf(tiny_bert, tmp_path / "x", task="translation", progress=False)
    with pytest.raises(UsageError, match="export takes a Hugging Face model directory"):
        export_hf(tiny_onnx, tmp_path / "x", progress=False)
    assert list(tmp_path.iterdir()) == []


class _Pool(__import__("torch").nn.Module):
    """Masked mean pooling over a linear layer; no token_type_ids input."""

    def __init__(self, noisy: bool = False):
        import torch

        super().__init__()
        self.proj = torch.nn.Linear(8, 4)
        self.noisy = noisy

    def forward(self, x, attention_mask):
        import torch

        h = self.proj(x)
        if self.noisy:
            h = h + torch.rand_like(h)
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1)


@pytest.mark.parametrize("dynamo", [True, False])
def test_export_any_module(dynamo, tmp_path):
    import torch

    torch.manual_seed(0)
    x = torch.randn(2, 6, 8)
    mask = torch.ones(2, 6, dtype=torch.int64)
    mask[1, 4:] = 0
    art = export_module(_Pool(), {"x": x, "attention_mask": mask}, tmp_path / "pool", output_names=["pooled"],
                        dynamic_axes={"x": {0: "batch_size", 1: "sequence_length"},
                                      "attention_mask": {0: "batch_size", 1: "sequence_length"},
                                      "pooled": {0: "batch_size"}}, dynamo=dynamo)
    assert [s.name for s in art.inputs] == ["x", "attention_mask"]
    assert art.manifest["parity"]["passed"] and art.manifest["options"]["dynamo"] is dynamo
    with open_runner(art) as r:
        y = r.infer({"x": np.ones((3, 9, 8), np.float32), "attention_mask": np.ones((3, 9), np.int64)})["pooled"]
    assert y.shape == (3, 4)


def test_export_module_parity_failure_writes_nothing(tmp_path):
    import torch

    x = torch.randn(2, 3, 8)
    with pytest.raises(CheckFailed, match="parity check failed"):
        export_module(_Pool(noisy=True), {"x": x, "attention_mask": torch.ones(2, 3, dtype=torch.int64)},
                      tmp_path / "noisy", output_names=["pooled"], dynamo=False)
    assert list(tmp_path.iterdir()) == []


def test_export_without_token_type_ids_still_compares(tiny_bert, tmp_path):
    """A model exported without token_type_ids just works with the project's feeds."""
    import torch
    import transformers

    model = transformers.BertModel.from_pretrained(str(tiny_bert)).eval()

    class NoTypes(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = model

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.randint(5, 50, (2, 7))
    dyn = {n: {0: "batch_size", 1: "sequence_length"} for n in ("input_ids", "attention_mask", "last_hidden_state")}
    art = export_module(NoTypes(), {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, tmp_path / "nt",
                        output_names=["last_hidden_state"], dynamic_axes=dyn, dynamo=False, task="feature-extraction")
    assert [s.name for s in art.inputs] == ["input_ids", "attention_mask"]
    outcome = run_compare(tiny_bert, [load_artifact(art.path)], load_texts(None), progress=False)
    assert outcome.passed, outcome.markdown()


def test_pooled_embedding_export(tiny_bert, tiny_classifier, tmp_path):
    art = export_hf(tiny_bert, tmp_path / "pooled", pooling="mean", normalize=True, progress=False)
    assert [o.name for o in art.outputs] == ["sentence_embedding"] and art.manifest["pooling"] == {"mode": "mean", "normalize": True}
    with open_runner(art) as r:
        emb = r.infer({s.name: np.ones((3, 5), np.int64) for s in r.input_specs()})["sentence_embedding"]
    assert emb.shape == (3, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    outcome = run_compare(tiny_bert, [art], load_texts(None), progress=False)  # PyTorch side pools the same way
    assert outcome.passed and outcome.report["reference"]["settings"]["pooling"] == "mean"
    cls = export_hf(tiny_bert, tmp_path / "cls", pooling="cls", progress=False)
    assert run_compare(tiny_bert, [cls], load_texts(None), progress=False).passed
    with pytest.raises(UsageError, match="--pooling needs --task feature-extraction"):
        export_hf(tiny_classifier, tmp_path / "x", pooling="mean", progress=False)
    with pytest.raises(UsageError, match="--normalize needs --pooling"):
        export_hf(tiny_bert, tmp_path / "x", normalize=True, progress=False)
    assert not (tmp_path / "x").exists()


def test_external_data_rewrite_leaves_no_orphan_files(tmp_path):
    """A model saved with one file per tensor becomes model.onnx + model.onnx_data, nothing else."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from exporter.onnx_file import save_with_external_data

    w = numpy_helper.from_array(np.ones(64, np.float32), "W")
    graph = helper.make_graph([helper.make_node("Add", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", 1, [64])], [helper.make_tensor_value_info("y", 1, [64])], [w])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph), str(path), save_as_external_data=True, all_tensors_to_one_file=False,
              size_threshold=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["W", "model.onnx"]
    save_with_external_data(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx_data"]
    assert numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0]).sum() == 64
