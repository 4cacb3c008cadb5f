# make setup          - .venv with the CPU build of torch and everything else; espeak-ng for the toy corpus
# make demo           - the main job: OPD of the toy student from the toy teacher on the CPU, before/after table
# make test           - the test suite
# make reproduce-toy  - the paper's table at toy scale: teacher, base, TD, OPD, TD+OPD (runs/toy/report.md)
# make toy-curves     - OPD's gain against its budget and the student's start (runs/toy/curves/curves.md)
# make quickstart     - build, save, reload and run a tiny student in seconds
# GPU users: make setup TORCH=   (keeps whatever CUDA torch is already in .venv; see docs/gpu.md)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU wheel of this exact version lies on the build machines' disk; anything unpinned pulls CUDA.
TORCH ?= torch==2.13.0
EXTRAS := dev,toy,plots

.PHONY: setup system-deps demo run quickstart reproduce-toy toy-curves test clean

setup: $(VENV)/.installed system-deps

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(TORCH),$(PY) -m pip install -q $(TORCH))
	$(PY) -m pip install -q $(if $(TORCH),-c constraints.txt) -e '.[$(EXTRAS)]'
	touch $@

# espeak-ng speaks the toy corpus. Installed with apt when we can (root, Debian/Ubuntu); else say how.
system-deps:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null; \
	  else \
	    echo "espeak-ng is missing: install it (apt install espeak-ng / brew install espeak-ng) for the toy corpus"; \
	  fi; }

demo: setup
	PYTHON=$(PY) bash scripts/demo.sh

run: demo

quickstart: setup
	$(PY) scripts/quickstart.py --out runs/quickstart

reproduce-toy: setup
	PYTHON=$(PY) bash scripts/reproduce_toy.sh

toy-curves: setup
	PYTHON=$(PY) bash scripts/toy_curves.sh

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
