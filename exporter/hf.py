"""Export a Hugging Face model directory to an ONNX artifact with optimum's exporter, then verify it."""

from __future__ import annotations

import os

from evaluation.compare import CompareConfig, run_compare
from evaluation.data import TextDataset, data_for_task
from evaluation.parity import Tolerance
from exporter.manifest import onnx_manifest
from exporter.optimum_run import optimum_to_onnx
from exporter.pooled_export import export_pooled
from exporter.qat_export import export_qat
from exporter.writer import ArtifactWriter, open_input
from runtimes.artifact import Artifact
from runtimes.errors import CheckFailed, UsageError
from runtimes.tasks import TASKS as _TASKS, get_task

TASKS = tuple(t.name for t in _TASKS if t.optimum_task)  # what optimum's exporter can export


def export_hf(
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    task: str | None = None,
    opset: int | None = None,
    external_data: bool = False,
    force: bool = False,
    tolerance: Tolerance = Tolerance(),
    data: TextDataset | None = None,
    max_length: int = 128,
    command: str | None = None,
    progress: bool = True,
    pooling: str | None = None,
    normalize: bool = False,
    graph: str | None = None,
) -> Artifact:
    """Export ``model_dir`` for ``task`` to ``out`` (``model.onnx``, tokenizer, config, manifest).

    Batch and sequence axes are dynamic; output names follow transformers' model classes. After
    export: ``onnx.checker`` (full), strict shape inference, and the same inputs through PyTorch and
    ONNX Runtime; the measured parity goes into the manifest. With ``pooling`` (``mean`` or ``cls``,
    feature-extraction only) the graph ends in ``sentence_embedding``, L2-normalised with ``normalize``.

    Raises:
        UsageError: not a Hugging Face model, unknown task, output exists without ``force``.
        CheckFailed: parity beyond ``tolerance`` (nothing is written).
    """
    src = open_input(model_dir, "hf", "export")
    if task is not None and task not in TASKS:
        raise UsageError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    task = task or src.task
    if task is None:
        raise UsageError(f"{src.path}: cannot tell the task from config.json 'architectures'; pass --task ({', '.join(TASKS)})")
    if opset is not None and not 14 <= opset <= 23:
        raise UsageError(f"--opset {opset}: choose an opset between 14 and 23")
    writer = ArtifactWriter(out, force=force, inputs=[src.path])
    src = Artifact(src.path, "hf", task, src.manifest)
    if pooling is not None:
        if pooling not in ("mean", "cls"):
            raise UsageError(f"--pooling {pooling!r}: choose mean or cls")
        if task != "feature-extraction":
            raise UsageError(f"--pooling needs --task feature-extraction, not {task}")
        return export_pooled(src, writer.out, pooling=pooling, normalize=normalize, opset=opset, external_data=external_data,
                             force=force, tolerance=tolerance, command=command)
    if normalize:
        raise UsageError("--normalize needs --pooling mean|cls")
    if src.manifest.get("qat"):
        return export_qat(src, writer.out, opset=opset, external_data=external_data, force=force,
                          tolerance=None if tolerance == Tolerance() else tolerance, command=command)
    if graph not in (None, "portable") and task != "text-generation":
        raise UsageError(f"--graph {graph} applies to text-generation models; {src.path} is {task}")
    if task == "text-generation":
        from exporter.llm_export import export_causal_lm

        return export_causal_lm(src, writer, opset=opset, external_data=external_data, tolerance=tolerance, data=data,
                                max_length=max_length, command=command, graph=graph or "portable")
    data = data_for_task(data, task)

    def fill(tmp):
        checks = optimum_to_onnx(src, tmp, get_task(task).optimum_task, opset=opset, external_data=external_data)
        outcome = run_compare(src, [Artifact(tmp, "onnx", task, {}, alias=writer.out.name)], data,
                              config=CompareConfig(batch_size=8, max_length=max_length, tolerance=tolerance),
                              progress=progress)
        if not outcome.passed:
            raise CheckFailed(f"export parity check failed, nothing written: {outcome.results[0]}".replace("\n", " |"))
        parity = outcome.report["candidates"][0]
        parity["artifact"] = str(writer.out)
        return onnx_manifest(
            tmp, task=task, source=src, command=command, checks=checks,
            options={"task": task, "opset": opset, "external_data": external_data, "max_length": max_length,
                     "tolerance": vars(tolerance), "exporter": "optimum-onnx main_export (library transformers)"},
            parity={"reference": outcome.report["reference"]["label"], "data": outcome.report["data"], **parity},
        )

    return writer.write(fill)

