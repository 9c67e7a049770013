"""``optimize``: graph-level fusion of an ONNX artifact for a target runtime, checked for parity.

- ``cpu``/``cuda``: ONNX Runtime's transformer optimizer for BERT-family encoders (Attention,
  SkipLayerNormalization, BiasGelu, EmbedLayerNormalization; model type, heads and hidden size
  read from the artifact's config), ONNX Runtime's offline basic optimizations for other models.
  These use ``com.microsoft`` contrib operators that only ONNX Runtime runs.
- ``tensorrt``: standard ONNX operators only (constant folding and simplification by onnxscript's
  optimizer), since TensorRT's parser does not read contrib operators.
- ``--fp16``: weights and compute in FP16, inputs and outputs kept FP32 unless asked; how an FP16
  TensorRT engine is made, since TensorRT 11 takes precision from the graph.
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path

from evaluation.compare import CompareConfig, run_compare
from evaluation.data import TextDataset, load_texts
from evaluation.parity import Tolerance
from exporter.manifest import onnx_manifest
from exporter.onnx_file import check_onnx, save_model
from exporter.passes import CPU_FUSION_CLEANUP, run_passes
from exporter.writer import ArtifactWriter, open_input
from runtimes.artifact import Artifact
from runtimes.errors import CheckFailed, UsageError

TARGETS = ("cpu", "cuda", "tensorrt")
# model types ONNX Runtime's transformer optimizer fuses as BERT-style encoders
_ORT_MODEL_TYPES = {"bert": "bert", "roberta": "bert", "distilbert": "bert", "xlm-roberta": "bert",
                    "electra": "bert", "camembert": "bert", "mpnet": "bert"}
DEFAULT_TOLERANCE = {False: Tolerance(atol=1e-3, rtol=1e-3, min_cosine=0.9999),
                     True: Tolerance(atol=5e-2, rtol=5e-2, min_cosine=0.999)}
# a decoder's logits against its input (teacher-forced and one decode step): export's own tolerance
LLM_DEFAULT_TOLERANCE = Tolerance(atol=1e-3, rtol=0.0, min_top1=0.99)


def op_counts(path: Path) -> dict[str, int]:
    """``{domain::op or op: count}`` over the main graph."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return dict(collections.Counter(f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                                    for n in model.graph.node).most_common())


def contrib_ops(counts: dict[str, int]) -> list[str]:
    return sorted(k for k in counts if "::" in k)


def _config(art: Artifact) -> dict:
    p = art.path / "config.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}


# ONNX Runtime 1.32's CPU SkipLayerNormalization kernel measured about 4x slower than the Add and
# LayerNormalization it replaces (all-MiniLM-L6-v2, batch 8, sequence 128, 2 cores: 12.9 ms against
# 3.0 ms per run in ORT's profiler). ORT fuses MatMul -> Add(bias) -> Add(residual) -> LayerNormalization
# back into it when it loads a model, so for the CPU each SkipLayerNormalization becomes
# Add(input, skip) -> Add(bias) -> LayerNormalization, an order its load-time fusion leaves alone (a test
# checks that against the installed onnxruntime).
SKIP_LAYER_NORM_NOTE = ("SkipLayerNormalization written as Add(input, skip) -> Add(bias) -> LayerNormalization for the "
                        "CPU: ONNX Runtime's CPU kernel for it measured slower (README, 'optimize')")


def _ort_fusion(src: Path, dst: Path, cfg: dict, target: str, fp16: bool, keep_io_types: bool,
                skip_layer_norm: bool) -> dict:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = _ORT_MODEL_TYPES[cfg["model_type"]]
    # heads and hidden size from the config; 0 (detect per node) for a pruned model, whose layers differ
    pruned = bool(cfg.get("pruned_heads"))
    num_heads = 0 if pruned else int(cfg.get("num_attention_heads", 0))
    hidden = 0 if pruned else int(cfg.get("hidden_size", 0))
    model = optimize_model(str(src), model_type=model_type, num_heads=num_heads, hidden_size=hidden,
                           opt_level=1 if target == "cpu" else 0, use_gpu=target == "cuda",
                           optimization_options=FusionOptions(model_type))
    unfused = 0 if skip_layer_norm else run_passes(CPU_FUSION_CLEANUP, model.model).count
    if fp16:
        model.convert_float_to_float16(keep_io_types=keep_io_types)
    model.save_model_to_file(str(dst), use_external_data_format=_needs_external(src))
    return {"tool": "onnxruntime.transformers.optimizer", "model_type": model_type, "num_heads": num_heads,
            "hidden_size": hidden, "fused": {k: v for k, v in model.get_fused_operator_statistics().items() if v},
            "skip_layer_norm": skip_layer_norm,
            **({} if skip_layer_norm else {"skip_layer_norm_unfused": unfused, "note": SKIP_LAYER_NORM_NOTE})}


def _ort_offline(src: Path, dst: Path) -> dict:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    return {"tool": "onnxruntime offline optimization", "level": "basic"}


def _standard_ops(src: Path, dst: Path, fp16: bool, keep_io_types: bool) -> dict:
    import onnx
    import onnxscript.optimizer

    model = onnx.load(str(src))
    model = onnxscript.optimizer.optimize(model)
    if fp16:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(model, keep_io_types=keep_io_types, disable_shape_infer=False)
    save_model(model, dst, _needs_external(src))
    return {"tool": "onnxscript.optimizer (constant folding, simplification)"}


