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
from typing import Callable, Iterable, Iterator, Sequence

from exporter.manifest import COMPANION_FILES
from runtimes.artifact import MANIFEST, Artifact, file_table, load_artifact
from runtimes.outputs import atomic_output_dir, check_output_free, claim_output, scratch_dir, write_json_atomic
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

    This is the one place a stage asks what ``--force`` may replace (the rule itself is
    ``runtimes.outputs.check_output_free``): every stage's output goes through ``check`` when the
    writer is made and again when the directory is swapped into place. ``inputs`` are the paths the
    stage reads (artifacts, data files): the output may not be, hold or lie inside one of them.
    Making the writer takes the output's lock (``.OUT.lock``), so a second run to the same output is
    refused before any work; it is released when the directory is written (or the process ends).

    In a run of several processes (``accelerate launch``) only the main one locks and writes; the
    others check the output the same way, and ``write`` returns them the artifact once it is there.
    """

    def __init__(self, out: str | os.PathLike, *, force: bool = False, inputs: Iterable = ()):
        from exporter.distributed import is_main

        self.out, self.force = Path(out), force
        self.inputs = [Path(p) for p in inputs if p is not None]
        self.main = is_main()
        if self.main:
            claim_output(self.out, self.force, self.inputs)
        else:
            check_output_free(self.out, self.force, self.inputs)

    def check(self) -> None:
        """Raises:
            UsageError: the output is, holds or lies inside an input; it exists and ``force`` is not
                given; it is not a directory; it holds files enginewright did not write.
        """
        check_output_free(self.out, self.force, self.inputs)

    @contextlib.contextmanager
    def directory(self, *, mark: bool = False) -> Iterator[Path]:
        """A staging directory that replaces the output when the block succeeds (a model repository,
        or anything else without a manifest: ``mark`` writes the ``.enginewright`` marker so a later
        ``--force`` may replace it); on an exception the output is left as it was."""
        self.check()
        with atomic_output_dir(self.out, force=self.force, inputs=self.inputs, mark=mark) as tmp:
            yield tmp

    def scratch(self):
        """A scratch directory beside the output, removed at the end (swept by a later run if killed)."""
        return scratch_dir(self.out)

    def write(self, fill: Callable[[Path], Manifest], *, companions_from: Path | None = None) -> Artifact:
        """Stage the artifact: copy the companion files of ``companions_from``, call ``fill(staging_dir)``
        for the model files and the manifest, add the file table, write ``manifest.json``, swap the
        directory into place and return the artifact read back from the output path. In a launched
        run the main process writes; the others wait for it and read what it wrote."""
        from exporter.distributed import wait_for_everyone

        if not self.main:
            wait_for_everyone()
            return load_artifact(self.out)
        with self.directory() as tmp:
            if companions_from is not None:
                copy_companions(companions_from, tmp)
            manifest = fill(tmp)
            write_json_atomic(tmp / MANIFEST, manifest.with_files(file_table(tmp)).to_dict())
        wait_for_everyone()
        return load_artifact(self.out)
