"""Warnings other libraries raise that a user can neither act on nor avoid, each dropped only around the call that
raises it (the cause is in a library we pin, not in the user's command or ours)."""

from __future__ import annotations

import contextlib
import warnings


@contextlib.contextmanager
def reading_the_old_checkpointing_name():
    """Around PEFT wrapping a model (get_peft_model, PeftModel.from_pretrained) and TRL's trainers: PEFT 0.21 and
    TRL 1.16 read `model.is_gradient_checkpointing`, which transformers 5.2x renamed to `is_activation_checkpointing`
    and warns about at every read. A stock transformers model warns the same; only those libraries can change it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        yield
