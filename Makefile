# medsynth — the two commands: `make demo` (the pipeline end to end) and `make test` (the test suite).
# Both create the virtualenv themselves.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_ROOT ?= demo-out
REGISTRY ?= us-docker.pkg.dev/YOUR_PROJECT/medsynth
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

.PHONY: venv demo test lint compile images locks clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements-nodeps.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "medsynth needs Python 3.11 (TensorFlow 2.15), found " + sys.version.split()[0]'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip==26.3" "setuptools==80.9.0" "wheel==0.48.0"
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps -r requirements-nodeps.txt
	$(BIN)/pip check
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/medsynth demo --pipeline-root $(DEMO_ROOT)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

compile: $(STAMP)
	$(BIN)/medsynth compile --out pipelines/medsynth_train.yaml

# Container images (needs a Docker engine; not runnable on the development machines). linux/amd64:
# GKE's nodes, and the platform the lock files are resolved for, also when building on an ARM Mac.
PLATFORM := linux/amd64
images:
	docker build --platform $(PLATFORM) -f images/base/Dockerfile -t $(REGISTRY)/base:$(VERSION) .
	docker build --platform $(PLATFORM) -f images/trainer/Dockerfile -t $(REGISTRY)/trainer:$(VERSION) .

# Re-resolve images/*/requirements.lock after changing a pin in pyproject.toml.
locks: $(STAMP)
	$(BIN)/python images/lock.py

clean:
	rm -rf $(DEMO_ROOT) .pytest_cache .ruff_cache
