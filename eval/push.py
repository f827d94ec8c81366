"""Push a checkpoint folder to the Hugging Face Hub with its model card: `python eval/push.py CKPT --hub_model_id USER/NAME`.

A thin entry point kept at the path the README documents; the code is shuangyu/sharing/push.py (also `python -m shuangyu.sharing.push`)."""

import sys

try:
    from shuangyu.errors import ctrl_c_is_one_line
except ModuleNotFoundError as err:
    if err.name != "shuangyu":
        raise
    sys.exit(
        "push.py: error: the shuangyu package is not installed: run `make install` (or `pip install -e .`) in the repository"
    )

# a Ctrl-C while the command's code imports (seconds), or one main() lets through, is one line and exit 130
with ctrl_c_is_one_line("push.py", "run it again to finish the push"):
    from shuangyu.sharing.push import main

    if __name__ == "__main__":
        sys.exit(main())
