# Two commands for a newcomer: `make demo` (the main job) and `make test` (the whole suite).
# Both set up .venv with pinned versions first (idempotent).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo lint clean

install: $(STAMP)

$(STAMP): requirements.txt setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/cuda/*.cu csrc/cuda/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $(STAMP)

test: install
	$(PY) -m pytest -q tests

# outputs go to runs/<preset>-<time>/ (untracked); e.g. make demo DEMO_ARGS="--seeds 10,11,12 --budgets 0.5,1,2,4";
# the pretrained regime (a small model trained 61 tokens per parameter): make demo DEMO_ARGS="--preset pretrained"
demo: install
	$(PY) -m ligo_fast.apps.demo $(DEMO_ARGS)

lint: install
	$(VENV)/bin/ruff check ligo_fast kernels tests benchmarks

clean:
	rm -rf build *.egg-info ligo_fast/*.so
