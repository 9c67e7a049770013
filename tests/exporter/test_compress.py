"""Structured pruning, layer drop with distillation, 2:4 sparsity: compress on a tiny classifier."""

import pytest
import torch
import transformers

from evaluation.compare import run_compare
from evaluation.data import load_texts
from exporter import export_hf
from exporter.compress import DistillConfig, LayerDropConfig, PruneConfig, compress
from exporter.compress.pruning import encoder_flops, measure_importance, plan_pruning
from exporter.compress.sparsity import Sparse24Config, check_nm_onnx, check_nm_torch
from runtimes import open_runner
from runtimes.errors import UsageError
from tests.conftest import LABELS, make_tiny_bert
from tests.exporter.conftest import compress_kw as _kw



def test_a_decisive_head_survives_gradient_pruning(classifier, splits):
    """Silence every head but one per layer: the gradient ranking must keep exactly those."""
    from exporter.finetune import prepare_text_classification
    from evaluation.data import load_tokenizer

    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(classifier))
    d = model.config.hidden_size // model.config.num_attention_heads
    decisive = {0: 1, 1: 0}
    with torch.no_grad():
        for layer, keep in decisive.items():
            v = model.bert.encoder.layer[layer].attention.self.value
            for head in range(model.config.num_attention_heads):
                if head != keep:
                    v.weight[head * d:(head + 1) * d] = 0
                    v.bias[head * d:(head + 1) * d] = 0
    data = prepare_text_classification(load_tokenizer(classifier), splits / "train.jsonl", splits / "eval.jsonl", 32,
                                       names=sorted(LABELS))
    heads, ffn = measure_importance(model, data.train, PruneConfig(heads=0.5), progress=False)
    plan = plan_pruning(heads, ffn, heads=0.5, ffn=None)
    assert plan.heads == {0: [0], 1: [1]}
    assert heads[0, 1] > 0 and heads[0, 0] == 0


def test_pruned_model_is_smaller_loads_everywhere_and_exports(classifier, splits, tmp_path):
    art = compress(classifier, tmp_path / "pruned", [PruneConfig(heads=0.5, ffn=0.5)], **_kw(splits))
    m = art.manifest
    (p,) = m["compression"]
    assert p["heads_removed"] and p["ffn_width"] == 16 and len(p["head_importance"]) == 2
    assert m["after"]["params"] < m["before"]["params"]
    assert m["after"]["encoder_flops_seq128"] < 0.6 * m["before"]["encoder_flops_seq128"]
    assert {"accuracy", "ci_low"} <= set(m["before"]["eval"]) and m["training"]["epochs_run"] == 1
    config = transformers.AutoConfig.from_pretrained(str(art.path))
    assert config.intermediate_size == 16 and sum(len(v) for v in config.pruned_heads.values()) == 2
    with open_runner(art) as r:
        assert r.output_specs()[0].name == "logits"
    onnx_art = export_hf(art.path, tmp_path / "onnx", progress=False)
    assert run_compare(art, [onnx_art], load_texts(None), progress=False).passed
    import onnx

    shapes = {tuple(i.dims) for i in onnx.load(str(onnx_art.model_file)).graph.initializer}
    assert (32, 16) in shapes and (16, 32) in shapes  # physically smaller FFN matrices in the graph


def test_flop_target_is_met(classifier, splits, tmp_path):
    art = compress(classifier, tmp_path / "flops", [PruneConfig(flop_target=0.4)], **{**_kw(splits), "recovery": None})
    assert art.manifest["compression"][0]["encoder_flops"]["removed_fraction"] >= 0.4


def test_distilled_layer_dropped_student(classifier, splits, tmp_path):
    art = compress(classifier, tmp_path / "student",
                   [LayerDropConfig(1), DistillConfig(temperature=2.0, alpha=0.7, hidden_weight=0.1)], **_kw(splits))
    assert transformers.AutoConfig.from_pretrained(str(art.path)).num_hidden_layers == 1
    assert art.manifest["compression"][0]["teacher_layers_kept"] == [1]
    assert art.manifest["after"]["encoder_flops_seq128"] == pytest.approx(art.manifest["before"]["encoder_flops_seq128"] / 2)


def test_sparse_2_4_holds_in_torch_and_in_onnx(classifier, splits, tmp_path):
    art = compress(classifier, tmp_path / "sparse", [Sparse24Config()], **_kw(splits))
    s = art.manifest["sparsity"]
    assert s["n"] == 2 and s["m"] == 4 and len(s["layers"]) == 12 and s["sparsity"] == pytest.approx(0.5)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(art.path))
    assert check_nm_torch(model) == []  # survived recovery fine-tuning and the save/load round trip
    onnx_art = export_hf(art.path, tmp_path / "onnx", progress=False)
    assert set(check_nm_onnx(onnx_art.model_file)["sparse"]) == set(s["layers"])


def test_teacher_with_other_labels_is_refused(classifier, splits, tmp_path):
    other = make_tiny_bert(tmp_path / "other", task="text-classification", num_labels=2)
    with pytest.raises(UsageError, match="teacher's labels"):
        compress(classifier, tmp_path / "out", [DistillConfig()], teacher=other, **_kw(splits))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kw", [dict(heads=0.0), dict(heads=1.0), dict(ffn=1.5), dict(ffn=-0.1), dict(), dict(flop_target=0.5, heads=0.2)])
def test_bad_pruning_settings(kw):
    with pytest.raises(UsageError):
        PruneConfig(**kw)


def test_compress_refuses_models_that_are_not_classifiers(tiny_bert, splits, tmp_path):
    with pytest.raises(UsageError, match="run enginewright finetune first"):
        compress(tiny_bert, tmp_path / "x", [PruneConfig(heads=0.5)], **_kw(splits))


def test_encoder_flops_counts_pruned_heads():
    cfg = transformers.BertConfig(hidden_size=384, num_attention_heads=12, intermediate_size=1536, num_hidden_layers=6)
    full = encoder_flops(cfg, 128)
    cfg.pruned_heads = {0: [0, 1, 2]}
    assert encoder_flops(cfg, 128) < full
    # FFN dominates MiniLM's encoder: 2 * 2 * 128 * 384 * 1536 per layer
    assert full == 6 * (2 * 128 * 384 * 384 * 4 + 2 * 128 * 128 * 384 * 2 + 2 * 2 * 128 * 384 * 1536)


def test_pruning_twice_is_refused(classifier, splits, tmp_path):
    once = compress(classifier, tmp_path / "once", [PruneConfig(heads=0.5)], **{**_kw(splits), "recovery": None})
    with pytest.raises(UsageError, match="pruned already"):
        compress(once, tmp_path / "twice", [PruneConfig(ffn=0.5)], **{**_kw(splits), "recovery": None})
    assert not (tmp_path / "twice").exists()
