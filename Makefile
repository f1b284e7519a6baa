# The two set-up commands of the README: `make demo` and `make test`.
# Both create the virtual environment and install what they need first.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

.PHONY: demo test install

# The demo needs the project; the tests also need the test extras (pytest, moto, duckdb).
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(BIN)/.installed-test: $(BIN)/.installed
	$(BIN)/pip install --quiet -e '.[test]'
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

test: $(BIN)/.installed-test /usr/bin/chromium
	$(BIN)/python -m pytest -q
