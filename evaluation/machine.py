"""Describe the machine a measurement ran on (CPU, cores, features, memory, GPU)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

from runtimes import usable_cores

_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "fma")


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def _gpus() -> list[dict]:
    """GPUs by nvidia-smi (no CUDA context is created)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,compute_cap", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4:
            gpus.append({"name": parts[0], "memory": parts[1], "driver": parts[2], "compute_capability": parts[3]})
    return gpus


def instruction_set(features) -> str:
    """The vector instructions INT8 and FP32 kernels can use, in words: ``AVX2, AVX-512, VNNI
    (AVX-512 VNNI)``, ``AVX2, no VNNI``... VNNI (and AMX) decide how fast INT8 products run."""
    f = set(features)
    parts = ["AVX2" if "avx2" in f else "no AVX2"] + (["AVX-512"] if "avx512f" in f else [])
    vnni = [name for flag, name in (("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI")) if flag in f]
    parts.append(f"VNNI ({', '.join(vnni)})" if vnni else "no VNNI")
    return ", ".join(parts + (["AMX-INT8"] if "amx_int8" in f else []))


def describe_machine() -> dict:
    import psutil

    model, flags = _cpuinfo()
    return {
        "cpu": model,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": usable_cores(),
        "cpu_features": [f for f in _FLAGS if f in flags],
        "instruction_set": instruction_set(flags),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "gpus": _gpus(),
    }


def machine_line(m: dict) -> str:
    gpu = ", ".join(g["name"] for g in m["gpus"]) or "no GPU"
    isa = m.get("instruction_set") or instruction_set(m["cpu_features"])
    return f"{m['cpu']} ({m['usable_cores']} usable cores; instruction set: {isa}), {m['memory_gib']} GiB, {gpu}"
