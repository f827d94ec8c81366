"""train_clm.py's command: read and check the flags and the output folder, then import the training stack and run.

    accelerate launch --config_file accelerate_configs/cpu.yaml train_clm.py --config configs/tiny-cpu.yaml ...
    accelerate launch -m shuangyu.training.cli ...          # the same, as a module

The loop (train.py) imports torch, transformers' models, datasets and accelerate: 10-15 s of every process's
start on a small CPU. A mistyped flag, a bad YAML value or an output folder that holds another run is answered
before that, in a few seconds, by every process of a launch alike (one of them says it).
"""

from __future__ import annotations

import sys
import time

from shuangyu.errors import UsageError, print_error, print_interrupted
from shuangyu.terminal import outlive_a_closed_terminal
from shuangyu.training.arguments import parse_args
from shuangyu.training.checks import check_run, is_first_process

PROG = "train_clm.py"
SAY_IT_FIRST_S = 10


def main(argv: list[str] | None = None) -> int:
    outlive_a_closed_terminal()  # a closed terminal stops the run (SIGHUP): its checkpoint must not fail on a print
    try:
        config = parse_args(argv, PROG)
        out, resume_dir = check_run(config)
        # the heavy imports, for a run that can start
        from shuangyu.training.train import train
    except UsageError as err:
        first = is_first_process()
        status = print_error(PROG, err, show=first)
        if not first:
            # every process meets the same error; the launcher stops them all when one exits, so the others wait
            # for the first to say it (it exits at once, ending the wait)
            time.sleep(SAY_IT_FIRST_S)
        return status
    except KeyboardInterrupt:  # in the checks or the imports' seconds: nothing is written before train() sets up
        return print_interrupted(PROG, "nothing was written", show=is_first_process())

    return train(config, out, resume_dir)


if __name__ == "__main__":
    sys.exit(main())
