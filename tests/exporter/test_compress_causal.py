"""compress on a causal LM: layer drop, token-level distillation from the teacher, resume, export."""

import copy
import functools
import json

import numpy as np
import pytest
import torch
import transformers

from enginewright.cli import main
from exporter.compress import DistillConfig, LayerDropConfig, PruneConfig, compress
from exporter.compress import causal
from exporter.compress.causal_pruning import ffn_importance
from exporter.compress.distill import causal_distill_loss, drop_layers_
from exporter.training import TrainConfig
from runtimes.artifact import load_artifact
from runtimes.errors import UsageError
from tests.conftest import make_tiny_lm, write_splits

RECOVER = TrainConfig(epochs=4, batch_size=8, max_length=32, lr=1e-3, patience=None)
KD = DistillConfig(temperature=1.0, alpha=1.0)


@pytest.fixture(scope="module")
def lm4(tmp_path_factory):
    """A 4-layer tiny Llama (random, sharpened weights) as teacher."""
    return make_tiny_lm(tmp_path_factory.mktemp("lm4") / "llama", "llama", layers=4)


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    """30 training and 13 held-out sample sentences (``text`` column)."""
    return write_splits(tmp_path_factory.mktemp("texts"))


def _kw(texts, recovery=RECOVER):
    return dict(train_data=texts / "train.jsonl", eval_data=texts / "eval.jsonl", recovery=recovery, progress=False)


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_dropping_layers_leaves_a_loadable_lm_with_fewer_layers(arch, tmp_path):
    src = make_tiny_lm(tmp_path / arch, arch, layers=4)
    (tmp_path / "t").mkdir()
    texts = write_splits(tmp_path / "t")
    art = compress(src, tmp_path / "out", [LayerDropConfig(2)], **_kw(texts, recovery=None))
    m = art.manifest
    assert m["compression"][0]["teacher_layers_kept"] == [1, 3]
    assert (m["before"]["layers"], m["after"]["layers"]) == (4, 2)
    assert m["after"]["params"] < m["before"]["params"]
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(art.path), local_files_only=True)
    assert loaded.config.num_hidden_layers == 2
    teacher = transformers.AutoModelForCausalLM.from_pretrained(str(src), local_files_only=True)
    blocks = (lambda mdl: mdl.model.layers) if arch == "llama" else (lambda mdl: mdl.transformer.h)
    assert len(blocks(loaded)) == 2
    # the kept blocks are the teacher's layers 1 and 3, weight for weight
    for j, i in enumerate([1, 3]):
        a, b = blocks(loaded)[j].state_dict(), blocks(teacher)[i].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a if not k.endswith("attn.bias"))
    # and it generates through its KV cache as a freshly loaded model does
    ids = torch.tensor([[5, 6, 7]])
    out = loaded.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)
    assert m["perplexity"]["student"] == pytest.approx(m["dropped"]["perplexity"])


def test_distillation_lowers_the_kl_to_the_teacher_on_held_out_text(lm4, texts, tmp_path):
    art = compress(lm4, tmp_path / "kd", [LayerDropConfig(2), KD], **_kw(texts))
    m = art.manifest
    dropped, after = m["dropped"], m["after"]
    # held-out texts (eval.jsonl is not trained on): the distilled student is much closer to the teacher
    assert after["kl_to_teacher"] < 0.75 * dropped["kl_to_teacher"], (dropped, after)
    assert after["perplexity"] < dropped["perplexity"]
    p = m["perplexity"]
    assert p["teacher"] == m["before"]["perplexity"] and p["student"] == after["perplexity"]
    assert p["student_before_training"] == dropped["perplexity"] and p["eval_tokens"] > 100
    assert m["compression"][1]["technique"] == "distillation"
    # the saved student is the one measured
    student = transformers.AutoModelForCausalLM.from_pretrained(str(art.path), local_files_only=True)
    teacher = transformers.AutoModelForCausalLM.from_pretrained(str(lm4), local_files_only=True)
    tok = transformers.AutoTokenizer.from_pretrained(str(art.path))
    tok.pad_token = tok.eos_token
    enc, _ = causal.encode_texts(tok, texts / "eval.jsonl", 32)
    again = causal.scores(student, enc, 16, tok.pad_token_id, teacher)
    assert again["kl_to_teacher"] == pytest.approx(after["kl_to_teacher"], rel=1e-4)
    assert again["perplexity"] == pytest.approx(after["perplexity"], rel=1e-4)


