"""The report of a training run: environment, tokenizer, data, recipe, curves, evaluation and samples, rebuilt
from what the run folder holds (`python -m shuangyu.report RUN_DIR`)."""
