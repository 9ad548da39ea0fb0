# The two commands a newcomer needs:  make demo   and   make test
VENV   := .venv
PY     := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: demo test venv bench lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: venv node_modules/.package-lock.json
	$(VENV)/bin/vigil demo

# The dashboard's front-end libraries, from the npm registry (package.json); not in the repository.
node_modules/.package-lock.json: package.json
	npm install --no-audit --no-fund

test: venv
	scripts/test

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy .

bench: venv
	$(PY) bench/ingest.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
