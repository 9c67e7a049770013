# GPU image: TensorRT, CUDA and cuDNN from NVIDIA's TensorRT container, the project installed as in
# `make install` with onnxruntime-gpu in place of onnxruntime. Not built on the development machines
# (no Docker engine, no GPU); see README, "Docker".
#   docker build -f docker/gpu.Dockerfile -t enginewright:gpu .
#   docker run --rm --gpus all enginewright:gpu build runs/onnx -o runs/engine
#   docker run --rm --gpus all --entrypoint bash enginewright:gpu benchmarks/gpu_check.sh
#
# 25.01 is a CUDA 12 release: the onnxruntime-gpu wheels on PyPI are CUDA 12 builds. Its Python must
# be 3.11 or 3.12 (pyproject's requires-python); the first RUN checks that and that the container's
# tensorrt module imports, so a tag that breaks either fails the build here.
FROM nvcr.io/nvidia/tensorrt:25.01-py3

RUN python3 -c "import sys, tensorrt; assert (3, 11) <= sys.version_info[:2] < (3, 13), sys.version; print('TensorRT', tensorrt.__version__)"

WORKDIR /opt/enginewright
COPY pyproject.toml constraints.txt Makefile README.md ./
COPY enginewright/ enginewright/
COPY exporter/ exporter/
COPY runtimes/ runtimes/
COPY benchmarks/ benchmarks/
COPY tests/ tests/

# The container's TensorRT stays: the `gpu` extra is not installed (PyPI's tensorrt would fetch a second
# copy from NVIDIA). torch goes first and alone so pip takes the pinned CUDA build from PyPI.
RUN grep -v '^onnxruntime==' constraints.txt > /tmp/constraints-gpu.txt \
 && python3 -m pip install --no-cache-dir -c /tmp/constraints-gpu.txt torch \
 && python3 -m pip install --no-cache-dir -c /tmp/constraints-gpu.txt -e '.[dev]' \
 && python3 -m pip uninstall -y onnxruntime \
 && python3 -m pip install --no-cache-dir -c /tmp/constraints-gpu.txt "onnxruntime-gpu==$(grep '^onnxruntime==' constraints.txt | cut -d= -f3)" \
 && python3 -c "import onnxruntime as ort, torch; print(ort.get_available_providers(), torch.__version__)"

ENV HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ENTRYPOINT ["enginewright"]
CMD ["--help"]
