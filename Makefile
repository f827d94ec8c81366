# Two commands do everything on a fresh machine:
#   make demo   install (once), then the whole flow on the sample corpus: tokenizer, data, pretraining,
#               evaluation, instruction tuning, report (python -m shuangyu.demo; run it again to resume)
#   make test   install (once), then run the test suite
PYTHON ?= python3
SHARED ?= ../shared
CORPUS ?= $(SHARED)/data/corpus
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: install install-llama-cpp llama-cpp-wheel install-transformers4 demo tokenizer train-tiny sft-tiny sft-tiny-lora dpo-tiny test test-slow lint format bench-tokenizer

install: .make-installed

# torch first: `torch==2.13.0` resolves to a local CPU wheel; anything else pulls GBs of CUDA packages.
.make-installed: requirements.txt pyproject.toml
	$(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -r requirements.txt
	$(PYTHON) -m pip install --no-deps --no-build-isolation -e .  # the shuangyu package, editable: see pyproject.toml
	$(PYTHON) -m shuangyu.evaluation.local_tasks  # lm-eval task YAMLs for the local benchmark copies (they name lm-eval's path)
	touch $@

# the whole flow on the sample corpus; DEMO_FLAGS="--device cpu" forces the CPU recipe on a GPU machine,
# DEMO_FLAGS="--amx off" fp32 on a CPU with AMX
demo: install
	$(PYTHON) -m shuangyu.demo $(DEMO_FLAGS)

# the steps one by one (as in the README): a 32k tokenizer, then the tiny model on 2 CPU processes

tokenizer: install
	$(PYTHON) tokenizer/train_bpe.py \
	  --files "zh=$(CORPUS)/zh/*.jsonl:0.5" "en=$(CORPUS)/en/*.jsonl:0.5" --exclude "*_val.jsonl" \
	  --validation_files "zh=$(CORPUS)/zh/*_val.jsonl" "en=$(CORPUS)/en/*_val.jsonl" \
	  --max_bytes 40MB --vocab_size 32000 --output_dir outputs/tokenizer --overwrite

train-tiny: install
	$(PYTHON) -m accelerate.commands.launch --config_file accelerate_configs/cpu.yaml train_clm.py \
	  --config configs/tiny-cpu.yaml --tokenizer_name outputs/tokenizer --output_dir outputs/tiny-cpu \
	  --overwrite_output_dir

# instruction tuning of the tiny model (after `make tokenizer train-tiny`): full SFT, or a LoRA adapter merged into a folder; DPO
sft-tiny: install
	$(PYTHON) -m accelerate.commands.launch --config_file accelerate_configs/cpu.yaml train_clm.py \
	  --config configs/sft-tiny-cpu.yaml --model_name_or_path outputs/tiny-cpu/final --output_dir outputs/sft-tiny \
	  --overwrite_output_dir
	$(PYTHON) -m shuangyu.chat outputs/sft-tiny/final --prompt "给出三个保持健康的秘诀。"

sft-tiny-lora: install
	$(PYTHON) -m accelerate.commands.launch --config_file accelerate_configs/cpu.yaml train_clm.py \
	  --config configs/sft-tiny-cpu.yaml --model_name_or_path outputs/tiny-cpu/final --output_dir outputs/sft-tiny-lora \
	  --lora_r 16 --learning_rate 1e-2 --overwrite_output_dir
	$(PYTHON) -m shuangyu.training.merge_lora outputs/sft-tiny-lora/final outputs/sft-tiny-lora-merged --overwrite

dpo-tiny: install
	$(PYTHON) -m shuangyu.training.dpo --config configs/dpo-tiny-cpu.yaml

# tests in parallel processes (pytest-xdist), one per core up to 4: most tests wait on subprocesses (accelerate
# launch, the CLIs), so a single process leaves a core idle; TEST_WORKERS=0 runs them in this process. The 25
# slowest are listed at the end (each process a test starts spends 10-15 s importing torch and transformers on
# a small CPU: that, not the test's own work, is most of the suite's time)
TEST_WORKERS ?= auto
test: install
	$(PYTHON) -m pytest -n $(TEST_WORKERS) --maxprocesses 4 --durations 25

# The other runtimes the slow tests check our exports with (skipped without them; CI installs both):
# llama.cpp itself, for the GGUF (tests/test_model_gguf.py). llama-cpp-python is on PyPI as source only: this
# compiles llama.cpp's CPU library (cmake and a C++ compiler) without its tools and multimodal library, and
# unoptimised (-O0): the tests run tiny models, and it builds in 1.6 minutes on 2 cores instead of 3.3 (-O1: 2.2).
# Not for real use: install llama.cpp itself for that.
# `make llama-cpp-wheel` only compiles, into .llama-cpp-wheels/, which install-llama-cpp then takes: CI compiles at
# the lowest priority while the fast suite runs, filling the cores while its tests wait on their subprocesses.
LLAMA_CPP_BUILD = CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DCMAKE_C_FLAGS_RELEASE=-O0 -DCMAKE_CXX_FLAGS_RELEASE=-O0" \
  CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc)
LLAMA_CPP_WHEELS = .llama-cpp-wheels

install-llama-cpp: install
	$(LLAMA_CPP_BUILD) $(PYTHON) -m pip install $(if $(wildcard $(LLAMA_CPP_WHEELS)),--find-links $(LLAMA_CPP_WHEELS)) \
	  -r requirements-llama-cpp.txt

llama-cpp-wheel:
	$(LLAMA_CPP_BUILD) $(PYTHON) -m pip wheel --no-deps -w $(LLAMA_CPP_WHEELS) -r requirements-llama-cpp.txt

# transformers 4.x in its own environment (.transformers4/), for the exported LlamaForCausalLM folder
# (tests/test_model_sharing.py); about 30 s
install-transformers4:
	$(PYTHON) -m venv .transformers4
	.transformers4/bin/python -m pip install -q -r requirements-transformers4.txt

# the slow end-to-end tests (the demo, compile, flex attention, the tiny-cpu preset learning), the longest
# first: 10 minutes on a shared 2-core AMD EPYC (the demo's test alone 6); the timeout only stops a hung run
test-slow: install
	timeout 1800 $(PYTHON) -m pytest -m slow -n $(TEST_WORKERS) --maxprocesses 4 --durations 25

lint: install
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m ruff check .

format: install
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .

bench-tokenizer: install
	$(PYTHON) bench/tokenizer.py --corpus $(CORPUS) --write_results
