# The two set-up commands of the README: `make demo` and `make test`.
# Both create the virtual environment and install what they need first.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin
DEMO ?= demo

.PHONY: demo test install

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

# The main job on the embedded default: local Ray, local zoo, built-in datasets, local MLflow.
demo: $(BIN)/.installed
	$(BIN)/tans datasets synth --out $(DEMO)/datasets --count 24
	$(BIN)/tans build --zoo $(DEMO)/zoo --datasets $(DEMO)/datasets --max-jobs 64 \
		--epochs 2 --image-size 32 --mlflow-uri sqlite:///$(abspath $(DEMO))/mlflow.db
	$(BIN)/tans status $(DEMO)/zoo

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q
