# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# llama-cpp-python compiles llama.cpp. Build for any x86-64 with AVX2 (CI runners, users' laptops),
# not -march=native: a native build on an AMX CPU enables ggml's AMX kernels, whose q8_0/q4_0
# matmul crashes at batch > 1. pip caches the built wheel, so CI compiles it once.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF

.PHONY: demo test test-fast notebooks lint format bench clean docs

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/moeplan demo

test: $(STAMP)
	$(BIN)/ruff check scaling search tests benchmarks
	$(BIN)/python -m pytest -q tests

# everything that needs no training, no notebook and no server start (under 3 minutes on 2 cores)
test-fast: $(STAMP)
	$(BIN)/ruff check scaling search tests benchmarks
	$(BIN)/python -m pytest -q -m "not slow" tests

# write the notebooks from notebooks/make_notebooks.py, then execute them in place, so they are
# committed with their outputs and plots
notebooks: $(STAMP)
	$(BIN)/python notebooks/make_notebooks.py
	$(BIN)/python -c "import nbformat, nbclient, sys; [nbformat.write(nbclient.NotebookClient(nb := nbformat.read(p, 4), timeout=900, kernel_name='python3', resources={'metadata': {'path': 'notebooks'}}).execute() or nb, p) for p in sys.argv[1:]]" notebooks/*.ipynb

lint: $(STAMP)
	$(BIN)/ruff check scaling search tests benchmarks
	$(BIN)/ruff format --check scaling search tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format scaling search tests benchmarks
	$(BIN)/ruff check --fix scaling search tests benchmarks

clean:
	rm -rf $(VENV)

docs: $(STAMP)  # rewrite the generated blocks (<!-- moeplan:NAME -->) of README.md and docs/*.md
	$(BIN)/python -m search.app.readme_blocks README.md docs/*.md
