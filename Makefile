# One command to serve, one to test: each sets up .venv first when it is missing or stale.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8001

.PHONY: setup serve test lint typecheck protos protos-check models image clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build on disk; an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[server,dev]'
	touch $(STAMP)

setup: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/torchwire serve --port $(PORT)

test: $(STAMP) lint typecheck
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy reads the packages under their import names through a tree of links (pyproject's
# package-dir maps the folders, which mypy cannot follow through the editable install).
TYPECHECK_PATH := .tools/typecheck
typecheck: $(STAMP)
	mkdir -p $(TYPECHECK_PATH)/torchwire
	for p in client server bench models; do ln -sfn "$(CURDIR)/$$p" $(TYPECHECK_PATH)/torchwire/$$p; done
	MYPYPATH=$(TYPECHECK_PATH) $(VENV)/bin/mypy -p torchwire.client -p torchwire.server -p torchwire.bench

protos: $(STAMP)
	$(PY) protos/generate.py

protos-check: $(STAMP)
	$(PY) protos/generate.py --check

models: $(STAMP)
	$(PY) models/build.py

# IMAGE_ARGS goes to the build as is, e.g. a mirror or an offline wheel folder (README "Docker").
IMAGE_ARGS ?=
image:
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then docker build $(IMAGE_ARGS) -t torchwire:latest .; \
	elif command -v podman >/dev/null 2>&1; then podman build $(IMAGE_ARGS) -t torchwire:latest .; \
	else echo "make image needs docker or podman" >&2; exit 1; fi

clean:
	rm -rf $(VENV) .tools build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
