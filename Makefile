# CrashChat Platform. `make demo` and `make test` work from a clean clone: each creates .venv.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements/lock.txt | sha1sum | cut -c1-12)
DEMO_DIR ?= runs/demo
DEMO_PORT ?= 8000
OUT ?= runs/learn
DEMO_MLFLOW = sqlite:///$(abspath $(DEMO_DIR))/mlflow.db
LEARN_MIX := crash_recognition,crash_localization,pre_crash_localization

# Nothing may reach a model hub at run time; compiled ops are cached inside the project.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup test lint typecheck pytest chaos demo demo-cluster learn pretrain-base tiny-base clean help browser

help:
	@echo "make demo   - set up .venv and run the end-to-end demo (synthetic data, tiny model)"
	@echo "make test   - set up .venv, lint, type-check and run the tests"
	@echo "make demo DEMO_CLUSTER=1 - also run the pipeline as a Ray job on a local 3-node cluster"
	@echo "make learn  - show learning from pixels on CPU: synth, LoRA from the kept base, evaluate (OUT=dir)"
	@echo "make tiny-base - rebuild the kept tiny pretrained base (platform/crashchat/models/assets/tiny-base)"

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
	$(BIN)/python -m pytest -q -m "not gpu" --durations=15 $(PYTEST_ARGS)

# The chaos benchmark's quick mode with its checks (tests/test_chaos.py) alone; about 3-4
# minutes (make test runs it too).
chaos: setup
	$(BIN)/python -m pytest -q -m chaos $(PYTEST_ARGS)

test: lint typecheck pytest

