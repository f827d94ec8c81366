"""Train Shuangyu's byte-level BPE tokenizer on Chinese + English text: `python tokenizer/train_bpe.py --help`.

A thin entry point kept at the path the README documents; the code is shuangyu/tokenizer/train_bpe.py (also `python -m shuangyu.tokenizer.train_bpe`)."""

import sys

try:
    from shuangyu.tokenizer.train_bpe import main
except ModuleNotFoundError as err:
    if err.name != "shuangyu":
        raise
    sys.exit(
        "train_bpe.py: error: the shuangyu package is not installed: run `make install` (or `pip install -e .`) in the repository"
    )

if __name__ == "__main__":
    sys.exit(main())
