import json

import pytest

from runtimes.artifact import atomic_output_dir, dir_hash, load_artifact, task_from_config
from runtimes.errors import UsageError


def test_plain_hf_dir_is_an_artifact(tiny_bert, tiny_classifier):
    a = load_artifact(tiny_bert)
    assert (a.kind, a.task) == ("hf", "feature-extraction")
    assert load_artifact(tiny_classifier).task == "text-classification"
    assert a.size_bytes() > 0


@pytest.mark.parametrize("arch, task", [("BertModel", "feature-extraction"),
                                        ("BertForSequenceClassification", "text-classification"),
                                        ("RobertaForTokenClassification", "token-classification"),
                                        ("BertForMaskedLM", None)])
def test_task_from_architectures(arch, task):
    assert task_from_config({"architectures": [arch]}) == task


def test_missing_and_non_model_dirs(tmp_path):
    with pytest.raises(UsageError, match="no such directory"):
        load_artifact(tmp_path / "nope")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        load_artifact(tmp_path / "f.txt")
    with pytest.raises(UsageError, match="not a model directory"):
        load_artifact(tmp_path)


def test_bad_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        load_artifact(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "zip"}))
    with pytest.raises(UsageError, match="field 'kind'"):
        load_artifact(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "onnx", "model_file": "model.onnx"}))
    with pytest.raises(UsageError, match="file is missing"):
        load_artifact(tmp_path)


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out) as tmp:
            (tmp / "half.onnx").write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_needs_force_to_replace(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out, mark=True) as tmp:  # no manifest: the marker says enginewright wrote it
        (tmp / "a").write_text("1")
    with pytest.raises(UsageError, match="--force"):
        with atomic_output_dir(out):
            pass
    with atomic_output_dir(out, force=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_dir_hash_tracks_content(tmp_path):
    (tmp_path / "a").write_text("1")
    h1 = dir_hash(tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    assert dir_hash(tmp_path) == h1
    (tmp_path / "a").write_text("2")
    assert dir_hash(tmp_path) != h1


def test_a_full_disk_is_not_blamed_on_the_model(tmp_path):
    import errno

    from runtimes.pyt.loading import as_usage_error

    full = as_usage_error(tmp_path, OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "model.onnx")))
    assert str(full) == f"{tmp_path / 'model.onnx'}: no space left on device; free space or fix the permissions, then run again"
    assert "transformers cannot load this model" in str(as_usage_error(tmp_path, OSError("bad header")))
