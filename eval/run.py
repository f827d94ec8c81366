"""Evaluate a checkpoint folder (lm-eval tasks, held-out bits per byte): `python eval/run.py CKPT --tasks ...`.

A thin entry point kept at the path the README documents; the code is shuangyu/evaluation/run.py (also `python -m shuangyu.evaluation.run`)."""

import sys

try:
    from shuangyu.errors import ctrl_c_is_one_line
    from shuangyu.progress import bars_only_on_a_terminal
except ModuleNotFoundError as err:
    if err.name != "shuangyu":
        raise
    sys.exit(
        "eval/run.py: error: the shuangyu package is not installed: run `make install` (or `pip install -e .`) in the repository"
    )

# a Ctrl-C while the command's code imports (seconds), or one main() lets through, is one line and exit 130
with ctrl_c_is_one_line("eval/run.py"):
    bars_only_on_a_terminal()  # first: tqdm reads its TQDM_* defaults when it is imported
    from shuangyu.evaluation.run import main

    if __name__ == "__main__":
        sys.exit(main())
