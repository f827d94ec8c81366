"""Train Shuangyu's byte-level BPE tokenizer on Chinese + English text: `python tokenizer/train_bpe.py --help`.

A thin entry point kept at the path the README documents; the code is shuangyu/tokenizer/train_bpe.py (also `python -m shuangyu.tokenizer.train_bpe`)."""

import sys

try:
    from shuangyu.errors import ctrl_c_is_one_line
except ModuleNotFoundError as err:
    if err.name != "shuangyu":
        raise
    sys.exit(
        "train_bpe.py: error: the shuangyu package is not installed: run `make install` (or `pip install -e .`) in the repository"
    )

# a Ctrl-C while the command's code imports (seconds), or one main() lets through, is one line and exit 130
with ctrl_c_is_one_line("train_bpe.py"):
    from shuangyu.tokenizer.train_bpe import main

    if __name__ == "__main__":
        sys.exit(main())
