"""What must hold before a run starts: the flags it cannot do without, and an output folder it may write to."""

from __future__ import annotations

import os
from pathlib import Path

from shuangyu.errors import UsageError
from shuangyu.files import check_writable_folder
from shuangyu.training import checkpoint as ckpt
from shuangyu.training.arguments import TrainConfig


def check_run(config: TrainConfig) -> tuple[Path, Path | None]:
    """The output folder and the checkpoint to resume from (None: start afresh), after checking the flags."""
    if not config.checkpoint.output_dir:
        raise UsageError("give --output_dir")
    if not config.model.tokenizer_name:
        raise UsageError("give --tokenizer_name (a folder written by tokenizer/train_bpe.py)")
    if not (config.train.max_steps or config.train.max_train_tokens):
        raise UsageError("give --max_steps or --max_train_tokens")
    out = Path(config.checkpoint.output_dir)
    check_output_dir(out, config.checkpoint.overwrite_output_dir, config.checkpoint.resume_from_checkpoint)
    if config.hub.push_to_hub:
        from shuangyu.training.hub import check_hub

        check_hub(config.hub)
    warn = print if is_first_process() else (lambda message: None)
    return out, ckpt.resolve_resume(out, config.checkpoint.resume_from_checkpoint, warn)


def is_first_process() -> bool:
    """Rank 0 of a launch (or a plain run): the process that speaks for the run."""
    return int(os.environ.get("RANK", "0")) == 0


def check_output_dir(out: Path, overwrite: bool, resume: str | None) -> None:
    """Refuse to train over another run unless resuming it or told to overwrite it, and a folder that cannot be
    written, before the work rather than after it."""
    check_writable_folder(out, "--output_dir")
    holds_run = ckpt.complete_checkpoints(out) or (out / "final").exists()
    if holds_run and not resume and not overwrite:
        raise UsageError(
            f"--output_dir {out} holds another run; pass --resume_from_checkpoint latest to continue it, "
            "or --overwrite_output_dir to start over"
        )
