"""What a manifest is trusted for: the paths it names stay inside its artifact, and the files it lists
still have the sizes (checked on every load) and sha256 (checked where a stage hands an artifact on)
it recorded when the artifact was written.

Plain Python on ``Artifact``-like objects (``path``, ``manifest``); ``onnx_data_files`` imports onnx
when it runs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from runtimes.errors import UsageError

MANIFEST = "manifest.json"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def inside(root: Path, name, field: str, where) -> Path:
    """``root / name`` for a path that a manifest (or a model file) names, once it is sure to stay inside
    ``root``: a relative path without ``..`` that resolves, through any symlink, inside ``root``.

    Raises:
        UsageError: one line naming ``where`` and ``field``: not a string, empty, absolute, with ``..``,
            or a symlink (the file or a folder on the way) out of the artifact.
    """
    root = Path(root)
    why = None
    if not isinstance(name, str) or not name.strip():
        why = f"is {type(name).__name__} {str(name)[:40]!r}, not a file name"
    elif PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        why = f"is the absolute path {name!r}"
    elif ".." in PurePosixPath(name.replace("\\", "/")).parts:
        why = f"is {name!r}, which climbs out with '..'"
    else:
        target = (root / name).resolve()
        if not target.is_relative_to(root.resolve()):
            why = f"is {name!r}, a symlink to {target}"
    if why is not None:
        raise UsageError(f"{where}: field {field!r} {why}; an artifact's files must lie inside it ({root}): "
                         "re-create the artifact")
    return root / name


def file_records(art) -> dict[str, dict]:
    """The manifest's ``files`` table (``{name: {bytes, sha256}}``), checked for shape; ``{}`` when the
    manifest has none (hand-written or older manifests, plain model directories).

    Raises:
        UsageError: an entry that is not ``{"bytes": int, "sha256": str}``, or a name out of the artifact.
    """
    files = (art.manifest or {}).get("files") or {}
    where = Path(art.path) / MANIFEST
    for name, rec in files.items():
        field = f"files[{name!r}]"
        ok = (isinstance(rec, dict) and isinstance(rec.get("bytes"), int) and not isinstance(rec["bytes"], bool)
              and rec["bytes"] >= 0 and isinstance(rec.get("sha256"), str))
        if not ok:
            raise UsageError(f"{where}: field {field!r} is {str(rec)[:60]!r}; expected {{\"bytes\": integer, "
                             "\"sha256\": string}: re-create the artifact")
        inside(art.path, name, field, where)
    return dict(files)


def check_sizes(art) -> None:
    """Every file the manifest lists is there with the size it had when written (cheap: no reading).

    Raises:
        UsageError: a listed file is missing or has another size; names the file and both sizes.
    """
    for name, rec in file_records(art).items():
        p = Path(art.path) / name
        if not p.is_file():
            raise UsageError(f"{art.path}: cannot load this model: {name} is missing, manifest.json lists it "
                             f"({rec['bytes']} bytes); restore it or re-create the artifact")
        size = p.stat().st_size
        if size != rec["bytes"]:
            raise UsageError(f"{art.path}: cannot load this model: {name} is {size} bytes, manifest.json says "
                             f"{rec['bytes']} (truncated or replaced after it was written); re-create the artifact")


@dataclass(frozen=True)
class FileCheck:
    """One listed file against its manifest record: ``ok``, ``changed`` or ``missing``."""

    name: str
    status: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.name}: {self.status}" + (f" ({self.detail})" if self.detail else "")


def verify_files(art) -> list[FileCheck]:
    """Size and sha256 of every file the manifest lists (reads every byte); ``[]`` without a table.

    Raises:
        UsageError: the table itself is malformed or names a path out of the artifact.
    """
    out = []
    for name, rec in file_records(art).items():
        p = Path(art.path) / name
        if not p.is_file():
            out.append(FileCheck(name, "missing", f"manifest lists {rec['bytes']} bytes"))
        elif (size := p.stat().st_size) != rec["bytes"]:
            out.append(FileCheck(name, "changed", f"{size} bytes, manifest says {rec['bytes']}"))
        elif (digest := file_sha256(p)) != rec["sha256"]:
            out.append(FileCheck(name, "changed", f"sha256 {digest[:12]}..., manifest says {rec['sha256'][:12]}..."))
        else:
            out.append(FileCheck(name, "ok"))
    return out


def require_unchanged(art, stage: str) -> None:
    """Every listed file matches its recorded sha256 before ``stage`` hands the artifact on.

    Raises:
        UsageError: a listed file is missing or changed; names the first one and the stage.
    """
    bad = [c for c in verify_files(art) if c.status != "ok"]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise UsageError(f"{art.path}: {bad[0]}{more}: the artifact changed after it was written, so {stage} will not "
                         "use it; re-create it (enginewright inspect --verify lists every file)")


def require_listed(art, paths, stage: str) -> None:
    """When the manifest has a ``files`` table, every one of ``paths`` (files inside the artifact) is in it,
    so what ``stage`` hands on is covered by the recorded hashes.

    Raises:
        UsageError: a path the table does not list; names it.
    """
    files = file_records(art)
    if not files:
        return
    for p in paths:
        name = Path(p).relative_to(Path(art.path)).as_posix()
        if name not in files:
            raise UsageError(f"{art.path}: {name} is not listed in manifest.json's files, so {stage} cannot check it; "
                             "re-create the artifact")


def onnx_data_files(model_file: Path, root: Path) -> list[Path]:
    """The external-data files ``model_file`` names (``location`` entries of its tensors), each checked
    to lie inside ``root``; in the order first named, without repeats.

    Raises:
        UsageError: ``model_file`` is not a valid ONNX model, or a location leaves ``root``.
    """
    from onnx.external_data_helper import _get_all_tensors

    model = load_onnx_proto(model_file)
    found: dict[str, Path] = {}
    for t in _get_all_tensors(model):
        if t.data_location != t.EXTERNAL:
            continue
        location = next((e.value for e in t.external_data if e.key == "location"), None)
        if location not in found:
            # locations are relative to the model file's folder, which lies inside root
            rel = str(Path(model_file).parent.relative_to(root) / location) if isinstance(location, str) else location
            found[location] = p = inside(root, rel, f"external data location of tensor {t.name!r}", model_file)
            if not p.is_file():
                raise UsageError(f"{model_file}: tensor {t.name!r} keeps its data in {location!r}, which is missing; "
                                 "re-export the artifact")
    return list(found.values())


def load_onnx_proto(path: Path):
    """The ONNX graph of ``path`` without its external data.

    Raises:
        UsageError: the file cannot be parsed as ONNX (truncated, or not a model).
    """
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError) as e:  # protobuf's parse errors; onnx wraps some in ValueError
        detail = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise UsageError(f"{path}: not a valid ONNX model ({detail}); re-export it") from None
    if not model.ir_version or not model.HasField("graph"):  # an empty file parses as an empty message
        raise UsageError(f"{path}: not a valid ONNX model (no IR version or graph: empty or truncated); re-export it")
    return model
