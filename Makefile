# make setup: .venv with torch and the package (idempotent); make test: the whole suite; make bench: benchmarks.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# torch's build. Default: PyPI's torch 2.14.1 wheel (CUDA 13: needs a recent driver). For an older driver pick a
# CUDA flavour of PyTorch's index, e.g. make setup TORCH_CUDA=cu126 (https://download.pytorch.org/whl/cu126), or
# any index: TORCH_INDEX_URL=... The choice is kept in .venv/.torch-index, so later `make setup` calls (reproduce.sh
# runs one) keep it; TORCH_CUDA=default goes back to PyPI's wheel.
TORCH_VERSION ?= 2.14.1
TORCHVISION_VERSION ?= 0.29.1
TORCH_CUDA ?=
TORCH_INDEX_FILE := $(VENV)/.torch-index
TORCH_INDEX_URL ?= $(if $(filter default,$(TORCH_CUDA)),,$(if $(TORCH_CUDA),https://download.pytorch.org/whl/$(TORCH_CUDA),$(shell cat $(TORCH_INDEX_FILE) 2>/dev/null)))
# FORCE when the requested build differs from the installed one
TORCH_CHANGED := $(if $(filter-out $(strip $(shell cat $(TORCH_INDEX_FILE) 2>/dev/null)),$(strip $(TORCH_INDEX_URL)))$(filter-out $(strip $(TORCH_INDEX_URL)),$(strip $(shell cat $(TORCH_INDEX_FILE) 2>/dev/null))),FORCE)

.PHONY: setup test test-fast bench clean lint format FORCE

setup: $(STAMP)

# The locked environment: every package with its version and hashes (requirements/lock.txt, CPython 3.11 on Linux
# x86-64, made by `make lock`). With TORCH_CUDA / TORCH_INDEX_URL, torch's build (torch, torchvision, triton,
# nvidia-*) comes from that index, pinned by version, and the rest from the lock. LOCK= (empty) installs from
# pyproject.toml's ranges instead (another Python, another platform).
LOCK ?= requirements/lock.txt

$(STAMP): pyproject.toml $(LOCK) $(TORCH_CHANGED)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(TORCH_CHANGED),$(PY) -m pip uninstall --quiet --yes torch torchvision)
ifeq ($(strip $(LOCK)),)
	$(PY) -m pip install --quiet $(if $(strip $(TORCH_INDEX_URL)),--index-url $(strip $(TORCH_INDEX_URL))) torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION)
	$(PY) -m pip install --quiet -e ".[test]"
else ifeq ($(strip $(TORCH_INDEX_URL)),)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
else
	$(PY) -m pip install --quiet --index-url $(strip $(TORCH_INDEX_URL)) torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION)
	$(PY) scripts/lock.py without-torch > $(VENV)/lock-without-torch.txt
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(VENV)/lock-without-torch.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
endif
	printf '%s\n' '$(strip $(TORCH_INDEX_URL))' > $(TORCH_INDEX_FILE)
	touch $(STAMP)

# Re-resolve requirements/lock.txt (uv, from PyPI): the newest releases within pyproject.toml's ranges, torch pinned
# to TORCH_VERSION. Review the diff, run make test, commit.
.PHONY: lock
lock: setup
	$(PY) -m pip install --quiet uv==0.13.9
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) scripts/lock.py update --torch $(TORCH_VERSION) --torchvision $(TORCHVISION_VERSION)

FORCE:

# The default suite first, then the tests marked slow in a second call (exit 5 = "none collected" is fine).
test: setup
	$(PY) -m pytest -m "not slow"
	$(PY) -m pytest -m slow --durations=25; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

test-fast: setup
	$(PY) -m pytest -m "not slow"

bench: setup
	$(PY) benchmarks/bench_pooling.py

# The CUDA path's acceptance check on one GPU (Triton tests, Triton vs reference, > 2^31 elements, speed vs
# max_pool2d and the copy ceiling, VGG16-LargeFOV bf16 steps): writes results/bench/<gpu>.md. Needs CUDA.
.PHONY: gpu-check
gpu-check: setup
	$(PY) scripts/gpu_check.py

# Mutation testing (mutmut): pooling/, surgery.py, data/transforms.py, models/, tables.py, each in its own copy under
# build/mutate/ against the fast tests that cover it; prints each module's kill rate (a fixed 10% sample of its
# mutants, with a 95% interval) and its survivors. Not in CI. MODULES="tables transforms" runs some of them;
# `python scripts/mutate.py --sample all MODULE` tests every mutant (hours for pooling and models).
.PHONY: mutate
mutate: setup
	$(PY) scripts/mutate.py $(MODULES)

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info

# ruff (lint and format check) and mypy, configured in pyproject.toml; the same hooks run on commit with pre-commit
# (.pre-commit-config.yaml: pre-commit install). make format applies ruff's fixes and formatting.
lint: setup
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff check --fix src tests benchmarks scripts
	$(VENV)/bin/ruff format src tests benchmarks scripts
