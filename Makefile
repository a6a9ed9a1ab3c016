# tlpipe: `make run` runs the pipeline on the embedded default data, `make test` runs the test suite.
# The virtual environment lives outside the checkout, keyed by the lock file's hash: it is built once and
# reused by every clone until requirements.lock changes.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3.11
LOCK_HASH := $(shell cat requirements.lock benchmarks/requirements.txt | sha256sum | cut -c1-12)
CACHE_DIR ?= $(HOME)/.cache/tlpipe
VENV ?= $(CACHE_DIR)/venv-$(LOCK_HASH)
TOOLS_VENV ?= $(CACHE_DIR)/tools-venv-$(shell sha256sum infra/requirements-tools.txt 2>/dev/null | cut -c1-12)
STAMP := $(VENV)/.tlpipe-installed
export PATH := $(VENV)/bin:$(PATH)
export CHECKOV_BIN ?= $(TOOLS_VENV)/bin/checkov
export PYTHONPATH := $(CURDIR)
export TF_CPP_MIN_LOG_LEVEL ?= 3
export GX_ANALYTICS_ENABLED ?= false
export MPLBACKEND ?= Agg
IMAGE ?= ghcr.io/tlpipe/tlpipe
TAG ?= 0.1.0
DIGEST ?=
GPU_DIGEST ?=
IMAGE_REF = $(IMAGE)$(if $(DIGEST),@$(DIGEST),:$(TAG))
PACKAGE ?= pipelines/training_pipeline.yaml
GIT_COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
# Cluster settings shared by compile and submit (empty = the defaults in pipelines/platform.py).
CLUSTER_FLAGS = $(if $(PULL_SECRET),--image-pull-secret $(PULL_SECRET)) $(if $(PIPELINE_ROOT),--pipeline-root $(PIPELINE_ROOT)) \
                $(if $(S3_ENDPOINT),--aws-endpoint-url $(S3_ENDPOINT)) $(if $(MLFLOW_URI),--mlflow-uri $(MLFLOW_URI)) \
                $(if $(LEGACY),--legacy-backend)
PYTEST_ARGS ?=
# pytest-xdist workers for `make test`: much of the suite waits on subprocesses and servers, so two workers
# on two cores took 13 min where one process took 35 (TEST_WORKERS=0: one process, as before)
TEST_WORKERS ?= 2

.PHONY: help venv tools system-deps dvc.yaml clean-cache run test test-fast lint review promote rollback status predict \
        compile run-local submit bench readme-numbers image image-gpu clean clean-registry study

help: ## list the targets
	@grep -E '^[a-zA-Z_.-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

# No file prerequisites on purpose: a fresh clone's files are all newer than the stamp, and the folder name
# already carries the lock's hash, so an existing stamp means "this exact lock is installed".
$(STAMP):
	@echo "creating $(VENV) (once per requirements.lock; takes a few minutes)"
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.lock
	# tf_keras: the benchmarks' ImageDataGenerator baseline only (not in the image); --no-deps keeps tensorflow-cpu
	$(VENV)/bin/pip install --quiet --no-deps -r benchmarks/requirements.txt
	touch $(STAMP)

venv: $(STAMP) ## create/reuse the virtual environment (no reinstall when nothing changed)

$(TOOLS_VENV)/.installed:
	rm -rf $(TOOLS_VENV)
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install --quiet -r infra/requirements-tools.txt
	touch $@

tools: $(TOOLS_VENV)/.installed ## infra linters (checkov) in their own environment

system-deps: ## Debian packages the tests use (PostgreSQL server, Chromium, kubectl)
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "installing postgresql"; apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; fi
	@if ! command -v chromium >/dev/null 2>&1; then \
	  echo "installing chromium (review page browser test)"; apt-get update -qq && apt-get install -y -qq chromium >/dev/null; fi
	@if ! command -v kubectl >/dev/null 2>&1; then \
	  echo "installing kubectl"; apt-get update -qq && apt-get install -y -qq kubernetes-client >/dev/null; fi

dvc.yaml: venv ## validate params.yaml, then regenerate dvc.yaml from pipelines/graph.py and params.yaml
	python -m pipelines.dvc_yaml

run: venv ## run the pipeline (dvc repro) on data.source (default: the embedded digits)
	python -m pipelines.dvc_yaml  # checks params.yaml first: a typo stops here, before DVC deletes outputs
	TLPIPE_RUN_GROUP=$${TLPIPE_RUN_GROUP:-repro-$$(date +%Y%m%d-%H%M%S)} dvc repro
	@python -m operators.summary  # last: the score, the registry version and the next command (all metrics: dvc metrics show)

