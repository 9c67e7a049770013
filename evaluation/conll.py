"""Read CoNLL-style token-tagging files and align word tags with a fast tokenizer's sub-tokens.

Format: one token per line, the token in the first column and its tag in the last (columns split
on tabs when the line has any, else on whitespace), blank lines between sentences, ``-DOCSTART-``
lines skipped. Tags are ``O`` or a ``B-``/``I-``/``E-``/``S-`` prefix plus a type (BIO, IOB2, IOBES).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from runtimes.errors import UsageError

IGNORE_INDEX = -100  # what Hugging Face token-classification losses skip
_PREFIXES = ("B-", "I-", "E-", "S-")


@dataclass(frozen=True)
class ConllDataset:
    """Sentences of tokens and their tags, in file order; ``tags[i]`` has one tag per ``sentences[i]`` token."""

    source: str
    sentences: tuple[tuple[str, ...], ...]
    tags: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if len(self.sentences) != len(self.tags) or any(len(s) != len(t) for s, t in zip(self.sentences, self.tags)):
            raise ValueError(f"{self.source}: every sentence needs exactly one tag per token")

    def __len__(self) -> int:
        return len(self.sentences)

    @property
    def labels(self) -> tuple[str, ...]:
        """Distinct tags, sorted, with ``O`` first when present."""
        found = {t for sent in self.tags for t in sent}
        return (("O",) if "O" in found else ()) + tuple(sorted(found - {"O"}))

    def fingerprint(self) -> str:
        from evaluation.data import rows_digest

        return rows_digest(b"".join(w.encode() + b"\0" + t.encode() + b"\0" for w, t in zip(words, tags))
                           for words, tags in zip(self.sentences, self.tags))

    def describe(self) -> dict:
        return {
            "source": self.source,
            "sentences": len(self),
            "tokens": sum(len(s) for s in self.sentences),
            "labels": list(self.labels),
            "hash": self.fingerprint(),
        }


def load_conll(path: str | Path) -> ConllDataset:
    """Load a CoNLL-style file (see the module docstring for the format).

    Raises:
        UsageError: the file is missing, not UTF-8, holds no sentences, or a line (named by
            number) lacks a tag column or has a tag that is not ``O`` or prefixed B-/I-/E-/S-.
    """
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: CoNLL file not found; pass a file with one token and its tag per line")
    from evaluation.data import read_data_text

    text = read_data_text(p)
    sentences: list[tuple[str, ...]] = []
    tags: list[tuple[str, ...]] = []
    words: list[str] = []
    word_tags: list[str] = []

    def flush() -> None:
        if words:
            sentences.append(tuple(words))
            tags.append(tuple(word_tags))
            words.clear()
            word_tags.clear()

    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("-DOCSTART-"):
            flush()
            continue
        cols = [c.strip() for c in line.split("\t")] if "\t" in line else line.split()
        cols = [c for c in cols if c]
        if len(cols) < 2:
            raise UsageError(f"{p}:{lineno}: only one column ({cols[0]!r}); put the tag in the last column after the token")
        tag = cols[-1]
        if tag != "O" and (not tag.startswith(_PREFIXES) or len(tag) < 3):
            raise UsageError(f"{p}:{lineno}: tag {tag!r} is not BIO/IOBES; use O or B-, I-, E-, S- followed by a type (B-PER)")
        words.append(cols[0])
        word_tags.append(tag)
    flush()
    if not sentences:
        raise UsageError(f"{p}: no sentences found; write one token and its tag per line, blank lines between sentences")
    return ConllDataset(str(p), tuple(sentences), tuple(tags))


def align_labels(word_ids: list[int | None], word_tags: Sequence[str], label2id: Mapping[str, int]) -> list[int]:
    """Label ids per sub-token for a fast tokenizer's ``word_ids()`` of one sentence.

    The first sub-token of each word gets its word's label id; later sub-tokens of the same word and
    special tokens (``None``) get -100, which token-classification losses and metrics skip. Words cut
    off by truncation simply get no label.

    Raises:
        UsageError: a tag is not one of the model's labels.
        ValueError: a word id points past ``word_tags`` (the ids belong to another sentence).
    """
    out: list[int] = []
    prev = None
    for wid in word_ids:
        if wid is None or wid == prev:
            out.append(IGNORE_INDEX)
        else:
            if not 0 <= wid < len(word_tags):
                raise ValueError(f"word id {wid} but the sentence has {len(word_tags)} tags; pass the same sentence's tags")
            tag = word_tags[wid]
            if tag not in label2id:
                raise UsageError(
                    f"word {wid + 1} tag {tag!r} is not one of the model's labels ({', '.join(sorted(label2id))}); "
                    "use a model trained on this tag set"
                )
            out.append(label2id[tag])
        prev = wid
    return out
