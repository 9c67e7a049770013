"""The artifact writer every stage uses, and the import graph of the export modules."""

import ast
import json
from pathlib import Path

import pytest

from exporter.manifest import COMPANION_FILES
from exporter.writer import ArtifactWriter, copy_companions, open_input
from runtimes.errors import UsageError
from runtimes.manifests import HfManifest
from runtimes.outputs import MARKER

ROOT = Path(__file__).resolve().parents[2]


def test_writer_stages_companions_manifest_and_reloads(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "vocab.txt").write_text("a\n")
    (src / "unrelated.txt").write_text("x")

    def fill(tmp):
        (tmp / "model.safetensors").write_bytes(b"w")
        return HfManifest(task="text-classification", labels=["a", "b"], command="test")

    art = ArtifactWriter(tmp_path / "out", force=False).write(fill, companions_from=src)
    assert art.kind == "hf" and art.task == "text-classification"
    assert sorted(p.name for p in art.path.iterdir()) == ["config.json", "manifest.json", "model.safetensors", "vocab.txt"]
    manifest = json.loads((art.path / "manifest.json").read_text())
    assert list(manifest)[:4] == ["schema_version", "kind", "task", "labels"]
    assert sorted(manifest["files"]) == ["config.json", "model.safetensors", "vocab.txt"] and manifest == art.manifest


def test_writer_refuses_a_taken_output_before_any_work_and_replaces_with_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("1")
    with pytest.raises(UsageError, match="--force"):
        ArtifactWriter(out)
    with pytest.raises(UsageError, match="did not write"):  # --force replaces only what enginewright wrote
        ArtifactWriter(out, force=True)
    (out / MARKER).write_text("")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        ArtifactWriter(tmp_path / "file", force=True)
    with ArtifactWriter(out, force=True).directory() as tmp:
        (tmp / "new").write_text("2")
    assert [p.name for p in out.iterdir()] == ["new"]


def test_a_failing_fill_leaves_the_output_as_it_was(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("1")
    (out / MARKER).write_text("")

    def fill(tmp):
        (tmp / "half").write_text("partial")
        raise RuntimeError("parity failed")

    with pytest.raises(RuntimeError):
        ArtifactWriter(out, force=True).write(fill)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and sorted(p.name for p in out.iterdir()) == [MARKER, "old"]


def test_open_input_checks_the_kind(tiny_bert):
    assert open_input(tiny_bert, "hf", "finetune").kind == "hf"
    with pytest.raises(UsageError, match=r"optimize takes an ONNX artifact .* 'hf'"):
        open_input(tiny_bert, "onnx", "optimize")


def test_copy_companions(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for name in COMPANION_FILES[:3]:
        (tmp_path / "a" / name).write_text("{}")
    assert copy_companions(tmp_path / "a", tmp_path / "b", skip=("config.json",)) == list(COMPANION_FILES[1:3])
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted(COMPANION_FILES[1:3])


def _exporter_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("exporter"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("exporter"))
    return names


def test_the_export_modules_import_without_a_cycle():
    """Function-level imports count: a cycle held apart by them is still a cycle."""
    modules = {}
    for path in sorted((ROOT / "exporter").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = _exporter_imports(path)
    # a package's __init__ re-exports its modules; an import of one of its modules does not run
    # the others, so an edge to a package reaches only what it names, checked through its __init__
    state: dict[str, int] = {}

    def visit(m, trail):
        if state.get(m) == 1:
            raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(m):] + [m]))
        if state.get(m) == 2 or m not in modules:
            return
        state[m] = 1
        for d in sorted(modules[m]):
            if d != "exporter" and not m.startswith(d + "."):  # a module's own package is already loading
                visit(d, trail + [m])
        state[m] = 2

    for m in modules:
        visit(m, [])