test: venv tools system-deps lint ## lint (ruff, formatting, pyright), then the whole test suite (slow end-to-end tests included)
	pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: venv ## unit tests only (skips tests marked slow/servers/infra)
	pytest -m "not slow and not servers and not infra" $(PYTEST_ARGS)

lint: venv tools ## ruff, ruff format --check, and pyright in basic mode ([tool.pyright] in pyproject.toml)
	ruff check components tlpipe operators pipelines tests benchmarks
	ruff format --check components tlpipe operators pipelines tests benchmarks
	$(TOOLS_VENV)/bin/pyright --pythonpath $(VENV)/bin/python

review: venv ## review @challenger (VERSION=N for another) against today's @champion -> reports/review/review.html
	python -m operators.review --version $${VERSION:-@challenger} --out reports/review

promote: venv ## re-run the gate against today's @champion, then promote: make promote VERSION=3 REASON="why" [FORCE=1]
	@test -n "$(VERSION)" -a -n "$(REASON)" || { echo 'usage: make promote VERSION=N REASON="why" [FORCE=1]'; exit 2; }
	python -m operators.registry promote $(VERSION) --reason "$(REASON)" $(if $(FORCE),--force)

rollback: venv ## point @champion back at @previous: make rollback REASON="why"
	@test -n "$(REASON)" || { echo 'usage: make rollback REASON="why"'; exit 2; }
	python -m operators.registry rollback --reason "$(REASON)"

study: venv ## the Optuna study tune stored: its real name, trials, and how to open it (optuna.load_study, optuna-dashboard)
	python -m operators.study

status: venv ## registry versions with aliases, gate status and test accuracy
	python -m operators.registry status

predict: venv ## predictions of @champion on a folder: make predict IMAGES=dir [VERSION=N] [OUT=file.csv]
	@test -n "$(IMAGES)" || { echo 'usage: make predict IMAGES=folder [VERSION=N|@alias] [OUT=file.csv]'; exit 2; }
	python -m operators.registry predict "$(IMAGES)" --version $${VERSION:-@champion} --out $${OUT:-reports/predict/predictions.csv}

compile: venv ## compile for a cluster: make compile IMAGE=repo/name TAG=x | DIGEST=sha256:.. GPU_DIGEST=sha256:.. [PULL_SECRET= PIPELINE_ROOT= S3_ENDPOINT= MLFLOW_URI= LEGACY=1]
	@if [ -n "$(DIGEST)" ] && [ -z "$(GPU_DIGEST)" ]; then \
	  echo "error: DIGEST needs GPU_DIGEST too (the GPU tasks run the -gpu build, which has its own digest)"; exit 2; fi
	python -m pipelines.training_pipeline compile --output $(PACKAGE) --image $(IMAGE_REF) \
	  $(if $(GPU_DIGEST),--gpu-image $(IMAGE)@$(GPU_DIGEST)) $(CLUSTER_FLAGS)

run-local: venv ## run the Kubeflow pipeline here, each task as in a pod (kfp.local; needs root for the sandbox)
	python -m pipelines.training_pipeline run-local

submit: venv ## submit the package you compiled: make submit HOST=http://localhost:8080 [PACKAGE=] [NAMESPACE=] [EXPERIMENT=] [RUN_NAME=] [ARGS="--arg k=v --set a.b=c"] [WAIT=1] [ALLOW_DEFAULT_IMAGE=1]
	@test -n "$(HOST)" || { echo 'usage: make submit HOST=http://KFP-API [PACKAGE=file] [NAMESPACE=ns] [EXPERIMENT=name] [RUN_NAME=name] [ARGS="--arg k=v --set a.b=c"] [WAIT=1]'; exit 2; }
	@test -f "$(PACKAGE)" || { echo "error: $(PACKAGE) not found: run 'make compile IMAGE=... TAG=...' first"; exit 2; }
	python -m pipelines.training_pipeline submit --package $(PACKAGE) --host "$(HOST)" --experiment $${EXPERIMENT:-tlpipe} \
	  $(if $(NAMESPACE),--namespace $(NAMESPACE)) $(if $(RUN_NAME),--run-name "$(RUN_NAME)") $(if $(WAIT),--wait) \
	  $(if $(ALLOW_DEFAULT_IMAGE),--allow-default-image) $(ARGS)

