"""``inspect`` (what an artifact is, where it came from, what was measured) and ``env`` (what this
machine will run fast), as text for people and as JSON for tools."""

from __future__ import annotations

import importlib.util
import json

from evaluation.machine import describe_machine, machine_line
from runtimes import load_artifact
from runtimes.artifact import library_versions


def describe_artifact(path) -> dict:
    """Kind, task, specs, sizes, lineage and measurements of an artifact (manifest-less HF dirs too)."""
    art = load_artifact(path)
    m = art.manifest
    info = {"path": str(art.path), "kind": art.kind, "task": art.task, "model_bytes": art.size_bytes(),
            "inputs": [s.describe() for s in art.inputs], "outputs": [s.describe() for s in art.outputs],
            "source": m.get("source"), "command": m.get("command"), "created": m.get("created"),
            "versions": m.get("versions")}
    if (art.path / "config.json").is_file():
        cfg = json.loads((art.path / "config.json").read_text(encoding="utf-8"))
        info["config"] = {k: cfg.get(k) for k in ("architectures", "model_type", "num_hidden_layers", "num_attention_heads",
                                                  "hidden_size", "intermediate_size", "pruned_heads") if k in cfg}
    parity = m.get("parity") or {}
    if parity.get("outputs"):
        info["parity"] = {"reference": parity.get("reference"), "passed": parity.get("passed"),
                          "outputs": {o["name"]: {"max_abs": o["max_abs"], "cos_min": o["cos_min"]} for o in parity["outputs"]}}
    elif "mean_cosine" in parity:
        info["parity"] = {"reference": parity.get("reference"), "mean_cosine": parity["mean_cosine"]}
    for key in ("eval", "before", "after", "compression", "sparsity", "qat", "optimization", "precision", "profiles",
                "tensorrt", "gpu"):
        if m.get(key) is not None:
            info[key] = m[key]
    if "quantization" in m:
        q = m["quantization"]
        info["quantization"] = (weight_only_summary(q) if str(q.get("kind", "")).startswith("weight-only") else
                                {k: q.get(k) for k in ("mode", "target", "format", "method", "per_channel", "reduce_range",
                                                       "cosine_loss", "float_nodes", "calibration") if k in q})
    return info


def weight_only_summary(q: dict) -> dict:
    """What ``quantize --mode weight-only`` did, from its manifest record: the recipe, how many MatMuls
    it took, what stayed in higher precision, the GGUF types carried over, the search's verdict."""
    out = {"kind": q.get("kind"), "matmuls": f"{q.get('quantized')} of {q.get('matmuls_with_constant_weights')} quantized",
           "kept_float": q.get("kept_float"), "kept_int8": q.get("kept_int8"), "accuracy_level": q.get("accuracy_level")}
    if q.get("accuracy_levels"):
        out["accuracy_levels"] = q["accuracy_levels"]
    if q.get("gguf"):
        out["gguf"] = {"source": q["gguf"].get("source"), "by_type": q["gguf"].get("by_type"), "float": q["gguf"].get("float")}
    search = q.get("weight_only")
    if search:
        out["search"] = {k: search[k] for k in ("method", "budget_ppl_increase", "counts", "ppl_change_built", "kl_mean_built")
                         if k in search}
    return out


def numbered_families(specs: list[str]) -> list[str]:
    """``name: type`` lines with one line per family of names that differ only in one index and share
    the type: ``past_key_values.{0..29}.key: float32[...]`` for thirty layers (an LLM's cache)."""
    import re

    families: dict[tuple, list[int]] = {}
    for spec in specs:
        m = re.search(r"\.(\d+)\.", spec.split(":", 1)[0])
        key = (spec[:m.start()], spec[m.end():]) if m else (spec, None)
        families.setdefault(key, []).append(int(m.group(1)) if m else 0)
    out = []
    for (head, tail), idx in families.items():
        if tail is None or len(idx) == 1:
            out.append(head if tail is None else f"{head}.{idx[0]}.{tail}")
        elif idx == list(range(idx[0], idx[0] + len(idx))):
            out.append(f"{head}.{{{idx[0]}..{idx[-1]}}}.{tail}")
        else:
            out.append(f"{head}.{{{','.join(map(str, idx))}}}.{tail}")
    return out


