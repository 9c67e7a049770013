"""Export a causal language model with its KV cache (optimum's ``text-generation-with-past``: one
graph for prefill and decode), then check it against PyTorch: the prefill logits at every real
position and one decode step through the cache, with teacher-forced top-1 agreement."""

from __future__ import annotations


from evaluation.data import TextDataset, data_for_task
from evaluation.llm_metrics import reference_pass, score_candidate
from evaluation.parity import Tolerance
from exporter.manifest import onnx_manifest
from exporter.decoder_graph import write_decoder_graph
from exporter.onnx_file import check_onnx
from exporter.optimum_run import optimum_to_onnx
from exporter.writer import ArtifactWriter, copy_companions
from runtimes import open_runner
from runtimes.artifact import Artifact
from runtimes.errors import CheckFailed, UsageError
from runtimes.tasks import get_task

# FP32 logits of a real LLM reach magnitudes of 20-40; 1e-3 absolute is the export target
LLM_TOLERANCE = Tolerance(atol=1e-3, rtol=0.0, min_top1=0.99)
TASK = "text-generation"


def llm_parity(ref: Artifact, cand: Artifact, data: TextDataset, *, tolerance: Tolerance, max_length: int = 64,
               batch_size: int = 4, ref_runtime: str = "torch:cpu") -> tuple[dict, list[str]]:
    """Teacher-forced parity of ``cand`` (ONNX Runtime CPU) against ``ref`` (on ``ref_runtime``) on
    ``data``; returns the numbers and the reasons it fails (empty: it passes)."""
    task = get_task(TASK)
    limit = task.max_sequence(ref.path)
    if limit is not None:  # the decode step takes one position more than the longest prompt
        max_length = min(max_length, limit - 1)
    tokenizer = task.load_processor(ref.path)
    encoded = task.encode_batches(tokenizer, data, batch_size, max_length=max_length)
    with open_runner(ref, ref_runtime) as runner:
        reference = reference_pass(runner, encoded)
    with open_runner(cand, "onnxruntime:cpu") as runner:
        stats = score_candidate(runner, encoded, reference, atol=tolerance.atol, rtol=tolerance.rtol)
    result = stats.to_dict(reference.vocab)
    result["reference_perplexity"] = reference.stats.perplexity
    reasons = []
    if stats.over_tol:
        reasons.append(f"prefill logits: {stats.over_tol} elements beyond atol {tolerance.atol:g} + rtol {tolerance.rtol:g} "
                       f"(max abs {stats.max_abs:.3g})")
    if stats.decode_max_abs > tolerance.atol + tolerance.rtol * 100:
        reasons.append(f"decode step logits: max abs {stats.decode_max_abs:.3g} beyond atol {tolerance.atol:g}")
    min_top1 = tolerance.min_top1 if tolerance.min_top1 is not None else LLM_TOLERANCE.min_top1
    if result["top1_agreement"] < min_top1:
        reasons.append(f"teacher-forced top-1 agreement {result['top1_agreement']:.4f} below {min_top1:g}")
    return result, reasons


GRAPHS = ("portable", "cpu")


def export_causal_lm(src: Artifact, writer: ArtifactWriter, *, opset: int | None, external_data: bool,
                     tolerance: Tolerance, data: TextDataset | None, max_length: int, command: str | None,
                     graph: str = "portable") -> Artifact:
    """Export ``src`` (a causal LM directory) with its KV cache to ``writer``'s output and check it.

    ``graph``: ``portable``, optimum's export (standard ONNX ops; the TensorRT route starts here), or
    ``cpu``, the project's compact Llama-family graph with ONNX Runtime's fused CPU kernels
    (``exporter/decoder_graph.py``). Both speak the task's IO contract and pass the same check.

    Raises:
        UsageError: transformers cannot load the model, or the tokenizer is missing.
        CheckFailed: parity beyond the tolerance (nothing is written).
    """
    task = get_task(TASK)
    if graph not in GRAPHS:
        raise UsageError(f"--graph {graph!r}: choose one of {list(GRAPHS)}")
    task.load_processor(src.path)  # a directory without a tokenizer fails here, before the export
    if graph == "cpu":
        from transformers import AutoConfig

        from exporter.decoder_graph import supports

        reason = supports(AutoConfig.from_pretrained(src.path, trust_remote_code=False))
        if reason:
            raise UsageError(f"{src.path}: --graph cpu: {reason}; use --graph portable")
        if opset is not None and opset < 23:
            raise UsageError(f"--graph cpu writes opset 23 (RMSNormalization); --opset {opset} is below it")
    tolerance = LLM_TOLERANCE if tolerance == Tolerance() else tolerance
    data = data_for_task(data, task)

    def fill(tmp):
        if graph == "cpu":
            built = write_decoder_graph(src.path, tmp, external_data=external_data)
            copy_companions(src.path, tmp)
            checks = check_onnx(tmp / "model.onnx")
            exporter = f"enginewright decoder graph ({built['nodes']} nodes, ONNX Runtime CPU kernels)"
        else:
            checks = optimum_to_onnx(src, tmp, task.optimum_task, opset=opset, external_data=external_data)
            exporter = f"optimum-onnx main_export (task {task.optimum_task})"
        cand = Artifact(tmp, "onnx", TASK, {}, alias=writer.out.name)
        parity, reasons = llm_parity(src, cand, data, tolerance=tolerance, max_length=max_length)
        if reasons:
            raise CheckFailed(f"export parity check failed, nothing written: {'; '.join(reasons)}")
        return onnx_manifest(
            tmp, task=TASK, source=src, command=command, checks=checks,
            options={"task": TASK, "opset": opset, "external_data": external_data, "max_length": max_length,
                     "tolerance": vars(tolerance), "kv_cache": True, "graph": graph, "exporter": exporter},
            parity={"reference": "torch:cpu", "data": data.describe(), "kind": "teacher-forced prefill + one decode step",
                    "artifact": str(writer.out), **parity},
        )

    return writer.write(fill)