# `make bench QUICK=1`: every benchmark on tiny settings (minutes, results under $(BENCH_QUICK_DIR), the committed
# benchmarks/results/ untouched): a smoke run that each one still works, not numbers to quote.
BENCH_QUICK_DIR ?= /tmp/tlpipe-bench-quick
BENCH_TINY_SET = --set make_digits.image_size=16 --set model.image_size=16 --set make_subset.train_per_class=6 \
  --set make_subset.val_per_class=4 --set make_subset.test_per_class=4 --set pretrain_backbone.epochs=1 \
  --set train_head.epochs=1 --set tune.epochs=2 --set tune.sweep=false --set fine_tune.epochs=1 --set augment.copies=1
BENCH_OUT = $(if $(QUICK),$(BENCH_QUICK_DIR),benchmarks/results)
BENCH_ARGS_input_pipeline = $(if $(QUICK),--images 8 --jpeg-width 40 --jpeg-height 30 --size 32 --batch 4 --epochs 1 \
  --fx-images 8 --fx-batch 4 --fx-repeats 1 --mobilenet-size 32)
BENCH_ARGS_tune_trials = $(if $(QUICK),--image-size 16 --train-per-class 6 --val-per-class 4 --copies 1 --pretrain-epochs 1 \
  --p1-sizes 16 --p1-epochs 2 --p1-repeats 1 --trials 2 --trial-epochs 2 --p5-seeds 42)
BENCH_ARGS_pruning = $(if $(QUICK),--seeds 42 --pruners none median --trials 3 --work $(BENCH_QUICK_DIR)/pruning $(BENCH_TINY_SET))
BENCH_ARGS_regimes = $(if $(QUICK),--seeds 5 --work $(BENCH_QUICK_DIR)/regimes $(BENCH_TINY_SET))
BENCH_ARGS_scale = $(if $(QUICK),--sizes 60 --work $(BENCH_QUICK_DIR)/scale)
BENCH_ARGS_study_cost = $(if $(QUICK),--sizes 16 --seeds 42 --trials 2 --work $(BENCH_QUICK_DIR)/study_cost $(BENCH_TINY_SET))
BENCH_ARGS_data_size = $(if $(QUICK),--quick --sizes 4 --seeds 5 --image-size 16 --work $(BENCH_QUICK_DIR)/data_size $(BENCH_TINY_SET))
BENCH_ARGS_transfer_source = $(if $(QUICK),--quick)
BENCHMARKS = input_pipeline tune_trials pruning regimes scale study_cost data_size transfer_source

bench: venv ## every benchmark -> benchmarks/results/ (QUICK=1: tiny settings, a smoke run, results in /tmp)
	$(foreach name,$(BENCHMARKS),nice -n 19 python -m benchmarks.$(name) --out $(BENCH_OUT)/$(name).json $(BENCH_ARGS_$(name)) &&) true

readme-numbers: venv ## make run in a fresh clone of HEAD -> benchmarks/results/readme_numbers.{json,md}, the README tables (with the commit), dvc.lock and the metrics files
	nice -n 19 python -m benchmarks.readme_numbers --adopt

image: ## build the CPU image (needs a Docker engine; none here)
	docker build --build-arg VARIANT=cpu --build-arg GIT_COMMIT=$(GIT_COMMIT) -t $(IMAGE):$(TAG) .

image-gpu: ## build the GPU image (tensorflow[and-cuda])
	docker build --build-arg VARIANT=gpu --build-arg GIT_COMMIT=$(GIT_COMMIT) -t $(IMAGE):$(TAG)-gpu .

clean-cache: ## remove the tuning activation cache and fine_tune checkpoints
	rm -rf checkpoints

clean: ## remove pipeline outputs (keeps the registry: mlflow.db + mlruns/, optuna.db; and the venv)
	rm -rf data reports models checkpoints .dvc/tmp
	@echo "kept mlflow.db and mlruns/ (runs, registered models, @champion history) and optuna.db: make clean-registry removes them"

# With the embedded store (tracking.default_uri: sqlite:///mlflow.db) MLflow writes run and model artifacts to
# ./mlruns: the registry's versions point there, so it goes with mlflow.db or not at all.
clean-registry: ## delete the local registry and studies (mlflow.db, mlruns/, optuna.db) after a confirmation [YES=1]
	@if [ "$(YES)" != 1 ]; then read -r -p "delete mlflow.db, mlruns/ and optuna.db (runs, registered models, @champion history, studies)? [y/N] " ok; \
	  [ "$$ok" = y ] || { echo "kept"; exit 1; }; fi
	rm -rf mlflow.db mlartifacts mlruns optuna.db optuna.journal
