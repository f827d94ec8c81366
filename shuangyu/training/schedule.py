"""Learning-rate schedules, by name, through transformers' schedulers (no hand-written LR curves)."""

from __future__ import annotations

from transformers import get_scheduler

from shuangyu.training.arguments import ScheduleArguments

SCHEDULES = ("cosine", "warmup_stable_decay", "linear", "constant_with_warmup")


def warmup_note(args: ScheduleArguments, max_steps: int, peak: float) -> str | None:
    """A note when the warmup is not shorter than the run (a short trial of a config meant for a long run, say
    `--max_steps 8` on a YAML with 20 warmup steps): the learning rate never reaches its peak, nor decays."""
    if args.warmup_steps < max_steps:
        return None
    return (
        f"note: --warmup_steps {args.warmup_steps} is not below the run's {max_steps} step{'s' * (max_steps != 1)}: the learning rate "
        f"never reaches its peak ({peak:g}) nor decays; give a smaller --warmup_steps for a short run"
    )


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


def follow_schedule(scheduler) -> None:
    """Set the optimizer's rates to the schedule's for the step it is at. A resume loads the rates the checkpoint's
    optimizer was left with: the old schedule's where the command gives another (a resume's schedule is the
    command's own), so its first step trained at the old rate and only the next followed the new schedule."""
    step, groups = scheduler.last_epoch, scheduler.optimizer.param_groups
    for group, base, rule in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * rule(step)