demo: setup
	@rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR)
	@date +%s > $(DEMO_DIR)/.started
	@echo "== 1/7 synthesise 120 crash/normal clips (jobs/configs/synth-demo.yaml)"
	$(BIN)/crashchat data synth --out $(DEMO_DIR)/data --config jobs/configs/synth-demo.yaml
	@echo "== 2/7 validate the annotations against the videos; install the kept tiny pretrained base"
	$(BIN)/crashchat data validate $(DEMO_DIR)/data --video-root $(DEMO_DIR)/data
	$(BIN)/crashchat model base --out $(DEMO_DIR)/model
	@echo "== 3/7 preprocess on Ray Data: probe, decode, processor -> Parquet clips + samples"
	$(BIN)/crashchat preprocess --annotations $(DEMO_DIR)/data --video-root $(DEMO_DIR)/data \
		--model $(DEMO_DIR)/model --out $(DEMO_DIR)/preprocessed --config jobs/configs/preprocess-learn.yaml
	@echo "== 4/7 LoRA fine-tuning, two strategies (monotask, perception group) on Ray Train + DeepSpeed, in MLflow"
	MLFLOW_TRACKING_URI=$(DEMO_MLFLOW) $(BIN)/crashchat train \
		--config jobs/configs/tiny-demo.yaml --data $(DEMO_DIR)/preprocessed --model $(DEMO_DIR)/model \
		--output $(DEMO_DIR)/checkpoints --mixture crash_recognition --mixture perception_centric > $(DEMO_DIR)/train.json
	@echo "== 5/7 evaluate both (one through its registry alias) and the untuned base on the test clips"
	MLFLOW_TRACKING_URI=$(DEMO_MLFLOW) $(BIN)/crashchat evaluate \
		--model models:/crashchat-tiny@crash_recognition --model $(DEMO_DIR)/checkpoints/perception_centric \
		--data $(DEMO_DIR)/preprocessed --out $(DEMO_DIR)/eval --config jobs/configs/eval-demo.yaml > $(DEMO_DIR)/eval.json
	MLFLOW_TRACKING_URI=$(DEMO_MLFLOW) $(BIN)/crashchat evaluate \
		--model $(DEMO_DIR)/model --data $(DEMO_DIR)/preprocessed \
		--out $(DEMO_DIR)/eval/baseline --config jobs/configs/eval-demo.yaml \
		--set 'tasks=[crash_recognition,pre_crash_localization,crash_localization]' > $(DEMO_DIR)/eval-baseline.json
	@echo "== 6/7 compare the strategies (table + chart) and check that they learned"
	MLFLOW_TRACKING_URI=$(DEMO_MLFLOW) $(BIN)/crashchat compare \
		--experiment crashchat-tiny-demo --reference paper --out $(DEMO_DIR)/comparison > $(DEMO_DIR)/compare.json
	$(BIN)/crashchat learning-bar $(DEMO_DIR)/eval/crash_recognition $(DEMO_DIR)/eval/perception_centric \
		> $(DEMO_DIR)/learning-bar.json
	@echo "== 7/7 Ray Serve: a replica group per checkpoint behind a router; bulk request over the test clips"
	$(BIN)/crashchat serve up --checkpoints $(DEMO_DIR)/checkpoints --config serve/tiny.yaml \
		--best $(DEMO_DIR)/comparison/best_checkpoints.json --set prompts=$(DEMO_DIR)/data/prompts.json \
		--set preprocess.fps=2 --set preprocess.max_frames=12 \
		--allowed-root $(DEMO_DIR)/data --port $(DEMO_PORT) \
		--detach --state-file $(DEMO_DIR)/serve-state.json > $(DEMO_DIR)/serve.json
	$(BIN)/crashchat serve batch --url http://127.0.0.1:$(DEMO_PORT)/ --annotations $(DEMO_DIR)/data \
		--split test --tasks crash_recognition,pre_crash_localization,crash_localization \
		--out $(DEMO_DIR)/serve-results.jsonl \
		|| { $(BIN)/crashchat serve down --state-file $(DEMO_DIR)/serve-state.json; exit 1; }
	@echo "web page: http://127.0.0.1:$(DEMO_PORT)/   API docs: http://127.0.0.1:$(DEMO_PORT)/docs"
	@if [ "$(DEMO_KEEP_SERVING)" = "1" ]; then \
		echo "still serving (DEMO_KEEP_SERVING=1); stop with: $(BIN)/crashchat serve down --state-file $(DEMO_DIR)/serve-state.json"; \
	else $(BIN)/crashchat serve down --state-file $(DEMO_DIR)/serve-state.json; fi
	@if [ "$(DEMO_CLUSTER)" = "1" ]; then $(MAKE) --no-print-directory demo-cluster; fi
	@echo "demo finished in $$(( $$(date +%s) - $$(cat $(DEMO_DIR)/.started) )) s; in $(DEMO_DIR): data/, model/, preprocessed/, checkpoints/, eval/, comparison/ (comparison.md, comparison.png), serve-results.jsonl"
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

# Learning from pixels on 2 CPU cores: results in $(OUT)/eval. It starts from the kept tiny
# pretrained base (platform/crashchat/models/assets/tiny-base); LEARN_FROM_SCRATCH=1 pre-trains
# a random tiny model first, as `make tiny-base` does (about 35 minutes).
learn: setup
	@rm -rf $(OUT) && mkdir -p $(OUT)
	$(BIN)/crashchat data synth --out $(OUT)/data --config jobs/configs/synth-learn.yaml
	@if [ "$(LEARN_FROM_SCRATCH)" = "1" ]; then $(MAKE) --no-print-directory pretrain-base BASE_WORK=$(OUT) \
		&& cp -r $(OUT)/base $(OUT)/model; else $(BIN)/crashchat model base --out $(OUT)/model; fi
	$(BIN)/crashchat preprocess --annotations $(OUT)/data --video-root $(OUT)/data \
		--model $(OUT)/model --out $(OUT)/preprocessed --config jobs/configs/preprocess-learn.yaml
	@echo "== LoRA fine-tuning of the base on all six tasks (heterogeneous), as upstream"
	MLFLOW_TRACKING_URI=sqlite:///$(abspath $(OUT))/mlflow.db $(BIN)/crashchat train \
		--config jobs/configs/tiny-learn.yaml --data $(OUT)/preprocessed --model $(OUT)/model \
		--output $(OUT)/checkpoints --mixture heterogeneous > $(OUT)/train.json
	@echo "== evaluate on the held-out test clips"
	MLFLOW_TRACKING_URI=sqlite:///$(abspath $(OUT))/mlflow.db $(BIN)/crashchat evaluate \
		--model $(OUT)/checkpoints/heterogeneous --data $(OUT)/preprocessed --out $(OUT)/eval \
		--config jobs/configs/eval-learn.yaml > $(OUT)/eval.json
	$(BIN)/crashchat learning-bar $(OUT)/eval