def _needs_external(path: Path) -> bool:
    return path.stat().st_size > 1_800_000_000 or any(path.parent.glob(path.name + "*data"))


def optimize(
    artifact: str | os.PathLike | Artifact,
    out: str | os.PathLike,
    *,
    target: str = "cpu",
    fp16: bool = False,
    keep_io_types: bool = True,
    force: bool = False,
    data: TextDataset | None = None,
    tolerance: Tolerance | None = None,
    command: str | None = None,
    progress: bool = True,
    skip_layer_norm: bool | None = None,
) -> Artifact:
    """Fuse and simplify an ONNX artifact for ``target``; parity against the input goes into the manifest.

    ``skip_layer_norm`` fuses residual Add + LayerNormalization into ONNX Runtime's
    SkipLayerNormalization (BERT-family models on ``cpu``/``cuda``); by default only for ``cuda``,
    since on the CPU that kernel measured slower than what it replaces.

    Raises:
        UsageError: not an ONNX artifact, unknown target, output exists without ``force``.
        CheckFailed: parity against the input beyond ``tolerance`` (nothing is written).
    """
    if target not in TARGETS:
        raise UsageError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    src = open_input(artifact, "onnx", "optimize")
    writer = ArtifactWriter(out, force=force, inputs=[src.path])
    before = op_counts(src.model_file)
    if target == "tensorrt" and contrib_ops(before):
        raise UsageError(f"{src.path}: has ONNX Runtime contrib operators {contrib_ops(before)} that TensorRT cannot parse; "
                         "optimize the plain export (enginewright export output) for --target tensorrt")
    if fp16 and src.task == "text-generation":
        raise UsageError(f"{src.path}: --fp16 of a decoder is not supported yet (ONNX Runtime's float16 converter leaves "
                         "its KV-cache graph unsorted); optimize it in FP32")
    tolerance = tolerance or (LLM_DEFAULT_TOLERANCE if src.task == "text-generation" else DEFAULT_TOLERANCE[fp16])
    cfg = _config(src)

    def fill(tmp):
        dst = tmp / "model.onnx"
        if target == "tensorrt":
            info = _standard_ops(src.model_file, dst, fp16, keep_io_types)
        elif cfg.get("model_type") in _ORT_MODEL_TYPES:
            info = _ort_fusion(src.model_file, dst, cfg, target, fp16, keep_io_types,
                               target != "cpu" if skip_layer_norm is None else skip_layer_norm)
        else:
            if fp16:
                raise UsageError(f"{src.path}: --fp16 for a non-BERT model on {target} is not supported yet; use --target tensorrt")
            info = _ort_offline(src.model_file, dst)
        after = op_counts(dst)
        if target == "tensorrt" and contrib_ops(after):
            raise CheckFailed(f"standard-op optimization produced contrib operators {contrib_ops(after)}; please report this")
        checks = check_onnx(dst) if not contrib_ops(after) else {"onnx_checker": "skipped: contrib operators"}
        parity = _parity(src, Artifact(tmp, "onnx", src.task, {}, alias=writer.out.name), data, tolerance, progress)
        return onnx_manifest(
            tmp, task=src.task, source=src, command=command, checks=checks,
            options={"target": target, "fp16": fp16, "keep_io_types": keep_io_types, "tolerance": vars(tolerance)},
            parity=parity, optimization={**info, "target": target, "fp16": fp16, "ops_before": before,
                                         "ops_after": after, "contrib_ops": contrib_ops(after)},
        )

    return writer.write(fill, companions_from=src.path)


def _llm_parity(src: Artifact, cand: Artifact, data: TextDataset | None, tol: Tolerance) -> dict:
    from evaluation.data import data_for_task
    from exporter.llm_export import llm_parity
    from runtimes.tasks import get_task

    data = data_for_task(data, get_task(src.task))
    result, reasons = llm_parity(src, cand, data, tolerance=tol, ref_runtime="onnxruntime:cpu")
    if reasons:
        raise CheckFailed(f"optimized graph differs from its input beyond tolerance, nothing written: {'; '.join(reasons)}")
    return {"reference": "onnxruntime:cpu (the input)", "data": data.describe(),
            "kind": "teacher-forced prefill + one decode step", "tolerance": vars(tol), **result}


def _parity(src: Artifact, cand: Artifact, data: TextDataset | None, tol: Tolerance, progress: bool) -> dict:
    """Parity of the optimized graph against its input on ONNX Runtime CPU (a decoder: teacher-forced
    logits and one decode step through the cache, as export checks it)."""
    if src.task == "text-generation":
        return _llm_parity(src, cand, data, tol)
    outcome = run_compare(src, [cand], data or load_texts(None), config=CompareConfig(batch_size=8, tolerance=tol),
                          progress=progress)
    if not outcome.passed:
        raise CheckFailed(f"optimized graph differs from its input beyond tolerance, nothing written: {outcome.results[0]}".replace("\n", " |"))
    return {"reference": outcome.report["reference"]["label"], "data": outcome.report["data"], **outcome.report["candidates"][0]}
