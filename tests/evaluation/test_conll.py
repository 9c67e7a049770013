import pytest

from evaluation.conll import IGNORE_INDEX, ConllDataset, align_labels, load_conll
from runtimes.errors import UsageError

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER


-DOCSTART- -X- -X- O
BRUSSELS\tNNP\tB-LOC
"""


def test_load_conll(tmp_path):
    p = tmp_path / "train.conll"
    p.write_text(CONLL)
    ds = load_conll(p)
    assert len(ds) == 3 and ds.source == str(p)
    assert ds.sentences == (("EU", "rejects", "German", "call"), ("Peter", "Blackburn"), ("BRUSSELS",))
    assert ds.tags == (("B-ORG", "O", "B-MISC", "O"), ("B-PER", "I-PER"), ("B-LOC",))
    assert ds.labels == ("O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-PER")
    assert ds.describe()["tokens"] == 7


def test_tab_separated_tokens_may_hold_spaces_and_files_may_lack_a_final_newline(tmp_path):
    p = tmp_path / "a.tsv"
    p.write_text("New York\tB-LOC\nis\tO\n\ncity\tO")
    ds = load_conll(p)
    assert ds.sentences == (("New York", "is"), ("city",)) and ds.tags == (("B-LOC", "O"), ("O",))
    assert ds.labels == ("O", "B-LOC")


def test_fingerprint_depends_on_tokens_and_tags():
    a = ConllDataset("x", (("a", "b"),), (("O", "B-PER"),))
    assert a.fingerprint().startswith("sha256:") and len(a.fingerprint()) == len("sha256:") + 64
    assert a.fingerprint() == ConllDataset("y", (("a", "b"),), (("O", "B-PER"),)).fingerprint()
    assert a.fingerprint() != ConllDataset("x", (("a", "b"),), (("O", "I-PER"),)).fingerprint()
    assert a.fingerprint() != ConllDataset("x", (("a",), ("b",)), (("O",), ("B-PER",))).fingerprint()
    with pytest.raises(ValueError, match="one tag per token"):
        ConllDataset("x", (("a", "b"),), (("O",),))


@pytest.mark.parametrize("content, words", [
    (None, r"missing\.conll: CoNLL file not found"),
    ("", "no sentences found"),
    ("\n\n-DOCSTART- O\n\n", "no sentences found"),
    ("EU B-ORG\nrejects\n", r"bad\.conll:2: only one column \('rejects'\)"),
    ("EU B-ORG\n\nrejects X-FOO\n", r"bad\.conll:3: tag 'X-FOO' is not BIO/IOBES"),
    ("EU ORG\n", r"bad\.conll:1: tag 'ORG' is not BIO/IOBES"),
    ("EU B-\n", r"bad\.conll:1: tag 'B-' is not BIO/IOBES"),
])
def test_bad_conll_files(tmp_path, content, words):
    p = tmp_path / ("missing.conll" if content is None else "bad.conll")
    if content is not None:
        p.write_text(content)
    with pytest.raises(UsageError, match=words):
        load_conll(p)


def test_non_utf8_file(tmp_path):
    p = tmp_path / "latin.conll"
    p.write_bytes("café O\n".encode("latin-1"))
    with pytest.raises(UsageError, match="not UTF-8"):
        load_conll(p)


@pytest.fixture
def fast_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "peter", "black", "##burn", "visits", "brus", "##sel", "##s", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"), do_lower_case=True)


def test_align_labels_with_a_fast_tokenizer(fast_tokenizer):
    words = ["Peter", "Blackburn", "visits", "Brussels", "."]
    tags = ["B-PER", "I-PER", "O", "B-LOC", "O"]
    label2id = {"O": 0, "B-PER": 1, "I-PER": 2, "B-LOC": 3}
    enc = fast_tokenizer(words, is_split_into_words=True)
    tokens = fast_tokenizer.convert_ids_to_tokens(enc["input_ids"])
    assert tokens == ["[CLS]", "peter", "black", "##burn", "visits", "brus", "##sel", "##s", ".", "[SEP]"]
    ids = align_labels(enc.word_ids(), tags, label2id)
    assert ids == [IGNORE_INDEX, 1, 2, IGNORE_INDEX, 0, 3, IGNORE_INDEX, IGNORE_INDEX, 0, IGNORE_INDEX]
    assert IGNORE_INDEX == -100


def test_align_labels_with_truncation_and_errors(fast_tokenizer):
    words, tags = ["Peter", "Blackburn", "visits"], ["B-PER", "I-PER", "O"]
    enc = fast_tokenizer(words, is_split_into_words=True, truncation=True, max_length=4)
    # [CLS] peter black [SEP]: "Blackburn" is cut after its first piece, "visits" is gone.
    assert align_labels(enc.word_ids(), tags, {"O": 0, "B-PER": 1, "I-PER": 2}) == [-100, 1, 2, -100]
    with pytest.raises(UsageError, match="word 2 tag 'I-PER' is not one of the model's labels"):
        align_labels(enc.word_ids(), tags, {"O": 0, "B-PER": 1})
    with pytest.raises(ValueError, match="word id 1 but the sentence has 1 tags"):
        align_labels([None, 0, 1, None], ["O"], {"O": 0})
