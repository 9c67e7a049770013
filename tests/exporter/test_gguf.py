"""import-gguf on tiny GGUF files written here with the gguf package (a 2-layer Llama, and files it refuses)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from enginewright.cli import main
from runtimes import load_artifact, open_runner
from runtimes.errors import UsageError

pytest.importorskip("gguf", reason="the gguf package is not installed (pip install -e '.[dev]')")


# gguf types written here as raw random blocks: (bytes per block, weights per block, float16 fields
# (offset, range)); the other bytes (codes, packed sub-scales) are random
RAW_BLOCKS = {"Q2_K": (84, 256, ((80, 2e-3, 6e-3), (82, 1e-3, 4e-3))), "Q3_K": (110, 256, ((108, 1e-3, 3e-3),)),
              "IQ4_NL": (18, 32, ((0, 1e-3, 4e-3),)), "IQ4_XS": (136, 256, ((0, 1e-4, 2e-4),))}


def k_quant_bytes(kind: str, rows: int, cols: int, rng) -> np.ndarray:
    """Raw ``Q4_K``, ``Q5_K``, ``Q6_K`` or ``RAW_BLOCKS`` blocks ``[rows, bytes per row]`` with random
    codes and scales (gguf-py reads these types but cannot write them); values within about +-1."""
    n = rows * cols // 256

    def f16(lo, hi, count=n):
        return rng.uniform(lo, hi, (count, 1)).astype(np.float16).view(np.uint8)

    if kind in RAW_BLOCKS:
        size, per, fields = RAW_BLOCKS[kind]
        raw = rng.integers(0, 256, (rows * cols // per, size), dtype=np.uint8)
        for at, lo, hi in fields:
            raw[:, at:at + 2] = f16(lo, hi, len(raw))
        return raw.reshape(rows, -1)
    if kind in ("Q4_K", "Q5_K"):  # d, dmin, 12 bytes of 6-bit scales and mins, (32 of high bits,) 128 of nibbles
        rest = 140 if kind == "Q4_K" else 172
        parts = [f16(2e-4, 6e-4) if kind == "Q4_K" else f16(1e-4, 3e-4), f16(1e-3, 4e-3),
                 rng.integers(0, 256, (n, rest), dtype=np.uint8)]
    else:  # Q6_K: 128 bytes of low nibbles, 64 of high bits, 16 int8 scales, d
        scales = rng.integers(-64, 65, (n, 16)).astype(np.int8).view(np.uint8)
        parts = [rng.integers(0, 256, (n, 192), dtype=np.uint8), scales, f16(1e-4, 3e-4)]
    return np.concatenate(parts, axis=1).reshape(rows, -1)


def write_tiny_gguf(path: Path, tokenizer_dir: Path, arch: str = "llama", seed: int = 0,
                    quant: dict[str, str] | None = None, hidden: int = 32, ff: int = 64,
                    header_hidden: int | None = None) -> Path:
    """A 2-layer Llama (``hidden`` 32, 4 heads, 2 KV heads) in F32 with the byte-level BPE of ``tokenizer_dir``;
    ``quant`` maps a tensor-name fragment (``attn_q``, ``token_embd``...) to a gguf type (``Q4_1``...)
    its tensors are quantized to, the first matching fragment winning (K-quants need rows of a
    multiple of 256: ``hidden`` and ``ff`` 256); the header's file type is then Q4_1 ("mostly"), else F32.
    ``header_hidden``: an embedding length in the header that the tensors contradict (a damaged file)."""
    import gguf

    tok = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w = gguf.GGUFWriter(str(path), arch)
    layers, heads, kv_heads, n_vocab = 2, 4, 2, len(vocab)
    w.add_name("tiny"), w.add_file_type(3 if quant else 0), w.add_context_length(128), w.add_embedding_length(header_hidden or hidden)
    w.add_feed_forward_length(ff), w.add_block_count(layers), w.add_head_count(heads), w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5), w.add_rope_freq_base(10000.0), w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("gpt2"), w.add_tokenizer_pre("default")
    w.add_token_list([t for t, _ in vocab]), w.add_token_types([3 if t == "<|endoftext|>" else 1 for t, _ in vocab])
    w.add_token_merges(merges), w.add_bos_token_id(0), w.add_eos_token_id(0), w.add_add_bos_token(False)
    rng = np.random.default_rng(seed)

    def t(name, *shape):
        value = (rng.standard_normal(shape) * 0.3).astype(np.float32)
        kind = next((k for frag, k in (quant or {}).items() if frag in name), None)
        if kind is None:
            w.add_tensor(name, value)
        elif kind.endswith("_K") or kind in RAW_BLOCKS:
            w.add_tensor(name, k_quant_bytes(kind, shape[0], shape[1], rng), raw_dtype=gguf.GGMLQuantizationType[kind])
        else:
            qtype = gguf.GGMLQuantizationType[kind]
            w.add_tensor(name, gguf.quants.quantize(value, qtype), raw_dtype=qtype)

    t("token_embd.weight", n_vocab, hidden)
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    head_dim = hidden // heads
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        t(f"blk.{i}.attn_q.weight", hidden, hidden), t(f"blk.{i}.attn_k.weight", kv_heads * head_dim, hidden)
        t(f"blk.{i}.attn_v.weight", kv_heads * head_dim, hidden), t(f"blk.{i}.attn_output.weight", hidden, hidden)
        t(f"blk.{i}.ffn_gate.weight", ff, hidden), t(f"blk.{i}.ffn_up.weight", ff, hidden)
        t(f"blk.{i}.ffn_down.weight", hidden, ff)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama, tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", tiny_llama)


def test_import_gguf_writes_a_model_directory_that_generates(tiny_gguf, tmp_path, capsys):
    out = tmp_path / "hf"
    assert main(["import-gguf", str(tiny_gguf), "-o", str(out)]) == 0
    assert "imported" in capsys.readouterr().out
    art = load_artifact(out)
    assert art.kind == "hf" and art.task == "text-generation"
    assert art.manifest["source"]["architecture"] == "llama" and art.manifest["source"]["file_type"] == "F32"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    from runtimes.generation import GenerationConfig, generate
    from runtimes.tasks import get_task

    task = get_task("text-generation")
    batch = type("Batch", (), {"texts": ("the quick brown fox",)})()
    enc = task.encode(task.load_processor(out), batch)
    assert enc["input_ids"][0, 0] != 0  # the file says add_bos_token false
    with open_runner(art, "torch:cpu") as runner:
        got = generate(runner, enc, GenerationConfig(max_new_tokens=3))
    assert got.tokens.shape == (1, 3)


def test_an_unsupported_architecture_is_refused_before_loading(tiny_llama, tmp_path):
    from exporter.gguf import import_gguf

    path = write_tiny_gguf(tmp_path / "rwkv.gguf", tiny_llama, arch="rwkv6")
    with pytest.raises(UsageError, match="'rwkv6' is not supported; import-gguf reads llama"):
        import_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tensors_that_contradict_the_header_are_one_line(tiny_llama, tmp_path):
    from exporter.gguf import import_gguf

    bad = write_tiny_gguf(tmp_path / "bad.gguf", tiny_llama, header_hidden=64)
    with pytest.raises(UsageError, match="its tensors do not fit the model its header describes"):
        import_gguf(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_gguf_is_one_line(tmp_path):
    from exporter.gguf import import_gguf

    (tmp_path / "x.gguf").write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(UsageError, match="not a readable GGUF file"):
        import_gguf(tmp_path / "x.gguf", tmp_path / "out")
    with pytest.raises(UsageError, match="no such file"):
        import_gguf(tmp_path / "missing.gguf", tmp_path / "out")


@pytest.mark.real_model
def test_smollm2_imports_and_answers_a_chat_prompt(smollm2_gguf, tmp_path):
    """The real GGUF: imported once (about a minute on two cores), its tokenizer follows the file
    (no second BOS before the chat template's own), and greedy decoding answers sensibly."""
    from exporter.gguf import import_gguf
    from runtimes.generation import GenerationConfig, generate
    from runtimes.tasks import get_task

    art = import_gguf(smollm2_gguf, tmp_path / "smol")
    assert art.manifest["source"]["file_type"] == "Q4_1" and art.task == "text-generation"
    task = get_task("text-generation")
    tok = task.load_processor(art.path)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False,
                                     add_generation_prompt=True)
    enc = task.encode(tok, type("Batch", (), {"texts": (prompt,)})())
    assert enc["input_ids"][0, 1] != tok.bos_token_id
    with open_runner(art, "torch:cpu") as runner:
        got = generate(runner, enc, GenerationConfig(max_new_tokens=12, eos_token_ids=(tok.eos_token_id,)))
    assert "Paris" in tok.decode(got.tokens[0])


def test_file_types_are_named_as_llama_cpp_names_them():
    from exporter.gguf import file_type_name

    assert [file_type_name(v) for v in (0, 3, 15, 30)] == ["F32", "Q4_1", "Q4_K_M", "IQ4_XS"]
    assert file_type_name(999) == 999  # one gguf-py does not know stays a number
