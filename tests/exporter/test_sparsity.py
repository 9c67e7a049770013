import shutil

import pytest
import torch

from exporter.compress.sparsity import (Sparse24Config, Sparse24Masks, check_nm_onnx, check_nm_torch, default_filter,
                                        nm_mask, sparsify_)
from runtimes.errors import UsageError

# Tiny BERT: 2 layers x (query, key, value, attention.output.dense, intermediate.dense); output.dense has
# in_features = intermediate_size = 37, which 4 does not divide, so default_filter leaves it dense.
SPARSE_PER_LAYER = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                    "intermediate.dense")
EXPECTED = [f"bert.encoder.layer.{i}.{s}" for i in range(2) for s in SPARSE_PER_LAYER]


def _classifier(path):
    from transformers import BertForSequenceClassification

    return BertForSequenceClassification.from_pretrained(str(path)).eval()


def _nonzeros_per_group(w, m=4):
    return (w.reshape(w.shape[0], -1, m) != 0).sum(-1)


def test_nm_mask_keeps_the_n_largest_of_each_group():
    w = torch.tensor([[1.0, -4.0, 3.0, 2.0, 0.5, 0.1, -0.2, 0.3],
                      [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, -9.0]])
    assert nm_mask(w, 2, 4).tolist() == [[False, True, True, False, True, False, False, True],
                                         [True, True, False, False, True, False, False, True]]
    assert nm_mask(w, 1, 4).sum().item() == 4 and nm_mask(w, 1, 4)[0, 1] and nm_mask(w, 1, 4)[1, 7]
    with pytest.raises(UsageError, match="divides by 4"):
        nm_mask(torch.ones(2, 6), 2, 4)


@pytest.mark.parametrize("n,m", [(0, 4), (4, 4), (3, 2), (-1, 4), (2.0, 4)])
def test_config_validates_itself(n, m):
    with pytest.raises(UsageError, match="0 < n < m"):
        Sparse24Config(n=n, m=m)
    assert Sparse24Config() == Sparse24Config(2, 4) and Sparse24Config(1, 8).m == 8


def test_sparsify_prunes_encoder_linears_and_leaves_heads_dense(tiny_classifier):
    model = _classifier(tiny_classifier)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = sparsify_(model)
    assert masks.layers == EXPECTED and check_nm_torch(model) == []
    for fqn in EXPECTED:
        w = model.get_submodule(fqn).weight
        assert (_nonzeros_per_group(w) == 2).all()
        kept = w != 0  # the survivors are untouched, and are the largest of their group
        assert torch.equal(w[kept], before[fqn + ".weight"][kept])
    for k in before:
        if not any(k.startswith(f + ".weight") for f in EXPECTED):
            assert torch.equal(model.state_dict()[k], before[k]), k
    manifest = masks.to_manifest()
    assert (manifest["n"], manifest["m"], manifest["layers"], manifest["sparsity"]) == (2, 4, EXPECTED, 0.5)
    assert manifest["zeroed_weights"] == manifest["total_weights"] // 2 == 2 * (4 * 32 * 32 + 37 * 32) // 2