def artifact_text(info: dict) -> str:
    lines = [f"{info['path']}: {info['kind']} artifact, task {info['task']}, model {info['model_bytes'] / 2**20:.1f} MiB"]
    for key in ("inputs", "outputs"):
        if info[key]:
            lines.append(f"  {key}: " + "; ".join(numbered_families(info[key])))
    if info.get("config"):
        lines.append("  config: " + ", ".join(f"{k}={v}" for k, v in info["config"].items()))
    if info.get("source"):
        src = info["source"]
        lines.append(f"  made from: {src.get('path')} ({src.get('kind')}, {src.get('hash')})")
    if info.get("command"):
        lines.append(f"  by: {info['command']}  ({info.get('created')})")
    if info.get("parity"):
        lines.append(f"  parity: {json.dumps(info['parity'])}")
    for key in ("quantization", "optimization", "sparsity", "qat", "precision", "profiles", "tensorrt", "gpu"):
        if info.get(key) is not None:
            value = info[key]
            if key == "optimization":
                value = {k: value.get(k) for k in ("target", "fp16", "fused", "contrib_ops")}
            lines.append(f"  {key}: {json.dumps(value)}")
    for key in ("before", "after"):
        if info.get(key):
            e = info[key]["eval"]
            head = e.get("accuracy", e.get("entity_micro_f1"))
            lines.append(f"  {key}: {e['metric']} {head:.4f}, params {info[key]['params']:,}, "
                         f"encoder FLOPs (seq 128) {info[key]['encoder_flops_seq128']:,}")
    if info.get("eval") and not info.get("after"):
        e = info["eval"]
        if e.get("metric") == "perplexity":  # a fine-tuned causal LM: validation on the response tokens
            lines.append(f"  eval: perplexity {e['before']['perplexity']:.2f} -> {e['after']['perplexity']:.2f} "
                         f"(loss {e['before']['loss']:.4f} -> {e['after']['loss']:.4f}, {e['tokens']} response tokens)")
        else:
            lines.append(f"  eval: {e['metric']} {e.get('accuracy', e.get('entity_micro_f1')):.4f}")
    return "\n".join(lines)


def verify_text(checks) -> str:
    """``inspect --verify``'s lines: each listed file ok, changed or missing, then the verdict."""
    if not checks:
        return "verify: the manifest lists no files (a plain model directory, or a hand-written or older manifest): nothing to verify"
    bad = [c for c in checks if c.status != "ok"]
    lines = [f"  {c}" for c in checks]
    verdict = (f"verify: FAILED, {len(bad)} of {len(checks)} files changed or missing: {', '.join(c.name for c in bad)}"
               if bad else f"verify: ok, {len(checks)} files as recorded (size and sha256)")
    return "\n".join(["files:", *lines, verdict])


def describe_env() -> dict:
    """Library versions, ONNX Runtime providers, CUDA and TensorRT availability, CPU features."""
    env = {"machine": describe_machine(), "versions": library_versions()}
    # both wheels install the module `onnxruntime`
    env["onnxruntime_distributions"] = {n: v for n, v in env["versions"].items() if n in ("onnxruntime", "onnxruntime-gpu")}
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime as ort

        env["onnxruntime_providers"] = ort.get_available_providers()
    else:
        env["onnxruntime_providers"] = []
    import torch

    env["torch_cuda"] = {"available": torch.cuda.is_available(), "cuda": torch.version.cuda,
                         "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    env["tensorrt_installed"] = importlib.util.find_spec("tensorrt") is not None
    return env


def env_text(env: dict) -> str:
    m = env["machine"]
    feats = set(m["cpu_features"])
    int8 = ("VNNI present: INT8 matrix products run fast" if feats & {"avx512_vnni", "avx_vnni", "amx_int8"}
            else "no VNNI: INT8 gains are smaller; quantize --select measures whether reduce_range pays")
    lines = [
        f"machine: {machine_line(m)}",
        f"  CPU features: {', '.join(m['cpu_features']) or 'none of AVX2/AVX-512/VNNI/AMX'} ({int8})",
        "versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
        f"onnxruntime providers: {', '.join(env['onnxruntime_providers']) or 'none (onnxruntime is not installed)'}",
        f"torch CUDA: {'available' if env['torch_cuda']['available'] else 'not available'}"
        + (f" (CUDA {env['torch_cuda']['cuda']}, {', '.join(env['torch_cuda']['devices'])})" if env["torch_cuda"]["available"] else ""),
        f"TensorRT: {'installed' if env['tensorrt_installed'] else 'not installed (GPU machines only; README, GPU install)'}",
    ]
    if len(env.get("onnxruntime_distributions") or {}) > 1:
        lines.append("WARNING: onnxruntime and onnxruntime-gpu are both installed and overwrite each other's files: "
                     "pip uninstall -y onnxruntime onnxruntime-gpu, then install one (README, 'GPU install')")
    return "\n".join(lines)
