# CPU image: the same install as `make install`, then the demo or the tests.
# Not built on the development machines (no Docker engine there); see README, "Docker".
#   docker build -f docker/cpu.Dockerfile -t enginewright:cpu .
#   docker run --rm enginewright:cpu            # runs `make demo`
#   docker run --rm enginewright:cpu make test
FROM python:3.11.7-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/enginewright
COPY pyproject.toml constraints.txt Makefile README.md ./
COPY enginewright/ enginewright/
COPY exporter/ exporter/
COPY runtimes/ runtimes/
COPY evaluation/ evaluation/
COPY benchmarks/ benchmarks/
COPY examples/ examples/
COPY tests/ tests/
# PyPI's torch 2.13.0 for Linux is a CUDA build; the CPU build comes from PyTorch's CPU index.
ENV PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN make install PYTHON=python3.11
CMD ["make", "demo"]
