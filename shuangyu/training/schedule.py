"""Learning-rate schedules, by name, through transformers' schedulers (no hand-written LR curves)."""

from __future__ import annotations

from transformers import get_scheduler

from shuangyu.training.arguments import ScheduleArguments

SCHEDULES = ("cosine", "warmup_stable_decay", "linear", "constant_with_warmup")


def build_scheduler(optimizer, args: ScheduleArguments, max_steps: int):
    """The schedule `args.lr_scheduler_type` over `max_steps` optimizer steps.

    `cosine`: linear warmup, then a half cosine down to `min_lr_ratio` of the peak.
    `linear`: warmup, then a straight line down to `min_lr_ratio` of the peak.
    `constant_with_warmup`: warmup, then the peak to the end (no `min_lr_ratio`).
    `warmup_stable_decay`: warmup, a constant stretch, then a cosine decay over the last `decay_fraction`
    of the steps (so a run can be extended from any point of the stable stretch)."""
    name, warmup_steps, min_lr_ratio = args.lr_scheduler_type, args.warmup_steps, args.min_lr_ratio
    if name == "cosine":
        return get_scheduler("cosine_with_min_lr", optimizer, warmup_steps, max_steps, {"min_lr_rate": min_lr_ratio})
    if name == "warmup_stable_decay":
        decay = max(1, round(args.decay_fraction * max_steps))
        return get_scheduler(
            "warmup_stable_decay",
            optimizer,
            warmup_steps,
            max_steps,
            {"num_decay_steps": decay, "min_lr_ratio": min_lr_ratio},
        )
    if name == "linear":
        # transformers' linear ends at 0; its warmup-stable-decay with no stable stretch is the same line ending at
        # min_lr_ratio (its warmup starts there too, as warmup_stable_decay's does)
        return get_scheduler(
            "warmup_stable_decay",
            optimizer,
            warmup_steps,
            max_steps,
            {"num_decay_steps": max(1, max_steps - warmup_steps), "decay_type": "linear", "min_lr_ratio": min_lr_ratio},
        )
    if name == "constant_with_warmup":  # --min_lr_ratio other than its default is refused (arguments.check_values)
        return get_scheduler(name, optimizer, warmup_steps, max_steps)
    raise ValueError(f"--lr_scheduler_type {name!r}: choose one of {', '.join(SCHEDULES)}")
