"""Artifact directories: a model, what it needs to be used, and ``manifest.json``.

Every stage reads an artifact directory and writes a new one. A plain Hugging Face model directory
(``config.json`` plus weights) is accepted wherever an artifact is, as the PyTorch reference.
Writes are atomic: a stage fills a temporary sibling directory and renames it into place (runtimes/outputs.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from runtimes.errors import UsageError
from runtimes.integrity import check_sizes, file_sha256, inside
from runtimes.manifests import SCHEMA_VERSION, library_versions, now_iso, read_manifest
from runtimes.outputs import atomic_output_dir, check_output_free, write_json_atomic, write_text_atomic
from runtimes.specs import TensorSpec, specs_from_list
from runtimes.tasks import task_for_architectures, task_names

MANIFEST = "manifest.json"
KINDS = ("hf", "onnx", "trt")
__all__ = [
    "KINDS", "MANIFEST", "SCHEMA_VERSION", "TASKS", "Artifact", "atomic_output_dir", "check_output_free", "dir_hash",
    "file_sha256", "file_table", "is_hf_model_dir", "library_versions", "load_artifact", "model_files_sha256",
    "now_iso", "read_json", "source_record", "task_from_config", "write_json_atomic", "write_text_atomic",
]
TASKS = task_names()
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass
class Artifact:
    """An opened artifact directory.

    ``inputs``/``outputs`` come from the manifest; for a plain Hugging Face directory they are
    empty until a runner derives them from the model.
    """

    path: Path
    kind: str
    task: str | None
    manifest: dict = field(default_factory=dict)
    alias: str | None = None  # shown instead of the directory name (e.g. while still in a temp dir)

    @property
    def inputs(self) -> list[TensorSpec]:
        return specs_from_list(self.manifest.get("inputs", []))

    @property
    def outputs(self) -> list[TensorSpec]:
        return specs_from_list(self.manifest.get("outputs", []))

    @property
    def model_file(self) -> Path:
        """The main model file: ``model.onnx`` (ONNX), ``model.plan`` (TensorRT), the directory itself (HF).

        Raises:
            UsageError: the manifest names a file outside the artifact (absolute, ``..``, a symlink out).
        """
        if self.kind == "hf":
            return self.path
        name = self.manifest.get("model_file", "model.plan" if self.kind == "trt" else "model.onnx")
        if not self.manifest:  # a bare model.onnx directory: the user's own files, no manifest to distrust
            return self.path / name
        return inside(self.path, name, "model_file", self.path / MANIFEST)

    @property
    def name(self) -> str:
        return self.alias or self.path.name

    def size_bytes(self) -> int:
        """Bytes of model files (weights, ONNX graph and external data), not tokenizer files."""
        if self.kind == "hf":
            return sum(p.stat().st_size for p in self.path.iterdir() if p.suffix in (".safetensors", ".bin"))
        files = self.manifest.get("files") or {}
        if files:
            return sum(int(v["bytes"]) for k, v in files.items() if self._is_model_file(k))
        return sum(p.stat().st_size for p in self.path.iterdir() if self._is_model_file(p.name))

    @staticmethod
    def _is_model_file(name: str) -> bool:
        return name.endswith((".onnx", ".onnx_data", ".onnx.data", ".plan"))



def task_from_config(config: dict) -> str | None:
    """Infer the task from ``config.json``'s ``architectures`` (``BertModel`` -> feature-extraction)."""
    return task_for_architectures(config.get("architectures"))


# config.json sizes every architecture reads as integers; a string there fails deep inside torch
_CONFIG_INTS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
                "max_position_embeddings", "type_vocab_size", "num_key_value_heads", "image_size", "patch_size",
                "num_channels", "num_labels")


def check_config(config: dict, where: Path) -> None:
    """Raises:
        UsageError: a size field of ``config.json`` (``hidden_size``, ...) holds something other than an integer.
    """
    for key in _CONFIG_INTS:
        value = config.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise UsageError(f"{where}: field {key!r} is {type(value).__name__} {str(value)[:40]!r}; expected an "
                             "integer: fix config.json or re-save the model")


def is_hf_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (
        any((path / f).is_file() for f in _WEIGHT_FILES) or any(path.glob("*.safetensors"))
    )


