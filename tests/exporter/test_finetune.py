import functools
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import exporter.finetune as ft
from exporter.finetune import LoraSettings, finetune
from exporter.training import TrainConfig
from runtimes import open_runner
from runtimes.errors import UsageError
from tests.conftest import LABELS

CFG = TrainConfig(epochs=2, batch_size=8, max_length=32, patience=None, checkpoint_every=2)


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def test_finetune_writes_an_artifact_export_and_runtimes_take(tiny_bert, splits, tmp_path):
    art = finetune(tiny_bert, tmp_path / "ft", train_data=splits / "train.jsonl", eval_data=splits / "eval.jsonl",
                   config=CFG, progress=False)
    m = art.manifest
    assert (art.kind, art.task) == ("hf", "text-classification")
    assert m["labels"] == sorted(LABELS)
    config = json.loads((art.path / "config.json").read_text())
    assert config["id2label"] == {str(i): n for i, n in enumerate(sorted(LABELS))}
    report = m["eval"]
    assert set(report["per_class"]["classes"]) == set(LABELS) and {"micro", "macro"} <= set(report["per_class"])
    assert report["ci_low"] <= report["accuracy"] <= report["ci_high"] and report["rows"] == 13
    assert [h["epoch"] for h in m["training"]["history"]] == [1, 2]
    assert not (tmp_path / "ft.ckpt").exists()
    with open_runner(art) as r:
        assert [s.name for s in r.output_specs()] == ["logits"]
    from exporter import export_hf

    assert export_hf(art.path, tmp_path / "onnx", progress=False).manifest["parity"]["passed"]


def test_same_seed_same_weights_and_resume_after_interrupt(tiny_bert, splits, tmp_path, monkeypatch):
    kw = dict(train_data=splits / "train.jsonl", eval_data=splits / "eval.jsonl", config=CFG, progress=False)
    full = finetune(tiny_bert, tmp_path / "full", **kw)

    calls = {"n": 0}

    def interrupt_at_step_5(model):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt

    original = ft.train
    monkeypatch.setattr(ft, "train", functools.partial(original, after_step=[interrupt_at_step_5]))
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny_bert, tmp_path / "cut", **kw)
    assert not (tmp_path / "cut").exists() and (tmp_path / "cut.ckpt" / "state.json").is_file()
    state = json.loads((tmp_path / "cut.ckpt" / "state.json").read_text())
    assert state["global_step"] == 4  # the last checkpoint before the interruption
    with pytest.raises(UsageError, match="pass --resume"):
        finetune(tiny_bert, tmp_path / "cut", **kw)
    monkeypatch.setattr(ft, "train", original)
    resumed = finetune(tiny_bert, tmp_path / "cut", resume=True, **kw)
    assert resumed.manifest["training"]["resumed_from_step"] == 4

    a, b = _weights(full.path), _weights(resumed.path)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    again = finetune(tiny_bert, tmp_path / "again", **kw)
    assert all(torch.equal(a[k], v) for k, v in _weights(again.path).items())


def test_early_stopping_keeps_the_best_epoch(tiny_bert, splits, tmp_path):
    cfg = TrainConfig(epochs=6, batch_size=8, max_length=32, patience=1, lr=1e-6)
    art = finetune(tiny_bert, tmp_path / "es", train_data=splits / "train.jsonl", eval_data=splits / "eval.jsonl",
                   config=cfg, progress=False)
    t = art.manifest["training"]
    best = max(h["eval_metric"] for h in t["history"])
    assert t["best_metric"] == best and art.manifest["eval"]["accuracy"] == pytest.approx(best)
    if t["stopped_early"]:
        assert t["epochs_run"] < 6


def test_lora_is_merged_into_plain_weights(tiny_bert, splits, tmp_path):
    art = finetune(tiny_bert, tmp_path / "lora", train_data=splits / "train.jsonl", eval_data=splits / "eval.jsonl",
                   config=TrainConfig(epochs=1, batch_size=8, max_length=32, lr=1e-2), lora=LoraSettings(r=4), progress=False)
    w = _weights(art.path)
    assert not any("lora" in k for k in w)
    base = load_file(str(tiny_bert / "model.safetensors"))
    q = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(w["bert." + q], base[q])  # the adapter was merged into the query projection
    k = "encoder.layer.0.attention.self.key.weight"
    assert torch.equal(w["bert." + k], base[k])  # and only where it was attached


