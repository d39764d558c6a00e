# Two commands: `make demo` (the main job, offline defaults) and `make test` (lint + the test suite).
# Each creates its own virtual environment in .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup demo test lint docs clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# Fashion-MNIST ships as a Debian package: install it when missing (root), else say how
$(FMNIST):
	@if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q dataset-fashion-mnist; \
	else echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'"; exit 1; fi

setup: $(VENV)/.installed $(FMNIST)

# the zoo tour: every family trained, evaluated, loaded from the shipped weights and fine-tuned, on offline data
demo: setup
	$(VENV)/bin/gatedzoo tour

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

# the documentation site, strictly (a warning fails), into site/; `.venv/bin/mkdocs serve` previews it
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

test: setup lint
	$(PY) -m pytest -q --timeout 900 --durations 15

clean:
	rm -rf $(VENV) runs .pytest_cache
