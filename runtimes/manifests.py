"""One manifest type per artifact kind: what ``manifest.json`` holds, checked when it is read.

``OnnxManifest`` (``kind: onnx``), ``EngineManifest`` (``kind: trt``) and ``HfManifest``
(``kind: hf``, what finetune and compress write) are frozen dataclasses with ``to_dict`` and
``from_dict``. Sections a stage adds (``optimization``, ``quantization``, ``pooling``,
``compression``...) travel in ``extra`` and are written after the common fields. The JSON is the
one written since schema 1; a field absent from an older or hand-written manifest takes its default.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Mapping

from runtimes.errors import UsageError

SCHEMA_VERSION = 1

_VERSIONED = (
    "enginewright", "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxscript",
    "onnxruntime", "onnxruntime-gpu", "tensorrt", "tensorrt-cu13", "tensorrt-cu12", "numpy", "tokenizers",
)


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape an artifact (absent ones are left out)."""
    out = {}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _of(*types: type, what: str):
    """Field metadata: the JSON types the field may hold, and how to say so in an error."""
    return {"types": types, "what": what}


_STR = _of(str, what="a string")
_OPT_STR = _of(str, type(None), what="a string or null")
_INT = _of(int, what="an integer")
_BOOL = _of(bool, what="true or false")
_DICT = _of(dict, what="an object")
_OPT_DICT = _of(dict, type(None), what="an object or null")
_LIST = _of(list, what="a list")
_OPT_LIST = _of(list, type(None), what="a list or null")


@dataclass(frozen=True)
class Manifest:
    """Fields every artifact kind shares. ``files`` is filled in by the writer, last."""

    kind: ClassVar[str] = ""
    task: str | None = field(default=None, metadata=_OPT_STR)
    source: Mapping | None = field(default=None, metadata=_OPT_DICT)
    command: str | None = field(default=None, metadata=_OPT_STR)
    versions: Mapping = field(default_factory=library_versions, metadata=_DICT)
    created: str = field(default_factory=now_iso, metadata=_STR)
    files: Mapping = field(default_factory=dict, metadata=_DICT)
    extra: Mapping = field(default_factory=dict)
    schema_version: int = field(default=SCHEMA_VERSION, metadata=_INT)

    # the order of keys in manifest.json, as written since schema 1; ``extra`` follows
    ORDER: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict:
        d = {"schema_version": self.schema_version, "kind": self.kind}
        d.update((k, _plain(getattr(self, k))) for k in self.ORDER)
        d.update((k, _plain(v)) for k, v in self.extra.items())
        return d

    @classmethod
    def from_dict(cls, data: Mapping, where: str | Path = "manifest.json") -> "Manifest":
        """Read a manifest of this kind; fields it lacks take their defaults, others go to ``extra``.

        Raises:
            UsageError: ``kind`` is not this type's, a field holds the wrong type of value, or the
                schema is newer than this enginewright reads; one line naming the file and field.
        """
        if data.get("kind") != cls.kind:
            raise UsageError(f"{where}: field 'kind' is {data.get('kind')!r}; expected {cls.kind!r}")
        known = {f.name: f for f in dataclasses.fields(cls) if f.name != "extra"}
        for name, f in known.items():
            if name in data:
                _check(where, name, data[name], f.metadata)
        if data.get("schema_version", SCHEMA_VERSION) > SCHEMA_VERSION:
            raise UsageError(f"{where}: field 'schema_version' is {data['schema_version']}; this enginewright reads "
                             f"{SCHEMA_VERSION} and older, upgrade it or re-create the artifact")
        return cls(**{k: v for k, v in data.items() if k in known},
                   extra={k: v for k, v in data.items() if k not in known and k != "kind"})

    def with_extra(self, **sections) -> "Manifest":
        """The same manifest with ``sections`` added to (or replacing those in) ``extra``."""
        return dataclasses.replace(self, extra={**self.extra, **sections})

    def with_files(self, files: Mapping) -> "Manifest":
        return dataclasses.replace(self, files=dict(files))