# The tiny pretrained base: a random tiny model pre-trained on the perception tasks of 800
# synthetic clips (vision frozen), as the 7B is pretrained before CrashChat's LoRA. BASE_WORK holds
# the run; the result is written to the package's asset folder with its manifest.
BASE_WORK ?= runs/tiny-base
pretrain-base: setup
	@mkdir -p $(BASE_WORK)
	@test -d $(BASE_WORK)/data || $(BIN)/crashchat data synth --out $(BASE_WORK)/data --config jobs/configs/synth-learn.yaml
	$(BIN)/crashchat model tiny --out $(BASE_WORK)/random --config jobs/configs/tiny-model.yaml --text $(BASE_WORK)/data
	$(BIN)/crashchat preprocess --annotations $(BASE_WORK)/data --video-root $(BASE_WORK)/data \
		--model $(BASE_WORK)/random --out $(BASE_WORK)/preprocessed-base --config jobs/configs/preprocess-learn.yaml
	@echo "== pre-train the tiny base (stand-in for the pretrained VideoLLaMA3)"
	MLFLOW_TRACKING_URI=sqlite:///$(abspath $(BASE_WORK))/mlflow.db $(BIN)/crashchat train \
		--config jobs/configs/tiny-learn-pretrain.yaml --data $(BASE_WORK)/preprocessed-base \
		--model $(BASE_WORK)/random --output $(BASE_WORK)/pretrain --mixture $(LEARN_MIX) > $(BASE_WORK)/pretrain.json
	$(BIN)/crashchat checkpoint export $(BASE_WORK)/pretrain/$(subst $(comma),__,$(LEARN_MIX)) --out $(BASE_WORK)/base

tiny-base: setup
	@rm -rf $(BASE_WORK) && mkdir -p $(BASE_WORK)
	$(MAKE) --no-print-directory pretrain-base BASE_WORK=$(BASE_WORK)
	$(BIN)/python -c "import json,sys; r=json.load(open('$(BASE_WORK)/pretrain.json'))['results'][0]; \
		json.dump({'command': 'make tiny-base', 'seed': {'data': 0, 'model': 0, 'train': 0}, \
		'configs': ['jobs/configs/synth-learn.yaml', 'jobs/configs/tiny-model.yaml', 'jobs/configs/preprocess-learn.yaml', \
		'jobs/configs/tiny-learn-pretrain.yaml'], 'mixture': r['mixture'], 'steps': r['steps'], \
		'best_step': r['best_step'], 'eval_loss': r['best_eval_loss']}, open('$(BASE_WORK)/provenance.json', 'w'), indent=2)"
	$(BIN)/python -c "import json; from crashchat.config import PreprocessConfig, load_config; \
		from crashchat.evaluation.base_check import check_loss; p=json.load(open('$(BASE_WORK)/provenance.json')); \
		p['check'] = check_loss('$(BASE_WORK)/base', '$(BASE_WORK)/check', load_config('jobs/configs/preprocess-learn.yaml', PreprocessConfig)); \
		json.dump(p, open('$(BASE_WORK)/provenance.json', 'w'), indent=2)"
	$(BIN)/crashchat model pack-base --model $(BASE_WORK)/base --provenance $(BASE_WORK)/provenance.json

comma := ,

clean:
	rm -rf $(VENV) .cache runs .pytest_cache .mypy_cache .ruff_cache
