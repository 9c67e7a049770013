"""Read labelled text data and turn it into model feeds with the artifact's own tokenizer.

``load_texts`` also takes image data (a directory, or a table with an ``image`` column) and hands
it to ``evaluation.images``, so a command's ``--data`` works for every task.

Shared by export validation, ``compare``, ``bench`` and (later) calibration, so that every stage
feeds a model the same way. Formats: ``.txt`` (one text per line), ``.jsonl`` and ``.csv``/``.tsv``
with named columns (``text``, optional ``text_pair`` and ``label``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from runtimes.errors import UsageError
from runtimes.specs import TensorSpec
from runtimes.tasks import Task, get_task

_TEXT = get_task("feature-extraction")

SAMPLES = Path(__file__).resolve().parent / "samples" / "sentences.txt"
BUILTIN = "builtin:samples"


CONLL_SUFFIXES = (".conll", ".conllu", ".iob", ".bio")
# Models read at most a few thousand tokens of a text; a 10 MB line would cost gigabytes to tokenize.
MAX_TEXT_CHARS = 100_000


def rows_digest(rows: Iterable[bytes]) -> str:
    """``sha256:<hex>`` of the rows, each followed by a newline: a data set's fingerprint."""
    h = hashlib.sha256()
    for row in rows:
        h.update(row + b"\n")
    return "sha256:" + h.hexdigest()


@dataclass(frozen=True)
class TextDataset:
    """Texts (and optional second texts and labels) in file order."""

    source: str
    texts: tuple[str, ...]
    pairs: tuple[str, ...] | None = None
    labels: tuple | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def fingerprint(self) -> str:
        return rows_digest(t.encode() + b"\0" + (self.pairs[i].encode() if self.pairs else b"") + b"\0"
                           + (str(self.labels[i]).encode() if self.labels else b"") for i, t in enumerate(self.texts))

    def describe(self) -> dict:
        return {
            "source": self.source,
            "rows": len(self),
            "has_pairs": self.pairs is not None,
            "has_labels": self.labels is not None,
            "hash": self.fingerprint(),
        }

    def take(self, n: int) -> "TextDataset":
        """The first ``n`` rows, cycling when the data has fewer (for fixed-size benchmark batches)."""
        idx = [i % len(self) for i in range(n)]
        pick = lambda seq: tuple(seq[i] for i in idx) if seq is not None else None  # noqa: E731
        return TextDataset(self.source, pick(self.texts), pick(self.pairs), pick(self.labels))

    def batches(self, batch_size: int) -> Iterator["TextDataset"]:
        for start in range(0, len(self), batch_size):
            sl = slice(start, start + batch_size)
            yield TextDataset(
                self.source,
                self.texts[sl],
                self.pairs[sl] if self.pairs is not None else None,
                self.labels[sl] if self.labels is not None else None,
            )


def load_texts(
    path: str | Path | None = None,
    *,
    text_column: str = "text",
    pair_column: str | None = None,
    label_column: str | None = None,
    limit: int | None = None,
) -> TextDataset:
    """Load a data file; ``None`` or ``"builtin:samples"`` gives the project's own sample sentences.

    ``pair_column``/``label_column`` default to ``text_pair``/``label`` when those columns exist.

    Raises:
        UsageError: the file is missing, empty, malformed, or lacks a named column.
    """
    if path is None or str(path) == BUILTIN:
        return _first(_from_lines(SAMPLES, BUILTIN), limit)
    p = Path(path)
    if p.is_dir() or _is_image_table(p, text_column):
        from evaluation.images import load_images

        return load_images(p, label_column=label_column, limit=limit)
    if not p.is_file():
        raise UsageError(f"{p}: data file not found; pass a .txt, .jsonl or .csv file")
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        rows = _jsonl_rows(p)
    elif suffix in (".csv", ".tsv"):
        rows = _csv_rows(p, "\t" if suffix == ".tsv" else ",")
    elif suffix in (".txt", ".text", ""):
        return _first(_from_lines(p, str(p)), limit)
    elif suffix in CONLL_SUFFIXES:  # a token-classification file: each sentence's tokens as one text
        from evaluation.conll import load_conll

        return _first(TextDataset(str(p), tuple(" ".join(s) for s in load_conll(p).sentences)), limit)
    else:
        raise UsageError(f"{p}: unknown data file type {suffix!r}; pass a .txt (one text per line), .jsonl, .csv/.tsv "
                         f"or CoNLL ({', '.join(CONLL_SUFFIXES)}) file")
    if limit:
        rows = rows[:limit]
    return _from_rows(p, rows, text_column, pair_column, label_column)


