"""What --force may replace, for every command that writes: only what enginewright wrote, never an
input, a folder holding one or a path inside one. Each refusal is one line, exit 2, nothing changed."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from enginewright.cli import main


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


def _refused(capsys, argv: list[str], root: Path, *words: str) -> None:
    before = _snapshot(root)
    code = main(argv)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith("warning:")]
    assert code == 2 and len(lines) == 1, err
    for w in words:
        assert w in lines[0], lines[0]
    assert _snapshot(root) == before, "a refused run changed the file system"


@pytest.fixture
def case(tmp_path, tiny_bert, tiny_onnx):
    """``t/p/sub/hf``, ``t/p/sub/onnx`` (private copies) and ``t/foreign`` (a directory with a file we did not write)."""
    t = tmp_path / "t"
    shutil.copytree(tiny_bert, t / "p" / "sub" / "hf")
    shutil.copytree(tiny_onnx, t / "p" / "sub" / "onnx")
    (t / "foreign").mkdir()
    (t / "foreign" / "precious.txt").write_text("keep")
    return t


# command -> (argv before -o, the input that -o is tested against)
COMMANDS = {
    "triton": (["triton", "{onnx}"], "onnx"),
    "quantize": (["quantize", "{onnx}", "--mode", "dynamic"], "onnx"),
    "export": (["export", "{hf}"], "hf"),
    "compare": (["compare", "{hf}", "{onnx}"], "onnx"),
    "optimize": (["optimize", "{onnx}"], "onnx"),
}
SHAPES = {  # -o, relative to the case directory, and what the error says
    "foreign": ("foreign", "did not write"),
    "the-input": ("p/sub/{input}", "is the input"),
    "parent-of-input": ("p", "holds the input"),
    "inside-input": ("p/sub/{input}/out", "is inside the input"),
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("command", COMMANDS)
def test_force_replaces_only_what_enginewright_wrote(capsys, case, command, shape):
    argv, input_name = COMMANDS[command]
    rel, why = SHAPES[shape]
    fill = {"hf": str(case / "p" / "sub" / "hf"), "onnx": str(case / "p" / "sub" / "onnx")}
    out = case / rel.format(input=input_name)
    _refused(capsys, [a.format(**fill) for a in argv] + ["-o", str(out), "--force"], case, str(out), why)


def test_triton_force_replaces_its_own_repository(capsys, case):
    onnx = str(case / "p" / "sub" / "onnx")
    assert main(["triton", onnx, "-o", str(case / "repo")]) == 0
    assert (case / "repo" / ".enginewright").is_file()
    assert main(["triton", onnx, "-o", str(case / "repo"), "--force"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in case.iterdir()) == ["foreign", "p", "repo"]  # no lock, staging or old directory left


@pytest.mark.parametrize("json_path, force, why", [
    ("p/sub/onnx/manifest.json", True, "is inside the input"),
    ("p/sub/onnx", True, "is the input"),
    ("p", True, "holds the input"),
    ("foreign/precious.txt", False, "--force"),
    ("foreign/precious.txt", True, "was not written by enginewright"),
    ("p/sub/hf/config.json", True, "was not written by enginewright"),  # a model directory, not an input here
])
def test_check_json_never_overwrites_an_input_or_a_file_without_force(capsys, case, json_path, force, why):
    argv = ["check", str(case / "p" / "sub" / "onnx"), "--json", str(case / json_path)] + (["--force"] if force else [])
    _refused(capsys, argv, case, json_path, why)


def test_check_json_never_replaces_a_file_of_another_artifact(capsys, case):
    shutil.copytree(case / "p" / "sub" / "onnx", case / "other")  # an artifact this run does not read
    argv = ["check", str(case / "p" / "sub" / "onnx"), "--json", str(case / "other" / "model.onnx"), "--force"]
    _refused(capsys, argv, case, "other", "is a file of the enginewright output")


def test_check_json_force_replaces_its_own_json(capsys, case):
    target = case / "check.json"
    argv = ["check", str(case / "p" / "sub" / "onnx"), "--json", str(target)]
    assert main(argv) in (0, 1)
    target.write_text(target.read_text().replace('"ready"', '"was_ready"'))
    assert main(argv + ["--force"]) in (0, 1)
    capsys.readouterr()
    data = json.loads(target.read_text())
    assert data["kind"] == "tensorrt-check" and "ready" in data


def test_junit_replaces_only_a_junit_file(capsys, case):
    _refused(capsys, ["compare", str(case / "p" / "sub" / "hf"), str(case / "p" / "sub" / "onnx"),
                      "--junit", str(case / "foreign" / "precious.txt")], case, "--junit", "not a JUnit XML file")


def test_junit_in_a_missing_folder_is_refused_before_the_run(capsys, case):
    _refused(capsys, ["compare", str(case / "p" / "sub" / "hf"), str(case / "p" / "sub" / "onnx"),
                      "--junit", str(case / "no" / "j.xml")], case, "--junit", "does not exist")


def test_force_never_deletes_a_data_file_the_run_reads(capsys, case):
    prev = case / "prev"  # an earlier output of ours that the user then put the calibration file in
    prev.mkdir()
    (prev / ".enginewright").write_text("")
    (prev / "calib.txt").write_text("a sentence\nanother one\n")
    _refused(capsys, ["quantize", str(case / "p" / "sub" / "onnx"), "--calib", str(prev / "calib.txt"), "-o", str(prev),
                      "--force"], case, str(prev), "holds the input")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_folder_the_filesystem_refuses_is_one_line(capsys, case):
    """/proc passes root's permission check and refuses every new file: the lock file's error is said
    in one line naming -o, not as an OSError on a hidden lock file."""
    _refused(capsys, ["quantize", str(case / "p" / "sub" / "onnx"), "--mode", "dynamic", "-o", "/proc/enginewright-out"],
             case, "/proc/enginewright-out", "cannot write in /proc")