@dataclass(frozen=True)
class OnnxManifest(Manifest):
    """An ONNX artifact: ``model.onnx`` (and its external data), its I/O specs, checks and parity."""

    kind: ClassVar[str] = "onnx"
    model_file: str = field(default="model.onnx", metadata=_STR)
    opset: int = field(default=0, metadata=_INT)
    external_data: bool = field(default=False, metadata=_BOOL)
    inputs: list = field(default_factory=list, metadata=_LIST)
    outputs: list = field(default_factory=list, metadata=_LIST)
    options: Mapping = field(default_factory=dict, metadata=_DICT)
    checks: Mapping = field(default_factory=dict, metadata=_DICT)
    parity: Mapping | None = field(default=None, metadata=_OPT_DICT)

    ORDER: ClassVar[tuple[str, ...]] = (
        "task", "model_file", "opset", "external_data", "inputs", "outputs", "source", "command", "options",
        "versions", "created", "checks", "parity", "files")


@dataclass(frozen=True)
class EngineManifest(Manifest):
    """A TensorRT engine artifact: ``model.plan``, what it was built from, with what, for which GPU,
    and the optimization profiles it accepts."""

    kind: ClassVar[str] = "trt"
    model_file: str = field(default="model.plan", metadata=_STR)
    inputs: list = field(default_factory=list, metadata=_LIST)
    outputs: list = field(default_factory=list, metadata=_LIST)
    profiles: list = field(default_factory=list, metadata=_LIST)
    precision: str | None = field(default=None, metadata=_OPT_STR)
    tensorrt: Mapping = field(default_factory=dict, metadata=_DICT)
    gpu: Mapping = field(default_factory=dict, metadata=_DICT)
    builder: Mapping = field(default_factory=dict, metadata=_DICT)
    onnx_sha256: str | None = field(default=None, metadata=_OPT_STR)
    cache_key: str | None = field(default=None, metadata=_OPT_STR)

    ORDER: ClassVar[tuple[str, ...]] = (
        "task", "model_file", "inputs", "outputs", "profiles", "precision", "tensorrt", "gpu", "builder",
        "onnx_sha256", "source", "cache_key", "command", "versions", "created")

    def to_dict(self) -> dict:
        d = super().to_dict()
        if self.files:  # an engine's manifest is complete without them until written
            d["files"] = _plain(self.files)
        return d


@dataclass(frozen=True)
class HfManifest(Manifest):
    """A Hugging Face model directory written by a stage (finetune, compress): safetensors weights,
    tokenizer, config, and what was done to get them."""

    kind: ClassVar[str] = "hf"
    labels: list | None = field(default=None, metadata=_OPT_LIST)
    options: Mapping = field(default_factory=dict, metadata=_DICT)

    ORDER: ClassVar[tuple[str, ...]] = ("task", "labels", "source", "command", "options")

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.update(versions=_plain(self.versions), created=self.created, files=_plain(self.files))
        return d


MANIFEST_TYPES: dict[str, type[Manifest]] = {m.kind: m for m in (OnnxManifest, EngineManifest, HfManifest)}


def read_manifest(data: Mapping, where: str | Path = "manifest.json") -> Manifest:
    """The typed manifest for ``data`` by its ``kind``.

    Raises:
        UsageError: an unknown kind or a field of the wrong type, naming the field.
    """
    cls = MANIFEST_TYPES.get(data.get("kind"))
    if cls is None:
        raise UsageError(f"{where}: field 'kind' is {data.get('kind')!r}; expected one of {list(MANIFEST_TYPES)}")
    return cls.from_dict(data, where)


def _check(where, name: str, value: Any, meta: Mapping) -> None:
    types = meta.get("types")
    if not types:
        return
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        raise UsageError(f"{where}: field {name!r} is {type(value).__name__} {str(value)[:40]!r}; expected "
                         f"{meta['what']}; re-create the artifact")


def _plain(value):
    """Mappings and tuples as the dicts and lists JSON writes (what a manifest read back holds)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
