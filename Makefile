# make setup: .venv with torch and the package (idempotent); make test: the whole suite; make bench: benchmarks.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# The default suite first, then the tests marked slow in a second call (exit 5 = "none collected" is fine).
test: setup
	$(PY) -m pytest -m "not slow"
	$(PY) -m pytest -m slow; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

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
# build/mutate/ against the fast tests that cover it; prints each module's kill rate and its survivors. Long (not in
# CI): MODULES="tables transforms" runs some of them.
.PHONY: mutate
mutate: setup
	$(PY) scripts/mutate.py $(MODULES)

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
