# CrashChat Platform. `make demo` and `make test` work from a clean clone: each creates .venv.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements/lock.txt | sha1sum | cut -c1-12)
DEMO_DIR ?= runs/demo
DEMO_PORT ?= 8000
OUT ?= runs/learn
LEARN_MIX := crash_recognition,crash_localization,pre_crash_localization

# Nothing may reach a model hub at run time; compiled ops are cached inside the project.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup test lint typecheck pytest demo demo-cluster learn clean help browser

help:
	@echo "make demo   - set up .venv and run the end-to-end demo (synthetic data, tiny model)"
	@echo "make test   - set up .venv, lint, type-check and run the tests"
	@echo "make demo DEMO_CLUSTER=1 - also run the pipeline as a Ray job on a local 3-node cluster"
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

# The web-page test drives Debian's chromium; install it when missing and we may (root + apt).
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
			echo "installing chromium + chromium-driver for the browser test"; \
			(DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
			 || (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1)) \
			|| echo "could not install chromium: the browser test will be skipped"; \
		else echo "no chromium (and no root apt): the browser test will be skipped"; fi; \
	fi

pytest: setup browser
	$(BIN)/python -m pytest -q -m "not gpu" $(PYTEST_ARGS)

test: lint typecheck pytest

demo: setup
	@rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR)
	@echo "== 1/7 synthesise crash/normal clips (jobs/configs/synth-demo.yaml)"
	$(BIN)/crashchat data synth --out $(DEMO_DIR)/data --config jobs/configs/synth-demo.yaml
	@echo "== 2/7 validate the annotations against the videos"
	$(BIN)/crashchat data validate $(DEMO_DIR)/data --video-root $(DEMO_DIR)/data
	@echo "== 3/7 build the tiny VideoLLaMA3 (random weights, offline tokenizer, real processor)"
	$(BIN)/crashchat model tiny --out $(DEMO_DIR)/model --config jobs/configs/tiny-model.yaml --text $(DEMO_DIR)/data
	@echo "== 4/7 preprocess on Ray Data: probe, decode, processor -> Parquet samples"
	$(BIN)/crashchat preprocess --annotations $(DEMO_DIR)/data --video-root $(DEMO_DIR)/data \
		--model $(DEMO_DIR)/model --out $(DEMO_DIR)/preprocessed --config jobs/configs/preprocess-tiny.yaml
	@echo "== 5/7 LoRA fine-tuning on Ray Train + DeepSpeed (CPU, gloo), tracked in MLflow"
	MLFLOW_TRACKING_URI=sqlite:///$(abspath $(DEMO_DIR))/mlflow.db $(BIN)/crashchat train \
		--config jobs/configs/tiny-cpu.yaml --data $(DEMO_DIR)/preprocessed --model $(DEMO_DIR)/model \
		--output $(DEMO_DIR)/checkpoints --mixture crash_recognition > $(DEMO_DIR)/train.json
	@echo "== 6/7 evaluate the fine-tuned checkpoint (registry alias) and the untuned base; compare"
	MLFLOW_TRACKING_URI=sqlite:///$(abspath $(DEMO_DIR))/mlflow.db $(BIN)/crashchat evaluate \
		--model models:/crashchat-tiny@crash_recognition --data $(DEMO_DIR)/preprocessed \
		--out $(DEMO_DIR)/eval/crash_recognition --config jobs/configs/eval-tiny.yaml > $(DEMO_DIR)/eval.json
	MLFLOW_TRACKING_URI=sqlite:///$(abspath $(DEMO_DIR))/mlflow.db $(BIN)/crashchat evaluate \
		--model $(DEMO_DIR)/model --data $(DEMO_DIR)/preprocessed \
		--out $(DEMO_DIR)/eval/baseline --config jobs/configs/eval-tiny.yaml > $(DEMO_DIR)/eval-baseline.json
	MLFLOW_TRACKING_URI=sqlite:///$(abspath $(DEMO_DIR))/mlflow.db $(BIN)/crashchat compare \
		--experiment crashchat-tiny-cpu --reference paper --out $(DEMO_DIR)/comparison > $(DEMO_DIR)/compare.json
	@echo "== 7/7 Ray Serve: one replica group per checkpoint behind a router; bulk request over the test clips"
	$(BIN)/crashchat serve up --checkpoints $(DEMO_DIR)/checkpoints --config jobs/configs/serve-tiny.yaml \
		--best $(DEMO_DIR)/comparison/best_checkpoints.json --set prompts=$(DEMO_DIR)/data/prompts.json \
		--allowed-root $(DEMO_DIR)/data --port $(DEMO_PORT) \
		--detach --state-file $(DEMO_DIR)/serve-state.json > $(DEMO_DIR)/serve.json
	$(BIN)/crashchat serve batch --url http://127.0.0.1:$(DEMO_PORT)/ --annotations $(DEMO_DIR)/data \
		--split test --out $(DEMO_DIR)/serve-results.jsonl \
		|| { $(BIN)/crashchat serve down --state-file $(DEMO_DIR)/serve-state.json; exit 1; }
	@echo "web page: http://127.0.0.1:$(DEMO_PORT)/   API docs: http://127.0.0.1:$(DEMO_PORT)/docs"
	@if [ "$(DEMO_KEEP_SERVING)" = "1" ]; then \
		echo "still serving (DEMO_KEEP_SERVING=1); stop with: $(BIN)/crashchat serve down --state-file $(DEMO_DIR)/serve-state.json"; \
	else $(BIN)/crashchat serve down --state-file $(DEMO_DIR)/serve-state.json; fi
	@if [ "$(DEMO_CLUSTER)" = "1" ]; then $(MAKE) --no-print-directory demo-cluster; fi
	@echo "demo finished in $(DEMO_DIR): data/, model/, preprocessed/, checkpoints/, eval/, comparison/, serve-results.jsonl"
	@echo "MLflow runs: .venv/bin/mlflow ui --host 127.0.0.1 --backend-store-uri sqlite:///$(abspath $(DEMO_DIR))/mlflow.db"