def test_masks_restore_zeros_after_an_optimizer_step(tiny_classifier):
    model = _classifier(tiny_classifier).train()
    masks = sparsify_(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ids = torch.randint(5, 30, (4, 8))
    model(input_ids=ids, labels=torch.tensor([0, 1, 2, 0])).loss.backward()
    opt.step()
    assert check_nm_torch(model) == EXPECTED
    masks.apply(model)
    assert check_nm_torch(model) == []
    assert all((_nonzeros_per_group(model.get_submodule(f).weight) <= 2).all() for f in EXPECTED)


def test_sparsify_refuses_filters_it_cannot_honour(tiny_classifier):
    model = _classifier(tiny_classifier)
    with pytest.raises(UsageError, match="no layer of BertForSequenceClassification matched"):
        sparsify_(model, filter_fn=lambda module, fqn: False)
    with pytest.raises(UsageError, match="output.dense' .* in_features divisible by 4"):
        sparsify_(model, filter_fn=lambda module, fqn: fqn.endswith("output.dense"))
    with pytest.raises(UsageError, match="divisible by 8"):
        sparsify_(model, Sparse24Config(2, 8), filter_fn=lambda module, fqn: fqn == "bert.embeddings")
    with pytest.raises(UsageError, match="not in this model"):
        Sparse24Masks(Sparse24Config(), {"nope": torch.ones(2, 4, dtype=torch.bool)}).apply(model)
    assert not default_filter(model.classifier, "classifier") and not default_filter(model.bert.pooler.dense, "bert.pooler.dense")


def test_sparsity_survives_export_to_onnx(tiny_classifier, tiny_classifier_onnx, tmp_path):
    from exporter import export_hf

    model = _classifier(tiny_classifier)
    masks = sparsify_(model)
    model.save_pretrained(str(tmp_path / "sparse"))
    for f in tiny_classifier.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy(f, tmp_path / "sparse" / f.name)
    export_hf(tmp_path / "sparse", tmp_path / "onnx", external_data=True, progress=False)

    found = check_nm_onnx(tmp_path / "onnx" / "model.onnx")
    assert sorted(found["sparse"]) == sorted(masks.layers)  # names come back from the nodes' scopes
    assert len(found["sparse"]) == len(masks.layers) == 10
    assert {"bert.pooler.dense", "classifier"} <= set(found["violations"])
    assert sorted(found["skipped"]) == [f"bert.encoder.layer.{i}.output.dense" for i in range(2)]
    dense = check_nm_onnx(tiny_classifier_onnx / "model.onnx")
    assert dense["sparse"] == [] and len(dense["checked"]) == 12  # 10 encoder linears, pooler, classifier
    loose = check_nm_onnx(tiny_classifier_onnx / "model.onnx", 3, 4, min_size=100)
    assert loose["sparse"] == [] and "classifier" in loose["skipped"]  # 3 x 32 < min_size
    with pytest.raises(UsageError, match="cannot read this ONNX model"):
        check_nm_onnx(tmp_path / "missing.onnx")


def test_check_nm_onnx_follows_transb_and_transpose(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nm = np.tile(np.array([[1, 2, 0, 0], [3, 0, 4, 0]], np.float32), (2, 2))  # [out=4, in=8]: 2:4 along in, not along out
    inits = [numpy_helper.from_array(a, name) for a, name in
             [(nm.T.copy(), "w_matmul"), (nm, "w_gemm_t"), (nm.T.copy(), "w_gemm"), (nm, "w_transposed"), (np.ones((8, 4), np.float32), "w_dense")]]
    nodes = [helper.make_node("MatMul", ["x", "w_matmul"], ["a"], name="/enc/q/MatMul"),
             helper.make_node("Gemm", ["x", "w_gemm_t"], ["b"], name="/enc/k/Gemm", transB=1),
             helper.make_node("Gemm", ["x", "w_gemm"], ["c"], name="/enc/v/Gemm"),
             helper.make_node("Transpose", ["w_transposed"], ["wt"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "wt"], ["d"], name="/enc/o/MatMul"),
             helper.make_node("MatMul", ["x", "w_dense"], ["e"], name="plain")]  # no scope: named by its initializer
    out = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "abcde"]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])], out, inits)
    onnx.save(helper.make_model(graph), str(tmp_path / "m.onnx"))
    found = check_nm_onnx(tmp_path / "m.onnx")
    assert found["sparse"] == ["enc.q", "enc.k", "enc.v", "enc.o"] and found["violations"] == ["w_dense"]


def test_compression_scope_comes_from_the_task(tiny_vit):
    """The task says where the blocks are: a ViT's encoder Linears are selected and its blocks can be
    dropped; the classifier head stays out; a module without blocks is refused in one line."""
    import torch
    from transformers import AutoModelForImageClassification

    from exporter.compress.distill import LayerDropConfig, drop_layers_
    from exporter.compress.sparsity import linear_filter
    from runtimes.errors import UsageError
    from runtimes.tasks import get_task

    vit = AutoModelForImageClassification.from_pretrained(tiny_vit)
    select = linear_filter("image-classification", 4)
    chosen = [n for n, m in vit.named_modules() if select(m, n)]
    assert chosen and all(n.startswith("vit.encoder.layer.") for n in chosen)
    assert not select(vit.classifier, "classifier")
    assert drop_layers_(vit, LayerDropConfig(1), task="image-classification")["teacher_layers_kept"] == [1]
    assert len(get_task("image-classification").blocks(vit)) == 1 and vit.config.num_hidden_layers == 1
    with pytest.raises(UsageError, match="compression needs the model's blocks at 'encoder.layer'"):
        get_task("text-classification").blocks(torch.nn.Linear(2, 2))
