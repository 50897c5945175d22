# Two commands do everything: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN ?= runs/demo
SIZE ?= demo
# numba compiles UMAP once (~60 s); keep its cache outside the clone so fresh clones reuse it.
export NUMBA_CACHE_DIR ?= $(HOME)/.cache/lanic_nb/numba
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONHASHSEED := 0

.PHONY: demo test venv system lint bench clean-notebooks

venv: $(STAMP)

# The stamp depends on pyproject, so an edited dependency list reinstalls; otherwise the venv is reused.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade "pip>=24"
	$(PY) -m pip install "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -e ".[dev,pathology]" "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# System packages the tests need: Debian's chromium renders the HTML pages headless. Installed here (as root),
# never by a test; without root the HTML-rendering tests skip with this message.
system:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium (headless HTML checks) ..."; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; \
	  else \
	    echo "note: chromium is missing and this is not root; run 'sudo apt-get install -y chromium'" \
	         "or the HTML-rendering tests will skip"; \
	  fi; }

demo: $(STAMP)
	$(PY) -m lanic_nb.run_notebooks --run-dir $(RUN) --size $(SIZE)

# As root the tests insist on chromium (installed above) instead of skipping the HTML checks.
test: $(STAMP) system
	LANIC_REQUIRE_CHROMIUM=$$([ "$$(id -u)" = 0 ] && echo 1 || echo 0) $(PY) -m pytest -q --timeout=1200 tests

lint: $(STAMP)
	$(PY) -m ruff check lanic_nb tests bench

bench: $(STAMP)
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean-notebooks: $(STAMP)
	$(PY) -m lanic_nb.run_notebooks --strip notebooks/*.ipynb
