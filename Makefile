# The two set-up commands of the README are `make demo` and `make test`; the others serve
# development (docs/development.md). Every target creates the virtual environment and
# installs what it needs first, at the versions of constraints.txt.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin
PIP = $(BIN)/pip install --quiet --constraint constraints.txt

.PHONY: demo test test-fast lint format docs install

# The demo needs the project; the tests also need the optional peers (Optuna, BoTorch) and
# the test tools (pytest, moto, duckdb, ruff); the docs the site generator.
$(BIN)/.installed: pyproject.toml setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(PIP) -e .
	touch $@

$(BIN)/.installed-test: $(BIN)/.installed
	$(PIP) -e '.[peers,test]'
	touch $@

$(BIN)/.installed-docs: $(BIN)/.installed
	$(PIP) -e '.[docs]'
	touch $@

install: $(BIN)/.installed

# The main job on the embedded default: local Ray, local zoo, built-in datasets, local MLflow.
# 25 built-in datasets are written; one (glyphs-hebrew-clean) is kept out of the zoo and used
# as the new task to search for at the end.
demo: $(BIN)/.installed
	$(BIN)/tans datasets synth --out demo/datasets --count 25
	rm -rf demo/query && mkdir -p demo/query && mv demo/datasets/glyphs-hebrew-clean demo/query/
	$(BIN)/tans build --config demo.toml
	$(BIN)/tans status demo/zoo
	$(BIN)/tans search demo/zoo --dataset demo/query/glyphs-hebrew-clean --top-k 5

# The report test renders the page in Debian's headless Chromium.
/usr/bin/chromium:
	$(if $(shell id -u | grep -x 0),,sudo) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(if $(shell id -u | grep -x 0),,sudo) apt-get install -y -qq chromium

# Everything: lint, the docs site, then the whole suite.
test: $(BIN)/.installed-test $(BIN)/.installed-docs /usr/bin/chromium lint docs
	$(BIN)/python -m pytest -q

# Unit and contract tests only: no Ray, no training, no subprocesses or servers.
test-fast: $(BIN)/.installed-test
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(BIN)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(BIN)/.installed-test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

docs: $(BIN)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
