# make setup   - .venv with the CPU build of torch and everything else (offline-friendly, no CUDA download)
# make run     - the main job (today: build, save, reload and run a tiny student; see README)
# make test    - the test suite
# GPU users: make setup TORCH=   (keeps whatever CUDA torch is already in the active environment; see README)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU wheel of this exact version lies on the build machines' disk; anything unpinned pulls CUDA.
TORCH ?= torch==2.13.0

.PHONY: setup run test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(TORCH),$(PY) -m pip install -q $(TORCH))
	$(PY) -m pip install -q $(if $(TORCH),-c constraints.txt) -e '.[dev]'
	touch $@

run: setup
	$(PY) scripts/quickstart.py --out runs/quickstart

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
