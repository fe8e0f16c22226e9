# woundscore: `make demo` (set up + run the main job offline), `make test` (set up + run tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch/torchvision pins that lie on this machine's disk (x86_64, Python 3.11); installed before
# the package so that its `torch>=2.4` requirement is already met and no second build downloads.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= demo_out

.PHONY: install demo test test-slow bench mutants clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip 'setuptools>=68'  # the wheel test builds without isolation
	$(PY) -m pip install $(TORCH_PINS)
	$(PY) -m pip install -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/wound-compare demo --out $(DEMO_OUT)

test: install
	$(PY) -m pytest

test-slow: install
	$(PY) -m pytest -m slow

bench: install
	$(PY) bench/run_all.py

# mutation testing (outside CI; mutmut, ~25 min on 2 cores); results and survivors in TESTING.md
mutants: install
	$(PY) -m pip install -e '.[mutants]'
	$(PY) bench/mutants.py --budget-s 300

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
