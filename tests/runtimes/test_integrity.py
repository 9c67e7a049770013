"""What a manifest is trusted for: paths inside the artifact, listed files at their recorded size and sha256."""

import json
import shutil

import pytest

from runtimes.artifact import file_table, load_artifact
from runtimes.errors import UsageError
from runtimes.integrity import check_sizes, inside, onnx_data_files, require_listed, require_unchanged, verify_files


@pytest.fixture
def art_dir(tiny_onnx, tmp_path):
    d = tmp_path / "art"
    shutil.copytree(tiny_onnx, d)
    return d


def _manifest(d, **changes):
    m = json.loads((d / "manifest.json").read_text())
    m.update(changes)
    (d / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("name, why", [
    ("/etc/hostname", "absolute path"), ("../art/model.onnx", "'..'"), ("sub/../../x", "'..'"),
    ("C:\\x.onnx", "absolute path"), ("", "not a file name"), (7, "int '7'"),
])
def test_inside_refuses_paths_out_of_the_artifact(tmp_path, name, why):
    with pytest.raises(UsageError, match=f"m.json: field 'model_file' .*{why}"):
        inside(tmp_path, name, "model_file", "m.json")


def test_inside_follows_symlinks_and_refuses_one_that_leaves(tmp_path):
    root, out = tmp_path / "a", tmp_path / "b"
    (root / "sub").mkdir(parents=True)
    out.mkdir()
    (root / "sub" / "x.bin").write_bytes(b"x")
    (root / "link.bin").symlink_to(root / "sub" / "x.bin")  # a link that stays inside is fine
    assert inside(root, "link.bin", "f", "w") == root / "link.bin"
    assert inside(root, "sub/x.bin", "f", "w") == root / "sub" / "x.bin"
    (root / "dir").symlink_to(out, target_is_directory=True)  # a folder on the way that leaves
    with pytest.raises(UsageError, match="symlink to"):
        inside(root, "dir/y.bin", "f", "w")


def test_a_manifest_without_a_file_table_still_loads(art_dir):
    m = json.loads((art_dir / "manifest.json").read_text())
    del m["files"]
    (art_dir / "manifest.json").write_text(json.dumps(m))
    art = load_artifact(art_dir)
    assert verify_files(art) == [] and art.model_file.is_file()
    require_unchanged(art, "triton")  # nothing recorded, nothing to refuse
    require_listed(art, [art.model_file], "triton")


def test_sizes_are_checked_on_load_and_name_the_file(art_dir):
    (art_dir / "vocab.txt").write_text("short\n")
    with pytest.raises(UsageError, match=r"vocab.txt is 6 bytes, manifest.json says \d+"):
        load_artifact(art_dir)
    (art_dir / "vocab.txt").unlink()
    with pytest.raises(UsageError, match="vocab.txt is missing, manifest.json lists it"):
        load_artifact(art_dir)
    art = load_artifact(art_dir, check_files=False)  # what inspect --verify reads, to report every file
    assert [c.status for c in verify_files(art) if c.name == "vocab.txt"] == ["missing"]


def test_a_same_size_change_is_caught_by_sha256_only(art_dir):
    p = art_dir / "model.onnx"
    data = bytearray(p.read_bytes())
    data[-50] ^= 1
    p.write_bytes(bytes(data))
    art = load_artifact(art_dir)  # sizes agree: loading is cheap and does not read every byte
    check_sizes(art)
    (bad,) = [c for c in verify_files(art) if c.status != "ok"]
    assert bad.name == "model.onnx" and bad.status == "changed" and "sha256" in bad.detail
    with pytest.raises(UsageError, match="model.onnx: changed .*so triton will not use it"):
        require_unchanged(art, "triton")


@pytest.mark.parametrize("files, field", [
    ({"model.onnx": 5}, "files['model.onnx']"),
    ({"model.onnx": {"bytes": "5", "sha256": "0"}}, "files['model.onnx']"),
    ({"/etc/hostname": {"bytes": 5, "sha256": "0"}}, "files['/etc/hostname']"),
])
def test_a_malformed_file_table_is_one_line(art_dir, files, field):
    _manifest(art_dir, files=files)
    with pytest.raises(UsageError, match=f"manifest.json: field {field!r}".replace("[", r"\[").replace("]", r"\]")):
        load_artifact(art_dir)


def test_a_model_file_outside_the_table_is_not_handed_on(art_dir):
    _manifest(art_dir, files={k: v for k, v in file_table(art_dir).items() if k != "model.onnx"})
    with pytest.raises(UsageError, match="model.onnx is not listed"):
        require_listed(load_artifact(art_dir), [art_dir / "model.onnx"], "triton")


def test_external_data_inside_the_artifact_is_found(art_dir):
    from exporter.onnx_file import save_with_external_data

    save_with_external_data(art_dir / "model.onnx")
    assert onnx_data_files(art_dir / "model.onnx", art_dir) == [art_dir / "model.onnx_data"]
    (art_dir / "model.onnx_data").unlink()
    with pytest.raises(UsageError, match="'model.onnx_data', which is missing"):
        onnx_data_files(art_dir / "model.onnx", art_dir)


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 10])
def test_a_model_onnx_that_does_not_parse_is_one_line(tmp_path, content):
    (tmp_path / "model.onnx").write_bytes(content)
    with pytest.raises(UsageError, match="model.onnx: not a valid ONNX model .*re-export it"):
        onnx_data_files(tmp_path / "model.onnx", tmp_path)


def test_config_sizes_must_be_integers(tiny_bert, tmp_path):
    d = tmp_path / "hf"
    shutil.copytree(tiny_bert, d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": True}))
    with pytest.raises(UsageError, match="config.json: field 'num_hidden_layers' is bool"):
        load_artifact(d)
