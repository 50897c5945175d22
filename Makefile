# Two commands do everything: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN ?= runs/demo
SIZE ?= demo
# numba compiles UMAP once (~60 s); keep its cache outside the clone so fresh clones reuse it.
export NUMBA_CACHE_DIR ?= $(HOME)/.cache/lanic_nb/numba
export MPLBACKEND := Agg
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONHASHSEED := 0

.PHONY: demo test venv lint bench clean-notebooks

venv: $(STAMP)

# The stamp depends on pyproject, so an edited dependency list reinstalls; otherwise the venv is reused.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade "pip>=24"
	$(PY) -m pip install "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -e ".[dev,pathology]" "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m lanic_nb.run_notebooks --run-dir $(RUN) --size $(SIZE)

test: $(STAMP)
	$(PY) -m pytest -q --timeout=1200 tests

lint: $(STAMP)
	$(PY) -m ruff check lanic_nb tests bench

bench: $(STAMP)
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean-notebooks: $(STAMP)
	$(PY) -m lanic_nb.run_notebooks --strip notebooks/*.ipynb
