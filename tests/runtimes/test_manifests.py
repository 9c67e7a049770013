"""Manifest types: one per artifact kind, written as before, checked field by field when read."""

import json

import pytest

from runtimes.artifact import load_artifact
from runtimes.errors import UsageError
from runtimes.manifests import SCHEMA_VERSION, EngineManifest, HfManifest, OnnxManifest, read_manifest
from runtimes.trt import engine_manifest


def test_each_kind_round_trips_with_its_stage_sections():
    m = OnnxManifest(task="feature-extraction", opset=17, inputs=[{"name": "input_ids", "dtype": "int64",
                     "shape": ["batch_size", "sequence_length"]}], options={"opset": 17}, parity={"passed": True}
                     ).with_extra(optimization={"target": "cpu"}).with_files({"model.onnx": {"bytes": 1, "sha256": "x"}})
    d = m.to_dict()
    assert list(d) == ["schema_version", "kind", "task", "model_file", "opset", "external_data", "inputs", "outputs",
                       "source", "command", "options", "versions", "created", "checks", "parity", "files", "optimization"]
    assert d["kind"] == "onnx" and d["schema_version"] == SCHEMA_VERSION
    assert read_manifest(json.loads(json.dumps(d))) == m
    h = HfManifest(task="text-classification", labels=["a"], extra={"eval": {"accuracy": 1.0}})
    assert list(h.to_dict())[-4:] == ["eval", "versions", "created", "files"]
    assert HfManifest.from_dict(h.to_dict()) == h


def test_engine_manifest_keeps_its_keys():
    d = engine_manifest(tensorrt_version="10.0.1.6", gpu={"name": "G", "compute_capability": "8.6"}, profiles=[
        {"x": ((1, 1), (8, 128), (32, 512))}], precision="fp16", builder_options={}, onnx_sha256="abc")
    assert list(d) == ["schema_version", "kind", "task", "model_file", "inputs", "outputs", "profiles", "precision",
                       "tensorrt", "gpu", "builder", "onnx_sha256", "source", "cache_key", "command", "versions", "created"]
    assert d["profiles"] == [{"x": [[1, 1], [8, 128], [32, 512]]}] and d["gpu"]["compute_capability"] == "8.6"
    assert EngineManifest.from_dict(d).to_dict() == d


@pytest.mark.parametrize("field, value, expected", [
    ("opset", "17", "an integer"), ("external_data", 1, "true or false"), ("inputs", {}, "a list"),
    ("task", 3, "a string or null"), ("options", [], "an object"),
])
def test_a_field_of_the_wrong_type_is_one_line_naming_it(tmp_path, field, value, expected):
    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "onnx", "model_file": "model.onnx", field: value}))
    with pytest.raises(UsageError, match=f"manifest.json: field '{field}' is .*; expected {expected}") as e:
        load_artifact(tmp_path)
    assert "\n" not in str(e.value)


def test_a_newer_schema_is_refused_and_an_older_partial_manifest_loads(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "onnx", "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(UsageError, match="field 'schema_version'"):
        load_artifact(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "onnx", "model_file": "model.onnx", "custom": 1}))
    art = load_artifact(tmp_path)
    assert art.kind == "onnx" and art.manifest["custom"] == 1
    assert OnnxManifest.from_dict(art.manifest).extra == {"custom": 1}


def test_the_kind_must_match_the_type():
    with pytest.raises(UsageError, match="field 'kind' is 'onnx'; expected 'trt'"):
        EngineManifest.from_dict({"kind": "onnx"})
    with pytest.raises(UsageError, match="field 'kind'"):
        read_manifest({"kind": "zip"})
