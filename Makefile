# Two commands do everything on a fresh machine:
#   make demo   install (once), then train a zh+en tokenizer on the sample corpus and print its report
#   make test   install (once), then run the test suite
PYTHON ?= python3
SHARED ?= ../shared
CORPUS ?= $(SHARED)/data/corpus
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: install demo test lint bench-tokenizer

install: .make-installed

# torch first: `torch==2.13.0` resolves to a local CPU wheel; anything else pulls GBs of CUDA packages.
.make-installed: requirements.txt
	$(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -r requirements.txt
	touch $@

demo: install
	$(PYTHON) tokenizer/train_bpe.py \
	  --files "zh=$(CORPUS)/zh/*.jsonl:0.5" "en=$(CORPUS)/en/*.jsonl:0.5" --exclude "*_val.jsonl" \
	  --validation_files "zh=$(CORPUS)/zh/*_val.jsonl" "en=$(CORPUS)/en/*_val.jsonl" \
	  --max_bytes 40MB --vocab_size 32000 --output_dir outputs/tokenizer --overwrite

test: install
	$(PYTHON) -m pytest

lint: install
	$(PYTHON) -m ruff check .

bench-tokenizer: install
	$(PYTHON) bench/tokenizer.py --corpus $(CORPUS)
