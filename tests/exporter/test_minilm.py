"""The real packaged all-MiniLM-L6-v2: export, then padding-aware parity on real sentences."""

import pytest

from evaluation.compare import CompareConfig, run_compare
from evaluation.data import load_texts
from exporter import export_hf
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.real_model


def test_minilm_export_matches_pytorch_on_real_text(minilm_dir, tmp_path):
    art = export_hf(minilm_dir, tmp_path / "minilm", progress=False)
    # a sentence-transformers package still exports transformers' AutoModel outputs
    assert [o.name for o in art.outputs] == ["last_hidden_state"]
    assert art.outputs[0].shape == ("batch_size", "sequence_length", 384)
    real = SHARED_DATA / "quotes_topics_test.jsonl"
    data = load_texts(real, limit=96) if real.is_file() else load_texts(None)
    outcome = run_compare(minilm_dir, [art], data, config=CompareConfig(batch_size=16, max_length=128), progress=False)
    assert outcome.passed, outcome.markdown()
    (out,) = outcome.results[0].outputs
    assert out.max_abs < 1e-4 and out.cos_min > 0.9999
    assert outcome.results[0].padded_positions_excluded > 0


def test_minilm_pooled_export_matches_sentence_transformers(minilm_dir, tmp_path):
    import numpy as np
    import sentence_transformers

    from evaluation.data import load_tokenizer, tokenize
    from runtimes import open_runner

    art = export_hf(minilm_dir, tmp_path / "emb", pooling="mean", normalize=True, progress=False)
    texts = load_texts(None).take(16)
    want = sentence_transformers.SentenceTransformer(str(minilm_dir), device="cpu").encode(
        list(texts.texts), normalize_embeddings=True)
    enc = tokenize(load_tokenizer(minilm_dir), texts, max_length=256)
    with open_runner(art) as r:
        got = r.infer({s.name: enc[s.name] for s in r.input_specs()})["sentence_embedding"]
    assert np.abs(got - want).max() < 1e-5