# The same pipeline as one Ray job on a local multi-node cluster (make demo DEMO_CLUSTER=1).
demo-cluster: setup
	@test -d $(DEMO_DIR)/model || { echo "run make demo first"; exit 1; }
	@echo "== local cluster (cluster/local/cluster.yaml): head + cpu-decode + gpu-standin; submit jobs/pipeline.py"
	$(BIN)/crashchat cluster up --state-file $(DEMO_DIR)/cluster-state.json
	$(BIN)/crashchat submit pipeline --address http://127.0.0.1:8265 --config jobs/configs/pipeline-tiny.yaml \
		--annotations $(abspath $(DEMO_DIR))/data --video-root $(abspath $(DEMO_DIR))/data \
		--model $(abspath $(DEMO_DIR))/model --output $(abspath $(DEMO_DIR))/pipeline \
		--env MLFLOW_TRACKING_URI=sqlite:///$(abspath $(DEMO_DIR))/pipeline.db; \
	rc=$$?; $(BIN)/crashchat cluster down --state-file $(DEMO_DIR)/cluster-state.json; exit $$rc

# Learning from pixels on 2 CPU cores (about 20 minutes): results in $(OUT)/eval.
learn: setup
	@rm -rf $(OUT) && mkdir -p $(OUT)
	$(BIN)/crashchat data synth --out $(OUT)/data --config jobs/configs/synth-learn.yaml
	$(BIN)/crashchat model tiny --out $(OUT)/model --config jobs/configs/tiny-model.yaml --text $(OUT)/data
	$(BIN)/crashchat preprocess --annotations $(OUT)/data --video-root $(OUT)/data \
		--model $(OUT)/model --out $(OUT)/preprocessed --config jobs/configs/preprocess-learn.yaml
	@echo "== pre-train the tiny base (stand-in for the pretrained VideoLLaMA3)"
	MLFLOW_TRACKING_URI=sqlite:///$(abspath $(OUT))/mlflow.db $(BIN)/crashchat train \
		--config jobs/configs/tiny-learn-pretrain.yaml --data $(OUT)/preprocessed --model $(OUT)/model \
		--output $(OUT)/pretrain --mixture $(LEARN_MIX) > $(OUT)/pretrain.json
	$(BIN)/crashchat checkpoint export $(OUT)/pretrain/$(subst $(comma),__,$(LEARN_MIX)) --out $(OUT)/base
	@echo "== LoRA fine-tuning of the base on all six tasks (heterogeneous), as upstream"
	MLFLOW_TRACKING_URI=sqlite:///$(abspath $(OUT))/mlflow.db $(BIN)/crashchat train \
		--config jobs/configs/tiny-learn.yaml --data $(OUT)/preprocessed --model $(OUT)/base \
		--output $(OUT)/checkpoints --mixture heterogeneous > $(OUT)/train.json
	@echo "== evaluate on the held-out test clips"
	MLFLOW_TRACKING_URI=sqlite:///$(abspath $(OUT))/mlflow.db $(BIN)/crashchat evaluate \
		--model $(OUT)/checkpoints/heterogeneous --data $(OUT)/preprocessed --out $(OUT)/eval \
		--config jobs/configs/eval-learn.yaml > $(OUT)/eval.json
	$(BIN)/crashchat learning-bar $(OUT)/eval

comma := ,

clean:
	rm -rf $(VENV) .cache runs .pytest_cache .mypy_cache .ruff_cache