def test_token_classification_from_conll(tiny_bert, tmp_path):
    sents = [("the", "O"), ("old", "B-OBJ"), ("bridge", "I-OBJ"), ("was", "O"), ("green", "O")]
    other = [("seven", "O"), ("ducks", "B-ANI"), ("crossed", "O"), ("the", "O"), ("road", "B-OBJ")]
    text = "\n\n".join("\n".join(f"{w} {t}" for w, t in s) for s in [sents, other] * 4) + "\n"
    (tmp_path / "train.conll").write_text(text)
    (tmp_path / "eval.conll").write_text(text)
    art = finetune(tiny_bert, tmp_path / "tok", train_data=tmp_path / "train.conll", eval_data=tmp_path / "eval.conll",
                   task="token-classification", config=TrainConfig(epochs=1, batch_size=4, max_length=16), progress=False)
    m = art.manifest
    assert m["labels"][0] == "O" and art.task == "token-classification"
    assert {"OBJ", "ANI"} <= set(m["eval"]["entity_level"]["classes"])
    assert "token_level" in m["eval"] and 0 <= m["eval"]["entity_micro_f1"] <= 1


@pytest.mark.parametrize("rows_train, rows_eval, words", [
    ([{"text": "a", "label": "x"}, {"text": "b"}], [{"text": "c", "label": "x"}], "row 2 has no label"),
    ([{"text": "a", "label": "x"}, {"text": "b", "label": "y"}], [{"text": "c", "label": "z"}], "labels ['z'] do not occur in the training data"),
    ([{"text": "a", "label": "x"}, {"text": "b", "label": "x"}], [{"text": "c", "label": "x"}], "at least two distinct labels"),
    ([{"text": "a"}, {"text": "b"}], [{"text": "c"}], "no label column"),
])
def test_bad_labels_are_refused_and_nothing_is_written(tiny_bert, tmp_path, rows_train, rows_eval, words):
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_train))
    (tmp_path / "e.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_eval))
    with pytest.raises(UsageError, match=words.replace("[", "\\[").replace("]", "\\]")):
        finetune(tiny_bert, tmp_path / "out", train_data=tmp_path / "t.jsonl", eval_data=tmp_path / "e.jsonl",
                 config=CFG, progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.ckpt").exists()


def test_not_a_model_dir(tmp_path, splits):
    with pytest.raises(UsageError, match="not a model directory"):
        finetune(tmp_path, tmp_path / "out", train_data=splits / "train.jsonl", eval_data=splits / "eval.jsonl", progress=False)


@pytest.mark.gpu
def test_finetune_and_compress_on_cuda_with_mixed_precision(tiny_bert, splits, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU with a CUDA build of torch (torch.cuda.is_available() is False)")
    from exporter.compress import PruneConfig, QATConfig, compress

    cfg = TrainConfig(epochs=2, batch_size=8, max_length=32, precision="auto")
    art = finetune(tiny_bert, tmp_path / "ft", train_data=splits / "train.jsonl", eval_data=splits / "eval.jsonl",
                   config=cfg, device="cuda", progress=False)
    assert art.manifest["options"]["device"] == "cuda"
    assert all(np.isfinite(h["loss"]) for h in art.manifest["training"]["history"])
    qat = QATConfig(calib_batches=2, float_layers=1, sensitivity_batches=1, attention=True)
    small = compress(art.path, tmp_path / "small", [PruneConfig(heads=0.5, ffn=0.5), qat],
                     train_data=splits / "train.jsonl", eval_data=splits / "eval.jsonl", recovery=cfg, device="cuda",
                     progress=False)
    assert small.manifest["qat"]["layers"] == 11 and small.manifest["qat"]["attention_matmuls"] == 4
    assert small.manifest["after"]["params"] < small.manifest["before"]["params"]
    from exporter import export_hf

    assert export_hf(small.path, tmp_path / "onnx", progress=False).manifest["parity"]["passed"]
