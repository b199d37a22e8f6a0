# One-command set-up: `make demo` and `make test` create .venv, install everything, then run.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo study test test-fast lint bench tensorboard clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml scripts/install_torch.py | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) scripts/install_torch.py
	$(PY) -m pip install --quiet -e ".[test,examples]"
	touch $(STAMP)

demo: $(STAMP)  ## SGD vs SAM on digits, landscapes to lightning_logs/
	$(PY) examples/sgd_vs_sam.py $(ARGS)

study: $(STAMP)  ## ViT on digits, AdamW vs SAM, clean and noisy labels, 10 seeds: lightning_logs/vit/ + docs/vit_study.md
	OMP_NUM_THREADS=1 $(PY) examples/vit_adamw_vs_sam.py --docs docs $(ARGS)

# Two pytest workers (pytest-xdist), one file per worker at a time so that module-scoped fixtures (the DDP
# runs, the study) run once; one intra-op thread each. ARGS="-n 0" runs the suite in one process.
PYTEST := OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile

test: $(STAMP)  ## lint + type check + the whole suite, slow multi-process tests included
	$(VENV)/bin/ruff check lightning_landscape tests examples benchmarks scripts
	$(VENV)/bin/mypy
	$(PYTEST) $(ARGS)

test-fast: $(STAMP)  ## the suite without the slow multi-process tests
	$(PYTEST) -m "not slow" $(ARGS)

lint: $(STAMP)  ## ruff + mypy (files and settings: [tool.mypy] in pyproject.toml)
	$(VENV)/bin/ruff check lightning_landscape tests examples benchmarks scripts
	$(VENV)/bin/ruff format --check lightning_landscape
	$(VENV)/bin/mypy

bench: $(STAMP)  ## benchmarks: tables and ratios (README "Performance"); baselines in benchmarks/.env
	$(PY) benchmarks/bench_floor.py
	$(PY) benchmarks/bench_growth.py
	$(PY) benchmarks/bench_callback.py
	$(PY) benchmarks/bench_figures.py
	$(PY) benchmarks/bench_critical.py
	$(PY) benchmarks/bench_warm_start.py
	bash benchmarks/setup_env.sh $(PY) > /dev/null
	benchmarks/.env/bin/python benchmarks/bench_baselines.py
	benchmarks/.env/bin/python benchmarks/bench_curvature_vs_pyhessian.py

tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir lightning_logs

clean:
	rm -rf $(VENV) lightning_logs .pytest_cache .mypy_cache
