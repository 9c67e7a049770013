"""The manifest of an ONNX artifact, and the files beside a model that later stages need."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from exporter.onnx_file import graph_specs, uses_external_data
from runtimes.artifact import Artifact, source_record
from runtimes.manifests import OnnxManifest
from runtimes.specs import specs_to_list
from runtimes.tasks import processor_files

# Files beside the model that later stages need: the config and what each task's feeds are built from
COMPANION_FILES = ("config.json", *processor_files())


def onnx_manifest(tmp: Path, *, task: str | None, source: Artifact | Mapping, command: str | None, checks: Mapping,
                  options: Mapping, parity: Mapping | None, **sections) -> OnnxManifest:
    """Manifest for the ONNX artifact being written in ``tmp`` (specs and opset read from its
    ``model.onnx``); ``sections`` are stage-specific entries (``optimization``, ``quantization``...).
    The file table is added by the writer."""
    model = tmp / "model.onnx"
    inputs, outputs, opset = graph_specs(model)
    return OnnxManifest(
        task=task, model_file="model.onnx", opset=opset, external_data=uses_external_data(model),
        inputs=specs_to_list(inputs), outputs=specs_to_list(outputs),
        source=source_record(source) if isinstance(source, Artifact) else dict(source),
        command=command, options=dict(options), checks=dict(checks), parity=parity, extra=sections,
    )
