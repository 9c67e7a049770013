"""The packages import one way, bottom to top:
``runtimes`` <- ``evaluation`` <- ``exporter`` <- ``benchmarks`` <- ``enginewright``.

Checked on the source (every ``import``, function-level ones too, since lazy imports are where a
wrong direction hides), and in a subprocess for what importing each package actually loads.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("runtimes", "evaluation", "exporter", "benchmarks", "enginewright")


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every absolute import in the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_imports_only_the_layers_below(layer):
    above = set(LAYERS[LAYERS.index(layer) + 1:])
    wrong = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        if hits := sorted(imported_packages(path) & above):
            wrong.append(f"{path.relative_to(ROOT)} imports {', '.join(hits)}")
    assert not wrong, f"{layer} may import only {LAYERS[:LAYERS.index(layer)]}: " + "; ".join(wrong)


def test_the_source_check_sees_function_level_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from benchmarks.throughput import run_bench\n    import exporter.hf\n")
    assert imported_packages(f) == {"benchmarks", "exporter"}


@pytest.mark.parametrize("layer", LAYERS[:-1])
def test_importing_a_layer_loads_nothing_above_it(layer):
    above = LAYERS[LAYERS.index(layer) + 1:]
    code = (f"import sys, pkgutil, importlib, {layer}\n"
            f"for m in pkgutil.walk_packages({layer}.__path__, '{layer}.'):\n"
            "    importlib.import_module(m.name)\n"
            f"print(','.join(p for p in {above!r} if p in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "", f"importing {layer} loaded {out.strip()}"


def test_every_package_is_in_the_wheel():
    """pyproject.toml lists packages by hand: a package missing there works in the editable install
    (tests, CI) and is absent from a wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {str(p.parent.relative_to(ROOT)).replace("/", ".") for layer in LAYERS
             for p in (ROOT / layer).rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"


@pytest.mark.parametrize("dockerfile", sorted((ROOT / "docker").glob("*.Dockerfile")), ids=lambda p: p.name)
def test_every_layer_is_copied_into_the_images(dockerfile):
    """The images install the project editable from the folders they COPY: a layer left out there
    fails on the first import in the container (no Docker engine here to build them)."""
    copied = {line.split()[1].strip("/") for line in dockerfile.read_text().splitlines() if line.startswith("COPY ")}
    missing = [layer for layer in LAYERS if layer not in copied]
    assert not missing, f"{dockerfile.name}: add COPY {missing[0]}/ {missing[0]}/"
