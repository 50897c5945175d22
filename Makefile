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

.PHONY: demo test venv system lint bench docs results clean-notebooks phantom-encoder phantom-encoder-gap language-gap

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

# bench/peers.py times the libraries people would use instead (the `bench` extra: sparsify, overcomplete, SAELens),
# installed beside the pinned torch; the library and the tests never import them.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -e ".[bench]" "torch==2.14.1" "torchvision==0.29.1"
	touch $(BENCH_STAMP)

# Each benchmark's one line of figures is recorded in runs/bench/<name>.json (bench/record.py); `make results` turns
# them into docs/benchmarks.md's table. scale.py and seeds.py run for tens of minutes: run them by hand.
bench: $(BENCH_STAMP)
	$(PY) -c "from lanic_nb.device import machine_line; print(machine_line())"
	for b in bench/*.py; do case $$b in bench/scale*|bench/seeds*|bench/record*|bench/gpu*) continue;; esac; \
	  $(PY) bench/record.py $$b || exit 1; done

# The documentation (guides, settings, results, decisions, API reference from the docstrings) as HTML in site/,
# offline. docs/settings.md is regenerated from the code first.
docs: $(STAMP)
	$(PY) -m lanic_nb.report --settings-only
	$(PY) -m mkdocs build --strict --site-dir site
	@echo "open site/index.html"

# docs/results.md, README's figures table and docs/benchmarks.md's table from the runs' metrics (never by hand).
# runs/phantom_b: `$(PY) -m lanic_nb.run_notebooks --run-dir runs/phantom_b --params phantom_b --only 00 01 02 03 04 05 06`
# runs/suite: `$(PY) -m lanic_nb.benchmark` (the benchmark suite, about 70 minutes on 2 cores; resumable)
results: $(STAMP)
	$(PY) -m lanic_nb.report --run demo=$(RUN) --run "phantom B=runs/phantom_b" --bench runs/bench \
	  $(if $(wildcard runs/suite/suite.json),--suite runs/suite/suite.json) \
	  $(if $(wildcard runs/suite_gap/suite.json),--suite-gap runs/suite_gap/suite.json)

# The shipped phantom encoder's recipe, resumable: rerun to continue after an interruption (hours on 2 CPU cores,
# minutes on a GPU). Writes lanic_nb/resources/phantom_encoder/ (weights, tokenizer, card.json, fingerprint).
phantom-encoder: $(STAMP)
	$(PY) -m lanic_nb.phantom.encoder --work runs/phantom_encoder --out lanic_nb/resources/phantom_encoder

# Its language-gap sibling (captions that never use the vocabulary's words, no tagging loss), resumable, into
# runs/phantom_encoder_gap/encoder.
phantom-encoder-gap: $(STAMP)
	$(PY) -m lanic_nb.phantom.encoder --language-gap

# The whole language-gap measurement in one resumable command: that encoder (about 2 h on 2 CPU cores), the suite
# with it into runs/suite_gap (about 70 min), then README's tables. Each step continues where it stopped.
language-gap: phantom-encoder-gap
	$(PY) -m lanic_nb.benchmark --encoder local-dir:runs/phantom_encoder_gap/encoder --out runs/suite_gap
	$(MAKE) results

clean-notebooks: $(STAMP)
	$(PY) -m lanic_nb.run_notebooks --strip notebooks/*.ipynb
