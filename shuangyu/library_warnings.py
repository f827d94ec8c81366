"""Warnings other libraries raise that a user can neither act on nor avoid, each dropped only around the call that
raises it (the cause is in a library we pin, not in the user's command or ours)."""

from __future__ import annotations

import contextlib
import logging
import warnings


@contextlib.contextmanager
def reading_the_old_checkpointing_name():
    """Around PEFT wrapping a model (get_peft_model, PeftModel.from_pretrained) and TRL's trainers: PEFT 0.21 and
    TRL 1.16 read `model.is_gradient_checkpointing`, which transformers 5.2x renamed to `is_activation_checkpointing`
    and warns about at every read. A stock transformers model warns the same; only those libraries can change it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        yield


class _DropMessage(logging.Filter):
    """Drops a logger's records that start with `start`, and counts them."""

    def __init__(self, start: str):
        super().__init__()
        self.start = start
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        dropped = record.getMessage().startswith(self.start)
        self.count += dropped
        return not dropped


@contextlib.contextmanager
def _dropping(logger_name: str, start: str):
    """`logger_name`'s records that start with `start` are dropped (and counted) within the block."""
    logger = logging.getLogger(logger_name)
    drop = _DropMessage(start)
    logger.addFilter(drop)
    try:
        yield drop
    finally:
        logger.removeFilter(drop)


@contextlib.contextmanager
def checkpoints_saved_within_a_second():
    """Around the Trainer's train() with --save_total_limit: to rotate its checkpoint-N folders it sorts them by
    mtime, and when the oldest and newest were written under a second apart (a short run saving every few steps) it
    takes the times for a filesystem's fake ones, warns "mtime may not be reliable on this filesystem" and sorts them
    by N, which is the right order. Nothing is wrong and there is nothing to do; only transformers can tell the two
    cases apart."""
    with _dropping("transformers.trainer_utils", "mtime may not be reliable"):
        yield


@contextlib.contextmanager
def lm_eval_truncating_requests():
    """Around lm-eval's simple_evaluate: its Hugging Face model warns once per request longer than the model's
    context ("Combined length of context ... Truncating N tokens from the left"), so a task with long prompts filled
    the log; and the tokenizer, encoding such a request whole before lm-eval cuts it, warned of "indexing errors"
    that cannot happen. Yields lm-eval's filter: its `count` is said once by the caller."""
    with (
        _dropping("lm_eval.models.huggingface", "Combined length of context") as drop,
        _dropping("transformers.tokenization_utils_base", "Token indices sequence length is longer"),
    ):
        yield drop
