# GPU image: TensorRT, CUDA and cuDNN from NVIDIA's TensorRT container, the project installed as in
# `make install` with onnxruntime-gpu in place of onnxruntime (the `cpu` extra). Not built on the development machines
# (no Docker engine, no GPU); see README, "Docker".
#   docker build -f docker/gpu.Dockerfile -t enginewright:gpu .
#   docker run --rm --gpus all -v $PWD/runs:/opt/enginewright/runs enginewright:gpu build runs/onnx -o runs/engine
#   docker run --rm --gpus all -v $PWD/runs:/opt/enginewright/runs -v $PWD/../shared:/opt/shared:ro \
#       --entrypoint bash enginewright:gpu benchmarks/gpu_check.sh      (results in ./runs/gpu_check)
#
# 26.05 is the last TensorRT container with TensorRT 10 (10.16.1, CUDA 13.2, Python 3.12); 26.06 and
# later ship TensorRT 11. It has to stay on 10: PyPI's onnxruntime-gpu is a CUDA 13 build whose
# TensorRT EP links libnvinfer.so.10, and torch==2.13.0 from PyPI is a CUDA 13.0 build. Host driver:
# R580 or newer. The first RUN checks Python 3.11/3.12 and TensorRT 10, the last one that the TensorRT
# EP's libraries (CUDA 13, cuDNN 9, TensorRT 10) resolve, so a tag that breaks any of them fails here.
FROM nvcr.io/nvidia/tensorrt:26.05-py3

# PyPI has no onnxruntime-gpu 1.32.0 (the CPU pin in constraints.txt); 1.31.1 is its newest GPU build.
ARG ORT_GPU_VERSION=1.31.1
# A no-op where the image has no EXTERNALLY-MANAGED marker; Ubuntu 24.04's Python would refuse pip otherwise.
ENV PIP_BREAK_SYSTEM_PACKAGES=1

RUN python3 -c "import sys, tensorrt; assert (3, 11) <= sys.version_info[:2] < (3, 13), sys.version; assert tensorrt.__version__.startswith('10.'), tensorrt.__version__; print('TensorRT', tensorrt.__version__)"

WORKDIR /opt/enginewright
COPY pyproject.toml constraints.txt Makefile README.md ./
COPY enginewright/ enginewright/
COPY exporter/ exporter/
COPY runtimes/ runtimes/
COPY evaluation/ evaluation/
COPY benchmarks/ benchmarks/
COPY examples/ examples/
COPY tests/ tests/

# The container's TensorRT stays: the `gpu` extra is not installed (PyPI's tensorrt would fetch a second
# copy, and its newest is TensorRT 11), and neither is `cpu` (the CPU onnxruntime would overwrite
# onnxruntime-gpu's module). torch goes first and alone so pip takes the pinned build from PyPI, a
# CUDA 13.0 one.
RUN python3 -m pip install --no-cache-dir -c constraints.txt torch \
 && python3 -m pip install --no-cache-dir -c constraints.txt -e '.[dev]' "onnxruntime-gpu==${ORT_GPU_VERSION}" \
 && ! python3 -m pip show -q onnxruntime 2>/dev/null \
 && python3 -c "import onnxruntime as ort, torch; from onnxruntime.capi import build_and_package_info as b; assert ort.__version__ == '${ORT_GPU_VERSION}' and b.cuda_version.startswith('13.'), (ort.__version__, b.cuda_version); assert torch.version.cuda.startswith('13.'), torch.version.cuda; print(ort.__version__, ort.get_available_providers(), torch.__version__, torch.version.cuda)" \
 && trt_ep="$(python3 -c 'import onnxruntime, pathlib; print(pathlib.Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime_providers_tensorrt.so")')" \
 && ! ldd "$trt_ep" | grep 'not found' | grep -v 'libcuda\.so\.1'

ENV HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ENTRYPOINT ["enginewright"]
CMD ["--help"]
