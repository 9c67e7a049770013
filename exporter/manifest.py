"""The manifest of an ONNX artifact."""

from __future__ import annotations

from pathlib import Path

from exporter.onnx_file import graph_specs, uses_external_data
from runtimes.artifact import SCHEMA_VERSION, Artifact, dir_hash, file_table, library_versions, now_iso
from runtimes.specs import specs_to_list
from runtimes.tasks import processor_files

# Files beside the model that later stages need: the config and what each task's feeds are built from
COMPANION_FILES = ("config.json", *processor_files())


def onnx_manifest(tmp: Path, *, task: str | None, source: Artifact | dict, command: str | None, checks: dict,
                  options: dict, parity: dict) -> dict:
    """Manifest for the ONNX artifact being written in ``tmp`` (hashes computed from its files)."""
    model = tmp / "model.onnx"
    inputs, outputs, opset = graph_specs(model)
    if isinstance(source, Artifact):
        source = {"path": str(source.path.resolve()), "kind": source.kind, "hash": dir_hash(source.path)}
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "onnx",
        "task": task,
        "model_file": "model.onnx",
        "opset": opset,
        "external_data": uses_external_data(model),
        "inputs": specs_to_list(inputs),
        "outputs": specs_to_list(outputs),
        "source": source,
        "command": command,
        "options": options,
        "versions": library_versions(),
        "created": now_iso(),
        "checks": checks,
        "parity": parity,
        "files": file_table(tmp),
    }
