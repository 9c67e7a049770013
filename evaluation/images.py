"""Read image data: a directory of image files (labels from sub-folder names, ImageFolder style) or
a ``.jsonl``/``.csv`` with an ``image`` path column and an optional ``label`` column.

Without a path, the project's own sample images (``evaluation/samples/images``, made by
``evaluation/samples/make_images.py``). Every file is opened and verified when loaded, so a bad
file is reported before any model runs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from runtimes.errors import UsageError

SAMPLE_IMAGES = Path(__file__).resolve().parent / "samples" / "images"
BUILTIN = "builtin:samples"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class ImageDataset:
    """Image files (and optional labels) in a fixed order; pixels are read per batch."""

    source: str
    paths: tuple[Path, ...]
    labels: tuple | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def fingerprint(self) -> str:
        """A hash of the files' bytes and the labels, in order."""
        labels = self.labels if self.labels is not None else ("",) * len(self)
        rows = (hashlib.sha256(Path(p).read_bytes()).hexdigest() + f"\0{lab}" for p, lab in zip(self.paths, labels))
        return "sha256:" + hashlib.sha256("\n".join(rows).encode()).hexdigest()

    def describe(self) -> dict:
        return {"source": self.source, "rows": len(self), "kind": "images", "has_labels": self.labels is not None,
                "hash": self.fingerprint()}

    def take(self, n: int) -> "ImageDataset":
        """The first ``n`` rows, cycling when the data has fewer (for fixed-size benchmark batches)."""
        idx = [i % len(self) for i in range(n)]
        return ImageDataset(self.source, tuple(self.paths[i] for i in idx),
                            tuple(self.labels[i] for i in idx) if self.labels is not None else None)

    def batches(self, batch_size: int) -> Iterator["ImageDataset"]:
        for start in range(0, len(self), batch_size):
            sl = slice(start, start + batch_size)
            yield ImageDataset(self.source, self.paths[sl], self.labels[sl] if self.labels is not None else None)

    def images(self) -> list:
        """The batch's images as RGB ``PIL.Image`` objects."""
        return [_open(p).convert("RGB") for p in self.paths]


def load_images(path: str | Path | None = None, *, label_column: str | None = None,
                limit: int | None = None) -> ImageDataset:
    """Load image data; ``None`` or ``"builtin:samples"`` gives the project's sample images.

    Raises:
        UsageError: a missing path, an empty directory, a file that is not a readable image, a
            table without an ``image`` column.
    """
    if path is None or str(path) == BUILTIN:
        ds = _from_dir(SAMPLE_IMAGES, BUILTIN)
    else:
        p = Path(path)
        if not p.exists():
            raise UsageError(f"{p}: image data not found; pass a directory of images or a .jsonl/.csv with an 'image' column")
        ds = _from_dir(p, str(p)) if p.is_dir() else _from_table(p, label_column)
    return ds.take(min(limit, len(ds))) if limit else ds


def _open(p: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(p)
        img.load()
        return img
    except FileNotFoundError:
        raise UsageError(f"{p}: image file not found; fix the path (relative paths are read from the table's folder)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UsageError(f"{p}: not a readable image ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}); "
                         "remove or replace it") from None


_TEXT_HINT = "; a directory as data is read as images, text data is one .jsonl, .csv or .txt file"


def _checked(p: Path) -> Path:
    if p.suffix.lower() not in IMAGE_SUFFIXES:
        raise UsageError(f"{p}: not an image file (expected one of {', '.join(IMAGE_SUFFIXES)}); remove it from the data"
                         + _TEXT_HINT)
    _open(p)
    return p


def _from_dir(root: Path, source: str) -> ImageDataset:
    files = sorted(f for f in root.rglob("*") if f.is_file() and not any(part.startswith(".") for part in f.relative_to(root).parts))
    if not files:
        raise UsageError(f"{root}: no image files; put images in it (one sub-folder per label for labelled data)" + _TEXT_HINT)
    nested = [len(f.relative_to(root).parts) > 1 for f in files]
    if any(nested) and not all(nested):
        loose = next(f for f, n in zip(files, nested) if not n)
        raise UsageError(f"{loose}: labelled image folders hold images only in sub-folders (one per label); move it into one"
                         + _TEXT_HINT)
    paths = tuple(_checked(f) for f in files)
    labels = tuple(f.relative_to(root).parts[0] for f in files) if all(nested) else None
    return ImageDataset(source, paths, labels)


def _from_table(p: Path, label_column: str | None) -> ImageDataset:
    from evaluation.data import _csv_rows, _jsonl_rows

    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        rows = _jsonl_rows(p)
    elif suffix in (".csv", ".tsv"):
        rows = _csv_rows(p, "\t" if suffix == ".tsv" else ",")
    else:
        raise UsageError(f"{p}: unknown image data type {suffix!r}; pass a directory of images or a .jsonl/.csv with an "
                         "'image' column")
    if not rows:
        raise UsageError(f"{p}: data file is empty; it needs at least one row")
    columns = sorted({k for r in rows for k in r})
    label_col = label_column or ("label" if "label" in columns else None)
    for name in ("image", label_col):
        if name is not None and name not in columns:
            raise UsageError(f"{p}: no column {name!r} (columns: {', '.join(columns)})")
    paths = []
    for i, r in enumerate(rows):
        if not str(r.get("image") or "").strip():
            raise UsageError(f"{p}: row {i + 1} has no image path in column 'image'; every row needs one")
        paths.append(_checked((p.parent / str(r["image"]).strip())))
    labels = tuple(r.get(label_col) for r in rows) if label_col else None
    return ImageDataset(str(p), tuple(paths), labels)
