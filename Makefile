# CrashChat Platform. `make demo` and `make test` work from a clean clone: each creates .venv.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements/lock.txt | sha1sum | cut -c1-12)
DEMO_DIR ?= runs/demo
OUT ?= runs/learn
LEARN_MIX := crash_recognition,crash_localization,pre_crash_localization

# Nothing may reach a model hub at run time; compiled ops are cached inside the project.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup test lint typecheck pytest demo learn clean help

help:
	@echo "make demo   - set up .venv and run the end-to-end demo (synthetic data, tiny model)"
	@echo "make test   - set up .venv, lint, type-check and run the tests"
	@echo "make learn  - show learning from pixels on CPU: synth, pre-train, LoRA, evaluate (OUT=dir)"

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
	@echo "== 1/6 synthesise crash/normal clips (jobs/configs/synth-demo.yaml)"
	$(BIN)/crashchat data synth --out $(DEMO_DIR)/data --config jobs/configs/synth-demo.yaml
	@echo "== 2/6 validate the annotations against the videos"
	$(BIN)/crashchat data validate $(DEMO_DIR)/data --video-root $(DEMO_DIR)/data
	@echo "== 3/6 build the tiny VideoLLaMA3 (random weights, offline tokenizer, real processor)"
	$(BIN)/crashchat model tiny --out $(DEMO_DIR)/model --config jobs/configs/tiny-model.yaml --text $(DEMO_DIR)/data
	@echo "== 4/6 preprocess on Ray Data: probe, decode, processor -> Parquet samples"
	$(BIN)/crashchat preprocess --annotations $(DEMO_DIR)/data --video-root $(DEMO_DIR)/data \
		--model $(DEMO_DIR)/model --out $(DEMO_DIR)/preprocessed --config jobs/configs/preprocess-tiny.yaml
	@echo "== 5/6 LoRA fine-tuning on Ray Train + DeepSpeed (CPU, gloo), tracked in MLflow"
	MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/$(DEMO_DIR)/mlflow.db $(BIN)/crashchat train \
		--config jobs/configs/tiny-cpu.yaml --data $(DEMO_DIR)/preprocessed --model $(DEMO_DIR)/model \
		--output $(DEMO_DIR)/checkpoints --mixture crash_recognition > $(DEMO_DIR)/train.json
	@echo "== 6/6 evaluate the fine-tuned checkpoint (registry alias) and the untuned base; compare"
	MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/$(DEMO_DIR)/mlflow.db $(BIN)/crashchat evaluate \
		--model models:/crashchat-tiny@crash_recognition --data $(DEMO_DIR)/preprocessed \
		--out $(DEMO_DIR)/eval/crash_recognition --config jobs/configs/eval-tiny.yaml > $(DEMO_DIR)/eval.json
	MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/$(DEMO_DIR)/mlflow.db $(BIN)/crashchat evaluate \
		--model $(DEMO_DIR)/model --data $(DEMO_DIR)/preprocessed \
		--out $(DEMO_DIR)/eval/baseline --config jobs/configs/eval-tiny.yaml > $(DEMO_DIR)/eval-baseline.json
	MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/$(DEMO_DIR)/mlflow.db $(BIN)/crashchat compare \
		--experiment crashchat-tiny-cpu --reference paper --out $(DEMO_DIR)/comparison > $(DEMO_DIR)/compare.json
	@echo "demo finished in $(DEMO_DIR): data/, model/, preprocessed/, checkpoints/, eval/, comparison/"
	@echo "MLflow runs: .venv/bin/mlflow ui --host 127.0.0.1 --backend-store-uri sqlite:///$(CURDIR)/$(DEMO_DIR)/mlflow.db"

# Learning from pixels on 2 CPU cores (about 20 minutes): results in $(OUT)/eval.
learn: setup
	@rm -rf $(OUT) && mkdir -p $(OUT)
	$(BIN)/crashchat data synth --out $(OUT)/data --config jobs/configs/synth-learn.yaml
	$(BIN)/crashchat model tiny --out $(OUT)/model --config jobs/configs/tiny-model.yaml --text $(OUT)/data
	$(BIN)/crashchat preprocess --annotations $(OUT)/data --video-root $(OUT)/data \
		--model $(OUT)/model --out $(OUT)/preprocessed --config jobs/configs/preprocess-learn.yaml
	@echo "== pre-train the tiny base (stand-in for the pretrained VideoLLaMA3)"
	MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/$(OUT)/mlflow.db $(BIN)/crashchat train \
		--config jobs/configs/tiny-learn-pretrain.yaml --data $(OUT)/preprocessed --model $(OUT)/model \
		--output $(OUT)/pretrain --mixture $(LEARN_MIX) > $(OUT)/pretrain.json
	$(BIN)/crashchat checkpoint export $(OUT)/pretrain/$(subst $(comma),__,$(LEARN_MIX)) --out $(OUT)/base
	@echo "== LoRA fine-tuning of the base on all six tasks (heterogeneous), as upstream"
	MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/$(OUT)/mlflow.db $(BIN)/crashchat train \
		--config jobs/configs/tiny-learn.yaml --data $(OUT)/preprocessed --model $(OUT)/base \
		--output $(OUT)/checkpoints --mixture heterogeneous > $(OUT)/train.json
	@echo "== evaluate on the held-out test clips"
	MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/$(OUT)/mlflow.db $(BIN)/crashchat evaluate \
		--model $(OUT)/checkpoints/heterogeneous --data $(OUT)/preprocessed --out $(OUT)/eval \
		--config jobs/configs/eval-learn.yaml > $(OUT)/eval.json
	$(BIN)/crashchat learning-bar $(OUT)/eval

comma := ,

clean:
	rm -rf $(VENV) .cache runs .pytest_cache .mypy_cache .ruff_cache
