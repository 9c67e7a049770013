"""The llama.cpp runner (``--on llama.cpp``) on a tiny F32 GGUF written here: the file's own numbers
beside PyTorch's on the imported weights, through the one generation loop and compare."""

from __future__ import annotations

import json

import numpy as np
import pytest

from enginewright.cli import main
from runtimes import load_artifact, open_runner
from runtimes.errors import UsageError
from runtimes.generation import GenerationConfig, generate
from runtimes.tasks import get_task
from tests.exporter.test_gguf import write_tiny_gguf

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[dev]' builds it)")


@pytest.fixture(scope="module")
def imported(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("llamacpp")
    gguf_file = write_tiny_gguf(root / "tiny.gguf", tiny_llama)
    assert main(["import-gguf", str(gguf_file), "-o", str(root / "hf"), "-q"]) == 0
    return root / "hf"


def _encode(path, texts):
    task = get_task("text-generation")
    return task.encode(task.load_processor(path), type("Batch", (), {"texts": texts})())


def test_llama_cpp_runs_the_file_with_pytorchs_numbers(imported):
    """F32 weights: llama.cpp's logits are PyTorch's up to rounding (its KV cache is float16 by
    default, as users run it), its picks and greedy tokens the same."""
    enc = _encode(imported, ("the quick brown fox", "a b"))  # left-padded batch of two
    feeds = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    with open_runner(imported, "llama.cpp", threads=1) as ll, open_runner(imported, "torch:cpu", threads=1) as pt:
        past = {s.name: np.zeros((2, s.shape[1], 0, s.shape[3]), np.float32) for s in pt.input_specs()
                if s.name.startswith("past_key_values.")}
        full = {**feeds, "position_ids": np.maximum(np.cumsum(enc["attention_mask"], 1) - 1, 0), **past}
        a, b = ll.infer(full)["logits"], pt.infer(full)["logits"]
        real = enc["attention_mask"].astype(bool)
        assert np.abs(a - b)[real].max() < 0.05 and (a[~real] == 0).all()
        assert (a.argmax(-1) == b.argmax(-1))[real].all()
        one = {k: v[:1, -4:] for k, v in feeds.items()}
        config = GenerationConfig(max_new_tokens=8)
        assert np.array_equal(generate(ll, one, config).tokens, generate(pt, one, config).tokens)
        with pytest.raises(UsageError, match="batch of 1"):
            generate(ll, feeds, config)


def test_compare_on_llama_cpp(imported, tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", str(imported), str(imported), "--on", "llama.cpp", "--batch-size", "1", "--limit", "4",
                 "--max-new-tokens", "6", "--max-ppl-increase", "0.1%", "-o", str(out), "-q"]) == 0
    row = json.loads((out / "report.json").read_text())["candidates"][0]
    assert row["runtime"] == "llama.cpp:cpu" and row["top1_agreement"] == 1.0 and abs(row["ppl_change"]) < 1e-3


def test_a_batch_on_llama_cpp_is_refused_before_anything_loads(imported, tmp_path, capsys, monkeypatch):
    import runtimes.llamacpp.runner as llama_runner

    monkeypatch.setattr(llama_runner.LlamaCppRunner, "__init__", lambda *a, **k: pytest.fail("a model was loaded"))
    assert main(["compare", str(imported), str(imported), "--on", "llama.cpp", "-o", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runs one sequence at a time" in err[0] and "pass --batch-size 1" in err[0]


def test_llama_cpp_refuses_a_model_not_imported_from_gguf(tiny_llama, imported, tmp_path):
    with pytest.raises(UsageError, match="not imported from one"):
        open_runner(load_artifact(tiny_llama), "llama.cpp").activate()
    with open_runner(imported, "llama.cpp", threads=1) as ll:
        enc = _encode(imported, ("the quick brown fox",))
        feeds = {"input_ids": enc["input_ids"][:, -1:], "attention_mask": enc["attention_mask"],
                 "position_ids": enc["attention_mask"][:, -1:]}
        feeds.update({s.name: np.zeros((1, s.shape[1], enc["input_ids"].shape[1] - 1, s.shape[3]), np.float32)
                      for s in ll.input_specs() if s.name.startswith("past_key_values.")})
        with pytest.raises(UsageError, match="prefills only"):
            ll.infer(feeds)


def test_speed_peer_generates_the_runners_tokens(imported):
    """benchmarks.llm_speed times llama.cpp through llama_decode and an argmax of its own: the same
    greedy tokens as the runner through the project's loop."""
    from benchmarks.llm_speed import llama_cpp_peer
    from runtimes.llamacpp.runner import gguf_file

    one = _encode(imported, ("the quick brown fox",))
    config = GenerationConfig(max_new_tokens=8)
    peer = llama_cpp_peer("llama.cpp", gguf_file(load_artifact(imported)), threads=1)
    timed = peer.generate(one, config)
    with open_runner(imported, "llama.cpp", threads=1) as ll:
        assert np.array_equal(timed.tokens, generate(ll, one, config).tokens)
    assert len(timed.step_s) == 7 and timed.prompt_tokens == int(one["attention_mask"].sum())


def test_gguf_requant_writes_llama_cpps_own_file_and_refuses_bad_input(tiny_llama, tmp_path, capsys):
    """benchmarks.gguf_requant (the input of the K-quant measurements): llama.cpp's quantizer writes
    the file whole under a temporary name; an unknown type, a missing input and an existing output
    are one line and exit 2, nothing written."""
    from benchmarks.compression import run_main
    from benchmarks.gguf_requant import main as requant
    from tests.exporter.test_gguf import write_tiny_gguf

    src = write_tiny_gguf(tmp_path / "tiny.gguf", tiny_llama)
    out = tmp_path / "tiny-q8.gguf"
    assert run_main(requant, ["Q8_0", "--gguf", str(src), "-o", str(out)]) == 0
    assert "Q8_0" in capsys.readouterr().out and out.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-q8.gguf", "tiny.gguf"]
    for argv, words in ((["Q9_X", "--gguf", str(src), "-o", str(tmp_path / "a.gguf")], "llama.cpp knows"),
                        (["Q8_0", "--gguf", str(tmp_path / "none.gguf"), "-o", str(tmp_path / "b.gguf")], "no such file"),
                        (["Q8_0", "--gguf", str(src), "-o", str(out)], "--force")):
        assert run_main(requant, argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-q8.gguf", "tiny.gguf"]
