# Entry points: `make test` and `make bench` each set everything up first (scripts/setup.sh).
PYTHON_VENV := .venv/bin/python

.PHONY: setup test bench lint

setup:
	bash scripts/setup.sh

test: setup
	$(PYTHON_VENV) -m pytest -q

bench:
	bash scripts/setup.sh --bench
	$(PYTHON_VENV) -m bench.harness --quick

lint:
	$(PYTHON_VENV) -m ruff check sparsemb kernels tests bench examples conftest.py
