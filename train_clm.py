"""Pretrain a Shuangyu causal LM: `accelerate launch --config_file accelerate_configs/cpu.yaml train_clm.py --config configs/tiny-cpu.yaml ...`.

A thin entry point kept at the path the README documents; the code is shuangyu/training/cli.py (the flags)
and train.py (the run); also `python -m shuangyu.training.cli`."""

import sys

try:
    from shuangyu.training.cli import main
except ModuleNotFoundError as err:
    if err.name != "shuangyu":
        raise
    sys.exit(
        "train_clm.py: error: the shuangyu package is not installed: run `make install` (or `pip install -e .`) in the repository"
    )

if __name__ == "__main__":
    sys.exit(main())