def test_padding_positions_do_not_contribute_to_the_loss(lm4):
    teacher = transformers.AutoModelForCausalLM.from_pretrained(str(lm4), local_files_only=True)
    student = copy.deepcopy(teacher)
    drop_layers_(student, LayerDropConfig(2), task="text-generation")
    loss_fn = causal_distill_loss(teacher, DistillConfig(temperature=2.0, alpha=0.5))
    ids = torch.tensor([[5, 9, 12, 40, 7, 3], [8, 21, 30, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    labels = ids.masked_fill(mask == 0, -100)
    student.eval()
    base = loss_fn(student, {"input_ids": ids, "attention_mask": mask, "labels": labels})
    padded = ids.clone()
    padded[1, 3:] = torch.tensor([77, 150, 2])
    assert torch.allclose(loss_fn(student, {"input_ids": padded, "attention_mask": mask, "labels": labels}), base,
                          rtol=0, atol=1e-6)
    real = ids.clone()
    real[1, 2] = 77  # a real token does count
    real_labels = real.masked_fill(mask == 0, -100)
    assert not torch.allclose(loss_fn(student, {"input_ids": real, "attention_mask": mask, "labels": real_labels}), base)
    # the KL term alone: a student identical to the teacher has zero loss, padding or not
    same = causal_distill_loss(teacher, DistillConfig(temperature=2.0, alpha=1.0))
    assert float(same(teacher, {"input_ids": padded, "attention_mask": mask, "labels": labels})) == pytest.approx(0, abs=1e-6)


def test_resume_after_interrupt_gives_the_uninterrupted_weights(lm4, texts, tmp_path, monkeypatch):
    cfg = TrainConfig(epochs=2, batch_size=8, max_length=32, lr=1e-3, patience=None, checkpoint_every=2)
    techniques = [LayerDropConfig(2), KD]
    full = compress(lm4, tmp_path / "full", techniques, **_kw(texts, cfg))
    calls = {"n": 0}

    def interrupt_at_step_5(model):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt

    original = causal.train
    monkeypatch.setattr(causal, "train", functools.partial(original, after_step=[interrupt_at_step_5]))
    with pytest.raises(KeyboardInterrupt):
        compress(lm4, tmp_path / "cut", techniques, **_kw(texts, cfg))
    assert not (tmp_path / "cut").exists()
    assert json.loads((tmp_path / "cut.ckpt" / "state.json").read_text())["global_step"] == 4
    with pytest.raises(UsageError, match="pass --resume"):
        compress(lm4, tmp_path / "cut", techniques, **_kw(texts, cfg))
    monkeypatch.setattr(causal, "train", original)
    resumed = compress(lm4, tmp_path / "cut", techniques, resume=True, **_kw(texts, cfg))
    assert resumed.manifest["training"]["resumed_from_step"] == 4
    assert not (tmp_path / "cut.ckpt").exists()
    a, b = _weights(full.path), _weights(resumed.path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_distilled_student_exports_with_parity(lm4, texts, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=8, max_length=32, lr=1e-3)
    art = compress(lm4, tmp_path / "kd", [LayerDropConfig(3), KD], **_kw(texts, cfg))
    assert main(["export", str(art.path), "-o", str(tmp_path / "onnx"), "-q"]) == 0  # exit 1 on a parity failure
    onnx = load_artifact(tmp_path / "onnx")
    parity = onnx.manifest["parity"]
    assert parity["prefill_max_abs"] <= 1e-3 and parity["decode_max_abs"] <= 1e-3 and parity["top1_agreement"] >= 0.99
    assert sum(s.name.startswith("present.") for s in onnx.outputs) == 2 * 3


def test_a_teacher_with_another_tokenizer_is_refused(lm4, texts, tmp_path):
    other = make_tiny_lm(tmp_path / "other", "llama", layers=4)
    tj = other / "tokenizer.json"
    data = json.loads(tj.read_text())
    data["model"]["vocab"]["zzqx"] = max(data["model"]["vocab"].values()) + 1
    tj.write_text(json.dumps(data))
    with pytest.raises(UsageError, match="teacher's tokenizer differs"):
        compress(lm4, tmp_path / "x", [LayerDropConfig(2), KD], teacher=other, **_kw(texts))
    assert not (tmp_path / "x").exists()


def test_a_separate_teacher_distils_into_the_artifact_as_it_is(lm4, texts, tmp_path):
    small = make_tiny_lm(tmp_path / "small", "llama", seed=3, layers=1)
    cfg = TrainConfig(epochs=2, batch_size=8, max_length=32, lr=1e-3, patience=None)
    m = compress(small, tmp_path / "kd", [KD], teacher=lm4, **_kw(texts, cfg)).manifest
    assert (m["before"]["layers"], m["after"]["layers"]) == (4, 1)
    assert m["after"]["kl_to_teacher"] < m["dropped"]["kl_to_teacher"]


@pytest.mark.parametrize("techniques, match", [
    ([KD], "needs a smaller student"),
    ([LayerDropConfig(4), KD], "fewer layers than the teacher's 4"),
    ([PruneConfig(heads=0.25)], "--prune-heads and --flop-target take encoders"),
    ([PruneConfig(flop_target=0.3), KD], "a causal LM prunes FFN neurons"),
])
def test_bad_causal_settings(lm4, texts, tmp_path, techniques, match):
    with pytest.raises(UsageError, match=match):
        compress(lm4, tmp_path / "x", techniques, **_kw(texts))
    assert not (tmp_path / "x").exists()


def test_the_command_line_prints_the_perplexities(tiny_llama, texts, tmp_path, capsys):
    argv = ["compress", str(tiny_llama), "--student-layers", "1", "--distill", "--train", str(texts / "train.jsonl"),
            "--eval", str(texts / "eval.jsonl"), "--epochs", "1", "--batch-size", "8", "--max-length", "32",
            "--device", "cpu", "-o", str(tmp_path / "kd"), "-q"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    m = load_artifact(tmp_path / "kd").manifest
    assert f"teacher {m['before']['perplexity']:.2f}" in out and "layers 2 -> 1" in out
    assert m["options"]["techniques"][0] == {"type": "LayerDropConfig", "layers": 1}


PRUNE = PruneConfig(ffn=0.5, score_batches=3, batch_size=8)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_ffn_pruning_removes_the_lowest_scoring_neurons_and_nothing_else(arch, texts, tmp_path):
    """The pruned model computes what the input model computes with those neurons' activations
    zeroed, and the neurons removed are the lowest-scoring ones of each layer."""
    src = make_tiny_lm(tmp_path / arch, arch, layers=2)
    if arch == "gpt2":  # biases start at zero; give them values, so slicing them wrongly shows
        model = transformers.AutoModelForCausalLM.from_pretrained(str(src), local_files_only=True)
        torch.manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("mlp.c_fc.bias") or name.endswith("mlp.c_proj.bias"):
                    p.normal_(0, 0.5)
        model.save_pretrained(str(src))
    art = compress(src, tmp_path / "out", [PRUNE], **_kw(texts, recovery=None))
    record = art.manifest["compression"][0]
    width = 64 if arch == "llama" else 128  # intermediate 2 x hidden; GPT-2's default 4 x hidden
    assert record["ffn_width"] == {"before": width, "after": width // 2}
    assert (art.manifest["before"]["ffn_width"], art.manifest["after"]["ffn_width"]) == (width, width // 2)
    assert art.manifest["after"]["params"] < art.manifest["before"]["params"]
    pruned = transformers.AutoModelForCausalLM.from_pretrained(str(art.path), local_files_only=True).eval()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(src), local_files_only=True).eval()
    blocks = causal._blocks(model)
    enc, _ = causal.encode_texts(_tokenizer(src), texts / "train.jsonl", 128)
    score = ffn_importance(model, blocks, enc, PRUNE, progress=False)
    assert record["removed"] == [sorted(np.argsort(-s, kind="stable")[width // 2:].tolist()) for s in score]
    downs = [b.mlp.down_proj if arch == "llama" else b.mlp.c_proj for b in blocks]
    zero = [torch.ones(width) for _ in blocks]
    for z, gone in zip(zero, record["removed"]):
        z[gone] = 0
    hooks = [d.register_forward_pre_hook(lambda mod, args, z=z: (args[0] * z,)) for d, z in zip(downs, zero)]
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        masked = model(ids).logits
        for h in hooks:
            h.remove()
        full = model(ids).logits
        assert torch.allclose(pruned(ids).logits, masked, atol=1e-5)
    assert not torch.allclose(full, masked, atol=1e-3)  # the removed neurons did contribute


def test_a_pruned_student_distils_exports_and_says_so(lm4, texts, tmp_path, capsys):
    argv = ["compress", str(lm4), "--prune-ffn", "0.5", "--distill", "--temperature", "1", "--alpha", "1",
            "--train", str(texts / "train.jsonl"), "--eval", str(texts / "eval.jsonl"), "--epochs", "4",
            "--batch-size", "8", "--max-length", "32", "--lr", "1e-3", "--device", "cpu", "-o", str(tmp_path / "kd"), "-q"]
    assert main(argv) == 0
    assert "layers 4 -> 4; FFN width 64 -> 32" in capsys.readouterr().out
    m = load_artifact(tmp_path / "kd").manifest
    assert m["after"]["kl_to_teacher"] < m["dropped"]["kl_to_teacher"]
    assert main(["export", str(tmp_path / "kd"), "-o", str(tmp_path / "onnx"), "-q"]) == 0  # exit 1 on a parity failure
    assert load_artifact(tmp_path / "onnx").manifest["parity"]["top1_agreement"] >= 0.99


def _tokenizer(path):
    from runtimes.tasks import get_task

    return get_task("text-generation").load_processor(path)