def _is_image_table(p: Path, text_column: str) -> bool:
    """A .jsonl/.csv whose first row has an ``image`` column and no text column lists image files."""
    if not p.is_file() or p.suffix.lower() not in (".jsonl", ".json", ".ndjson", ".csv", ".tsv"):
        return False
    with open(p, encoding="utf-8", errors="replace") as f:  # a sniff; the real read reports bad bytes
        first = next((line for line in f if line.strip()), "")
    if p.suffix.lower() in (".csv", ".tsv"):
        names = next(csv.reader([first], delimiter="\t" if p.suffix.lower() == ".tsv" else ","), [])
    else:
        try:
            row = json.loads(first)
        except json.JSONDecodeError:
            return False
        names = list(row) if isinstance(row, dict) else []
    return "image" in names and text_column not in names


def _first(ds: TextDataset, limit: int | None) -> TextDataset:
    return ds.take(min(limit, len(ds))) if limit else ds


def read_data_text(p: Path) -> str:
    """The file's text, refusing binary and non-UTF-8 content in one line.

    Raises:
        UsageError: the file has NUL bytes, is not UTF-8, or cannot be read.
    """
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise UsageError(f"{p}: cannot read the data file ({e.strerror}); check the path and its permissions") from None
    if b"\0" in raw[:65536]:
        raise UsageError(f"{p}: looks like a binary file (it has NUL bytes); pass a text data file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise UsageError(f"{p}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the file as UTF-8") from None


def _cap(texts: tuple[str, ...], p: Path) -> tuple[str, ...]:
    """Cut texts longer than ``MAX_TEXT_CHARS``, and say so once."""
    if not any(len(t) > MAX_TEXT_CHARS for t in texts):
        return texts
    long = sum(len(t) > MAX_TEXT_CHARS for t in texts)
    print(f"warning: {p}: {long} text(s) longer than {MAX_TEXT_CHARS} characters cut to that length "
          "(models read far fewer tokens)", file=sys.stderr)
    return tuple(t[:MAX_TEXT_CHARS] for t in texts)


def _from_lines(p: Path, source: str) -> TextDataset:
    texts = _cap(tuple(line.strip() for line in read_data_text(p).splitlines() if line.strip()), p)
    if not texts:
        raise UsageError(f"{p}: data file is empty; it needs at least one line of text")
    return TextDataset(source, texts)


def numbered_jsonl_rows(p: Path, fields: str = "named fields") -> list[tuple[int, dict]]:
    """``(line number, object)`` of every non-blank line of a JSONL file.

    Raises:
        UsageError: a line that is not JSON or not an object, naming the file, the line and ``fields``.
    """
    rows = []
    for lineno, line in enumerate(read_data_text(p).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{p}:{lineno}: not valid JSON ({e.msg}); each line must be one JSON object") from None
        if not isinstance(row, dict):
            raise UsageError(f"{p}:{lineno}: each line must be a JSON object with {fields}")
        rows.append((lineno, row))
    return rows


def _jsonl_rows(p: Path) -> list[dict]:
    return [row for _, row in numbered_jsonl_rows(p)]


def _csv_rows(p: Path, delimiter: str) -> list[dict]:
    try:
        rows = list(csv.DictReader(io.StringIO(read_data_text(p), newline=""), delimiter=delimiter))
    except csv.Error as e:
        raise UsageError(f"{p}: not a valid {'TSV' if delimiter == chr(9) else 'CSV'} file ({e}); fix the quoting") from None
    for i, row in enumerate(rows, 2):
        if None in row:  # DictReader files extra fields under the key None
            raise UsageError(f"{p}:{i}: the row has more fields than the header ({len(row) - 1}); quote fields "
                             "that contain the delimiter")
    return rows


def _from_rows(p: Path, rows: list[dict], text_col: str, pair_col: str | None, label_col: str | None) -> TextDataset:
    if not rows:
        raise UsageError(f"{p}: data file is empty; it needs at least one row")
    columns = sorted({k for r in rows for k in r})
    if text_col not in columns:
        raise UsageError(f"{p}: no column {text_col!r} (columns: {', '.join(columns)}); pass --text-column NAME")
    for name, flag in ((pair_col, "--pair-column"), (label_col, "--label-column")):
        if name is not None and name not in columns:
            raise UsageError(f"{p}: no column {name!r} (columns: {', '.join(columns)}); fix {flag}")
    pair_col = pair_col or ("text_pair" if "text_pair" in columns else None)
    label_col = label_col or ("label" if "label" in columns else None)

    def column(name: str, what: str) -> tuple:
        values = []
        for i, r in enumerate(rows):
            v = r.get(name)
            if v is None or (isinstance(v, str) and not v.strip() and what != "label"):
                raise UsageError(f"{p}: row {i + 1} has no {what} in column {name!r}; every row needs one")
            values.append(v if what == "label" else str(v))
        return tuple(values)

    return TextDataset(
        source=str(p),
        texts=_cap(column(text_col, "text"), p),
        pairs=column(pair_col, "text pair") if pair_col else None,
        labels=column(label_col, "label") if label_col else None,
    )


def load_tokenizer(model_dir: str | Path):
    """The tokenizer stored in an artifact or Hugging Face directory (never remote code).

    Raises:
        UsageError: the directory holds no tokenizer files.
    """
    return _TEXT.load_processor(model_dir)


def tokenize(tokenizer, batch: TextDataset, *, max_length: int, pad_to_max: bool = False) -> dict[str, np.ndarray]:
    """Tokenize one batch to int64 arrays: padded to the longest row, or to ``max_length`` when
    ``pad_to_max``; always truncated to ``max_length``."""
    return _TEXT.encode(tokenizer, batch, max_length=max_length, pad_to_max=pad_to_max)


def feeds_for(encoded: dict[str, np.ndarray], inputs: Sequence[TensorSpec], where: str) -> dict[str, np.ndarray]:
    """Map tokenizer outputs onto a model's real inputs (the text task's rule: inputs the model
    lacks are dropped, segment ids it wants but the tokenizer did not give are zeros).

    Raises:
        UsageError: the model needs an input the tokenizer cannot provide.
    """
    return _TEXT.feeds_for(encoded, inputs, where)


def data_for_task(data, task: Task | str | None):
    """``data`` as the task's feed builder takes it: the project's sample images stand in for the
    sample sentences (``None`` or ``builtin:samples``) when the task reads images.

    Raises:
        UsageError: text data given to an image task.
    """
    task = get_task(task)
    if task.modality == "text" and data is not None and not isinstance(data, TextDataset):
        raise UsageError(f"{data.source}: task {task.name} takes texts; pass a .txt, .jsonl or .csv file")
    if task.modality != "image" or not isinstance(data, (TextDataset, type(None))):
        return data if data is not None else load_texts(None)
    from evaluation.images import load_images

    if data is None or data.source == BUILTIN:
        return load_images(None)
    raise UsageError(f"{data.source}: task {task.name} takes images; pass a directory of images or a .jsonl/.csv "
                     "with an 'image' column")