def read_json(path: Path, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: {what} is not valid JSON ({e.msg} at line {e.lineno}); regenerate it") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: {what} must be a JSON object")
    return data


def load_artifact(path: "str | os.PathLike | Artifact", *, task: str | None = None, check_files: bool = True) -> Artifact:
    """Open an artifact directory or a plain Hugging Face model directory (an ``Artifact`` is
    returned as it is).

    With a manifest, the model file it names must lie inside the directory, and (``check_files``)
    every file its ``files`` table lists must be there with the recorded size; sha256 is checked
    only where a stage asks (``runtimes.integrity.require_unchanged``).

    Raises:
        UsageError: the path is missing, not a directory, or holds neither a manifest nor a model;
            a manifest path leaves the directory; a listed file is missing or has another size.
    """
    if isinstance(path, Artifact):
        return path
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{p}: no such directory; pass an artifact or Hugging Face model directory")
    if not p.is_dir():
        raise UsageError(f"{p}: not a directory; pass the directory that holds manifest.json or config.json")
    if (p / MANIFEST).is_file():
        manifest = read_json(p / MANIFEST, "manifest")
        kind = read_manifest(manifest, p / MANIFEST).kind  # checks every field it knows
        art = Artifact(path=p, kind=kind, task=task or manifest.get("task"), manifest=manifest)
        model_file = art.model_file  # refuses a path out of the artifact, also when files are not checked
        if not check_files:
            return art
        check_sizes(art)
        if kind == "hf" and (p / "config.json").is_file():
            check_config(read_json(p / "config.json", "config.json"), p / "config.json")
        if kind in ("onnx", "trt") and not model_file.is_file():
            raise UsageError(f"{p}: manifest names {art.model_file.name} but the file is missing; re-export the artifact")
        return art
    if is_hf_model_dir(p):
        config = read_json(p / "config.json", "config.json")
        check_config(config, p / "config.json")
        inferred = task or task_from_config(config)
        return Artifact(path=p, kind="hf", task=inferred, manifest={})
    if (p / "model.onnx").is_file():
        return Artifact(path=p, kind="onnx", task=task, manifest={})
    raise UsageError(
        f"{p}: not a model directory (no manifest.json, no config.json with weights, no model.onnx); "
        "pass a Hugging Face model directory or an enginewright artifact"
    )


def imported_gguf(record: dict, *, not_imported: str, changed: str) -> Path:
    """The GGUF file a model directory's manifest ``source`` record names (``import-gguf`` writes the
    path and its sha256), checked still there and unchanged.

    Raises:
        UsageError: ``not_imported`` when the record is not a GGUF import, ``changed`` when the file is
            missing or its content changed.
    """
    if record.get("format") != "gguf":
        raise UsageError(not_imported)
    path = Path(record.get("path") or "")
    if not path.is_file() or file_sha256(path) != record.get("sha256"):
        raise UsageError(changed)
    return path


def model_files_sha256(art: Artifact) -> str:
    """One hash over the model files (ONNX graph and its external data, or engine) by name and content."""
    h = hashlib.sha256()
    for f in sorted(p for p in art.path.iterdir() if p.is_file() and Artifact._is_model_file(p.name)):
        h.update(f.name.encode() + b"\0" + file_sha256(f).encode())
    return h.hexdigest()


def dir_hash(path: Path) -> str:
    """A content hash of a directory: relative paths and file bytes, ``manifest.json`` excluded."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file() and p.name != MANIFEST):
        h.update(str(f.relative_to(path)).encode())
        h.update(b"\0")
        h.update(file_sha256(f).encode())
    return "sha256:" + h.hexdigest()


def source_record(art: Artifact) -> dict:
    """What a manifest records about the artifact a stage read: its path, kind and content hash."""
    return {"path": str(art.path.resolve()), "kind": art.kind, "hash": dir_hash(art.path)}


def file_table(path: Path) -> dict[str, dict]:
    """``{relative name: {bytes, sha256}}`` for every file but the manifest."""
    return {
        str(f.relative_to(path)): {"bytes": f.stat().st_size, "sha256": file_sha256(f)}
        for f in sorted(Path(path).rglob("*"))
        if f.is_file() and f.name != MANIFEST
    }
