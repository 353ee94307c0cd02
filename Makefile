# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast notebooks lint format bench clean docs

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
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

docs: $(STAMP)  # rewrite README's generated blocks (<!-- moeplan:NAME -->) from the code
	$(BIN)/python -m search.app.readme_blocks README.md
