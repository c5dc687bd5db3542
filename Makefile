# CrashChat Platform. `make demo` and `make test` work from a clean clone: each creates .venv.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements/lock.txt | sha1sum | cut -c1-12)
DEMO_DIR ?= runs/demo

# Nothing may reach a model hub at run time; compiled ops are cached inside the project.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup test lint typecheck pytest demo clean help

help:
	@echo "make demo   - set up .venv and run the end-to-end demo (synthetic data, tiny model)"
	@echo "make test   - set up .venv, lint, type-check and run the tests"

$(STAMP): pyproject.toml requirements/lock.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@echo "installing into $(VENV) (first time: a few minutes)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -c requirements/lock.txt -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(BIN)/ruff check platform tests jobs serve benchmarks
	$(BIN)/ruff format --check platform tests jobs serve benchmarks

typecheck: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/python -m pytest -q -m "not gpu" $(PYTEST_ARGS)

test: lint typecheck pytest

demo: setup
	@rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR)
	@echo "== 1/4 synthesise crash/normal clips (jobs/configs/synth-demo.yaml)"
	$(BIN)/crashchat data synth --out $(DEMO_DIR)/data --config jobs/configs/synth-demo.yaml
	@echo "== 2/4 validate the annotations against the videos"
	$(BIN)/crashchat data validate $(DEMO_DIR)/data --video-root $(DEMO_DIR)/data
	@echo "== 3/4 build the tiny VideoLLaMA3 (random weights, offline tokenizer, real processor)"
	$(BIN)/crashchat model tiny --out $(DEMO_DIR)/model --config jobs/configs/tiny-model.yaml --text $(DEMO_DIR)/data
	@echo "== 4/4 preprocess on Ray Data: probe, decode, processor -> Parquet samples"
	$(BIN)/crashchat preprocess --annotations $(DEMO_DIR)/data --video-root $(DEMO_DIR)/data \
		--model $(DEMO_DIR)/model --out $(DEMO_DIR)/preprocessed --config jobs/configs/preprocess-tiny.yaml
	@echo "demo finished: data in $(DEMO_DIR)/data, model in $(DEMO_DIR)/model, samples in $(DEMO_DIR)/preprocessed"

clean:
	rm -rf $(VENV) .cache runs .pytest_cache .mypy_cache .ruff_cache
