import json

import numpy as np
import pytest

from evaluation.data import BUILTIN, feeds_for, load_texts, load_tokenizer, tokenize
from runtimes.errors import UsageError
from runtimes.specs import TensorSpec


def test_builtin_samples():
    ds = load_texts(None)
    assert ds.source == BUILTIN and len(ds) > 30 and ds.labels is None


def test_formats(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\n two \n")
    assert load_texts(tmp_path / "a.txt").texts == ("one", "two")
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "x", "label": "p", "text_pair": "y"}) + "\n")
    ds = load_texts(tmp_path / "a.jsonl")
    assert (ds.texts, ds.pairs, ds.labels) == (("x",), ("y",), ("p",))
    (tmp_path / "a.csv").write_text("sentence,topic\nhello there,b\nbye,c\n")
    ds = load_texts(tmp_path / "a.csv", text_column="sentence", label_column="topic")
    assert ds.texts == ("hello there", "bye") and ds.labels == ("b", "c")
    assert len(load_texts(tmp_path / "a.csv", text_column="sentence", limit=1)) == 1


@pytest.mark.parametrize("name, content, kwargs, words", [
    ("missing.jsonl", None, {}, "data file not found"),
    ("empty.txt", "\n\n", {}, "data file is empty"),
    ("empty.jsonl", "", {}, "data file is empty"),
    ("nocol.jsonl", '{"sentence": "x"}\n', {}, "no column 'text' (columns: sentence); pass --text-column"),
    ("badlabel.csv", "text,label\nx,1\n", {"label_column": "topic"}, "no column 'topic'"),
    ("bad.jsonl", '{"text": "x"}\n{oops\n', {}, "bad.jsonl:2: not valid JSON"),
    ("blank.jsonl", '{"text": "x"}\n{"text": ""}\n', {}, "row 2 has no text"),
    ("README.md", "# a title\nsome prose\n", {}, "unknown data file type '.md'; pass a .txt"),
])
def test_bad_data_files(tmp_path, name, content, kwargs, words):
    p = tmp_path / name
    if content is not None:
        p.write_text(content)
    with pytest.raises(UsageError) as e:
        load_texts(p, **kwargs)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_conll_file_gives_one_text_per_sentence(tmp_path):
    """Token-classification data reused for calibration or parity: each sentence's tokens as one text."""
    p = tmp_path / "train.conll"
    p.write_text("-DOCSTART- O\n\nEU B-ORG\nrejects O\nGerman B-MISC\n\nPeter B-PER\nBlackburn I-PER\n")
    ds = load_texts(p)
    assert ds.texts == ("EU rejects German", "Peter Blackburn") and ds.labels is None
    assert load_texts(p, limit=1).texts == ("EU rejects German",)


def test_take_cycles_and_batches_split():
    ds = load_texts(None)
    assert len(ds.take(len(ds) + 3)) == len(ds) + 3
    assert [len(b) for b in ds.take(10).batches(4)] == [4, 4, 2]


def test_feeds_follow_the_models_real_inputs(tiny_bert):
    tok = load_tokenizer(tiny_bert)
    enc = tokenize(tok, load_texts(None).take(3), max_length=16)
    assert enc["input_ids"].dtype == np.int64 and enc["input_ids"].shape[1] <= 16
    no_types = [TensorSpec("input_ids", "int64", ("b", "s")), TensorSpec("attention_mask", "int64", ("b", "s"))]
    assert sorted(feeds_for(enc, no_types, "m")) == ["attention_mask", "input_ids"]
    del enc["token_type_ids"]
    with_types = no_types + [TensorSpec("token_type_ids", "int64", ("b", "s"))]
    assert not feeds_for(enc, with_types, "m")["token_type_ids"].any()
    with pytest.raises(UsageError, match="'pixel_values' is not produced by the tokenizer"):
        feeds_for(enc, [TensorSpec("pixel_values", "float32", ("b", 3))], "m")


def test_fixed_padding(tiny_bert):
    enc = tokenize(load_tokenizer(tiny_bert), load_texts(None).take(2), max_length=64, pad_to_max=True)
    assert enc["input_ids"].shape == (2, 64) and enc["attention_mask"].sum() < 128


@pytest.mark.parametrize("name, content, words", [
    ("latin1.txt", "caf\xe9 au lait\n".encode("latin-1"), "latin1.txt:1: not UTF-8 text (byte 0xe9); save the file as UTF-8"),
    ("later.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', "later.jsonl:2: not UTF-8 text"),
    ("model.txt", b"\x08\x01\x12\x00\x00binary", "looks like a binary file"),
    ("wide.csv", b"text,label\nhello,a\nhello, world,b\n", "wide.csv:3: the row has more fields than the header (2)"),
    ("wide.tsv", b"text\tlabel\nx\ty\tz\n", "wide.tsv:2: the row has more fields"),
    ("bad.conll", b"EU B-ORG\ncaf\xe9 O\n", "bad.conll:2: not UTF-8 text"),
])
def test_undecodable_and_malformed_files_are_refused_in_one_line(tmp_path, name, content, words):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(UsageError) as e:
        load_texts(p)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_huge_line_is_cut_and_said(tmp_path, capsys):
    from evaluation.data import MAX_TEXT_CHARS

    p = tmp_path / "one_line.txt"
    p.write_text("word " * (MAX_TEXT_CHARS // 2) + "\nshort\n")
    ds = load_texts(p)
    assert [len(t) for t in ds.texts] == [MAX_TEXT_CHARS, 5]
    assert "1 text(s) longer than" in capsys.readouterr().err
