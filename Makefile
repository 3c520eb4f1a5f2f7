# One command to serve, one to test: each sets up .venv first when it is missing or stale.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8001

.PHONY: setup serve test lint typecheck protos protos-check models image clean

$(STAMP): pyproject.toml scripts/install_torch.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch's CPU build: from PyTorch's CPU index if it answers, else pip's own (README "Setup").
	# TORCH_INDEX_URL=... picks another index (make setup TORCH_INDEX_URL=...; empty: pip's own).
	$(PY) scripts/install_torch.py -q
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
# The tag is the one deploy/ uses: torchwire:<version in pyproject.toml>.
IMAGE_ARGS ?=
IMAGE ?= torchwire:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
image:
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then docker build $(IMAGE_ARGS) -t $(IMAGE) .; \
	elif command -v podman >/dev/null 2>&1; then podman build $(IMAGE_ARGS) -t $(IMAGE) .; \
	else echo "make image needs docker or podman" >&2; exit 1; fi

clean:
	rm -rf $(VENV) .tools build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
