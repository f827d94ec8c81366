"""Progress bars on a terminal, plain lines in a log file.

A progress bar redraws itself with carriage returns: in a log file (`make demo > log`, nohup, a cluster job) that
is one endless line. Each command calls `bars_only_on_a_terminal()` before its work.
"""

from __future__ import annotations

import os
import sys


def bars_only_on_a_terminal() -> bool:
    """When stderr is not a terminal, turn off the progress bars of transformers (and huggingface_hub), datasets
    and, through TQDM_DISABLE, every tqdm bar that does not set `disable` itself: those of libraries imported
    after this call (tqdm reads TQDM_* defaults at import) and of child processes. Returns whether bars stay on."""
    if sys.stderr.isatty():
        return True
    os.environ.setdefault("TQDM_DISABLE", "1")
    import datasets
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    return False
