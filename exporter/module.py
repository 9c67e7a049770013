"""Export any ``torch.nn.Module`` given example inputs, then verify it on ONNX Runtime."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

from evaluation.parity import RowCollector, Tolerance, compare_collected
from exporter.manifest import onnx_manifest
from exporter.onnx_file import check_onnx, save_with_external_data
from exporter.quiet import quiet_export
from exporter.writer import ArtifactWriter
from runtimes import open_runner
from runtimes.artifact import Artifact
from runtimes.errors import CheckFailed, UsageError

if TYPE_CHECKING:
    import torch


_EXTERNAL_ABOVE = 1_800_000_000  # bytes of parameters; headroom below protobuf's 2 GiB for the graph


def export_module(
    module,
    example_inputs: Mapping[str, "torch.Tensor"],
    out: str | os.PathLike,
    *,
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    opset: int = 18,
    external_data: bool = False,
    dynamo: bool = True,
    force: bool = False,
    tolerance: Tolerance = Tolerance(),
    task: str | None = None,
    command: str | None = None,
    source: Artifact | None = None,
    extra_files: Sequence[Path] = (),
    extra_manifest: Mapping | None = None,
    parity_graph_optimization: str = "all",
    rewrite: Callable[[Path], Mapping] | None = None,
    companions_from: Path | None = None,
) -> Artifact:
    """Export ``module`` called as ``module(**example_inputs)`` to an ONNX artifact at ``out``.

    ``dynamic_axes`` maps input and output names to ``{axis: dim name}``; by default axis 0 of every
    input and output is ``batch_size``. ``dynamo`` picks torch.onnx's exporter (``torch.export``
    based, the default) or the TorchScript one. The export is checked with ``onnx.checker``, strict
    shape inference, and the example inputs through PyTorch and ONNX Runtime. ``extra_files``
    and the companion files (tokenizer, config) of ``companions_from`` are copied into the artifact;
    ``source`` is recorded as its origin.
    ``rewrite(model_path)`` may rewrite the exported graph in place before the checks; what it
    returns goes into the manifest as ``rewrite``.

    Raises:
        UsageError: output exists without ``force``; outputs not named.
        CheckFailed: parity beyond ``tolerance`` (nothing is written).
    """
    import torch

    writer = ArtifactWriter(out, force=force, inputs=[source.path if source is not None else None,
                                                        companions_from, *extra_files])
    names = list(example_inputs)
    output_names = list(output_names)
    if not output_names:
        raise UsageError("export_module: name the outputs (output_names)")
    if dynamic_axes is None:
        dynamic_axes = {n: {0: "batch_size"} for n in names + output_names}
    module = module.eval()
    with torch.inference_mode():
        ref = module(**example_inputs)
    ref = _as_dict(ref, output_names)

    # protobuf caps a file at 2 GiB: larger weights must go to external data (the TorchScript
    # exporter decides that itself; the dynamo one is told)
    large = sum(p.numel() * p.element_size() for p in module.parameters()) > _EXTERNAL_ABOVE

    def fill(tmp):
        model_path = tmp / "model.onnx"
        with quiet_export():
            torch.onnx.export(module, (), str(model_path), kwargs=dict(example_inputs), input_names=names,
                              output_names=output_names, dynamic_axes=dict(dynamic_axes), opset_version=opset,
                              dynamo=dynamo, **({"external_data": large} if dynamo else {}))
        rewritten = dict(rewrite(model_path)) if rewrite is not None else None
        if external_data:
            save_with_external_data(model_path)
        for f in extra_files:
            shutil.copy2(f, tmp / Path(f).name)
        checks = check_onnx(model_path)
        feeds = {k: v.detach().cpu().numpy() for k, v in example_inputs.items()}
        art = Artifact(tmp, "onnx", task, {}, alias=writer.out.name)
        with open_runner(art, "onnxruntime:cpu", graph_optimization=parity_graph_optimization) as runner:
            got = runner.infer({s.name: feeds[s.name] for s in runner.input_specs()})
            specs = runner.output_specs()
        r, c = RowCollector(specs), RowCollector(specs)
        r.add(ref, None)
        c.add(got, None)
        result = compare_collected("torch.nn.Module", "model.onnx @ onnxruntime:cpu", r, c, default=tolerance)
        if not result:
            raise CheckFailed(f"export parity check failed, nothing written: {result}".replace("\n", " |"))
        return onnx_manifest(
            tmp, task=task,
            source=source or {"path": None, "kind": "torch.nn.Module", "hash": None, "class": type(module).__qualname__},
            command=command, checks=checks,
            options={"opset": opset, "external_data": external_data, "dynamo": dynamo, "dynamic_axes":
                     {k: {str(a): n for a, n in v.items()} for k, v in dynamic_axes.items()}, "tolerance": vars(tolerance)},
            parity={**result.to_dict(), "onnxruntime_graph_optimization": parity_graph_optimization},
            **({"rewrite": rewritten} if rewritten is not None else {}), **(extra_manifest or {}),
        )

    return writer.write(fill, companions_from=companions_from)


def _as_dict(ref, output_names: Sequence[str]) -> dict[str, np.ndarray]:
    if isinstance(ref, Mapping):
        values = [ref[k] for k in output_names]
    elif isinstance(ref, (tuple, list)):
        values = list(ref)
    else:
        values = [ref]
    if len(values) != len(output_names):
        raise UsageError(f"export_module: the module returns {len(values)} outputs but {len(output_names)} names were given")
    return {n: v.detach().float().cpu().numpy() for n, v in zip(output_names, values)}


def load_eager(src: Artifact, auto_class):
    """``auto_class.from_pretrained`` on ``src`` with eager attention (the form the TorchScript
    exporter traces), in eval mode; a directory transformers cannot load is a one-line UsageError."""
    from runtimes.pyt.loading import as_usage_error, hf_load_errors

    try:
        return auto_class.from_pretrained(str(src.path), local_files_only=True, trust_remote_code=False,
                                          attn_implementation="eager").eval()
    except hf_load_errors() as e:
        raise as_usage_error(src.path, e) from None


def export_hf_head(src: Artifact, model, head, out: Path, *, output_name: str, output_axes: Mapping[int, str],
                   opset: int | None, external_data: bool, force: bool, tolerance: Tolerance, task: str | None,
                   command: str | None, extra_manifest: Mapping, parity_graph_optimization: str = "all",
                   min_opset: int = 14, rewrite: Callable[[Path], Mapping] | None = None) -> Artifact:
    """Export a loaded transformers ``model`` with ``head(model_output, attention_mask)`` on top as
    one graph output (TorchScript exporter, which also writes fake quantization as Q/DQ), with the
    source artifact's tokenizer and config beside it and ``src`` recorded as its origin."""
    import torch

    from evaluation.data import load_texts
    from runtimes.specs import TensorSpec
    from runtimes.tasks import get_task

    text = get_task(task)  # heads on text encoders: the forward below takes the tokenizer's inputs
    names = text.model_input_names(model)
    enc = text.encode(text.load_processor(src.path), load_texts(None).take(4), max_length=32)
    feeds = text.feeds_for(enc, [TensorSpec(n, "int64", ()) for n in names], str(src.path))
    example = {n: torch.from_numpy(v) for n, v in feeds.items()}

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask=None, token_type_ids=None):
            given = {"attention_mask": attention_mask, "token_type_ids": token_type_ids}
            return head(self.model(input_ids=input_ids, **{k: v for k, v in given.items() if k in names}), attention_mask)

    axes = {n: {0: "batch_size", 1: "sequence_length"} for n in names}
    axes[output_name] = dict(output_axes)
    return export_module(
        Head(), example, out, output_names=[output_name], dynamic_axes=axes, opset=max(opset or 17, min_opset),
        external_data=external_data, dynamo=False, force=force, tolerance=tolerance, task=task, command=command,
        source=src, companions_from=src.path,
        extra_manifest=extra_manifest, parity_graph_optimization=parity_graph_optimization, rewrite=rewrite,
    )

