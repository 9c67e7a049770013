"""One writer for every stage's output: the output check, the atomic directory, the companion files
(tokenizer, config), the manifest and the reload.

A stage opens its input with ``open_input`` (the kind check), makes an ``ArtifactWriter`` as soon as
it knows the output path (so a taken output is refused before any work), and hands ``write`` a
function that fills the staging directory and returns the manifest. Nothing reaches the output path
unless that function returns: a failed check leaves what was there before.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator, Sequence

from exporter.manifest import COMPANION_FILES
from runtimes.artifact import (
    MANIFEST, Artifact, atomic_output_dir, check_output_free, file_table, load_artifact, write_json_atomic,
)
from runtimes.errors import UsageError
from runtimes.integrity import onnx_data_files
from runtimes.manifests import Manifest

_TAKES = {"onnx": "an ONNX artifact (run enginewright export first)", "hf": "a Hugging Face model directory",
          "trt": "a TensorRT engine artifact (run enginewright build first)"}


def open_input(path: "str | os.PathLike | Artifact", kind: str, stage: str) -> Artifact:
    """Open the artifact a stage reads and check its kind.

    An ONNX input's graph must parse and its external data lie inside the artifact.

    Raises:
        UsageError: not an artifact, or one of another kind; one line naming the path and the stage;
            an ONNX graph that does not parse or names external data outside the artifact.
    """
    art = load_artifact(path)
    if art.kind != kind:
        raise UsageError(f"{art.path}: {stage} takes {_TAKES[kind]}, this is a {art.kind!r} artifact")
    if kind == "onnx":
        onnx_data_files(art.model_file, art.path)
    return art


def copy_companions(src: Path, dst: Path, *, skip: Sequence[str] = ()) -> list[str]:
    """Copy the companion files (config, tokenizer) that ``src`` has into ``dst``; returns their names."""
    names = [n for n in COMPANION_FILES if n not in skip and (Path(src) / n).is_file()]
    for n in names:
        shutil.copy2(Path(src) / n, Path(dst) / n)
    return names


class ArtifactWriter:
    """Writes one output directory, replacing an existing one only as ``check`` allows.

    This is the one place that decides what ``--force`` may replace: every stage's output goes
    through ``check`` when the writer is made and again when the directory is swapped into place.
    """

    def __init__(self, out: str | os.PathLike, *, force: bool = False):
        self.out, self.force = Path(out), force
        self.check()

    def check(self) -> None:
        """Raises:
            UsageError: the output exists and ``force`` is not given, or it exists and is not a directory.
        """
        check_output_free(self.out, self.force)

    @contextlib.contextmanager
    def directory(self) -> Iterator[Path]:
        """A staging directory that replaces the output when the block succeeds (a model repository,
        or anything else without a manifest); on an exception the output is left as it was."""
        self.check()
        with atomic_output_dir(self.out, force=self.force) as tmp:
            yield tmp

    def write(self, fill: Callable[[Path], Manifest], *, companions_from: Path | None = None) -> Artifact:
        """Stage the artifact: copy the companion files of ``companions_from``, call ``fill(staging_dir)``
        for the model files and the manifest, add the file table, write ``manifest.json``, swap the
        directory into place and return the artifact read back from the output path."""
        with self.directory() as tmp:
            if companions_from is not None:
                copy_companions(companions_from, tmp)
            manifest = fill(tmp)
            write_json_atomic(tmp / MANIFEST, manifest.with_files(file_table(tmp)).to_dict())
        return load_artifact(self.out)
