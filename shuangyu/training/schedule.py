"""Learning-rate schedules, by name: transformers' curves, read so that each step trains at the rate named here.

Step k (1 to max_steps, the k-th optimizer update) trains at peak * k / warmup_steps while k < warmup_steps (step 1
at peak/warmup_steps, never 0), at the peak at step warmup_steps, and then follows the schedule's decay, which
reaches peak * min_lr_ratio at the last step (the rate is 0 only there, and only with --min_lr_ratio 0).
--warmup_steps 0 is read as 1: step 1 trains at the peak and the decay takes the steps after it (read as 0, step 1
would already be one step into the decay, and a 1-step run would train only at the floor).
A warmup as long as the run reaches the peak at its last step; a longer one never does (warmup_note says so)."""

from __future__ import annotations

from functools import partial

from torch.optim.lr_scheduler import LambdaLR
from transformers import get_scheduler, get_wsd_schedule

from shuangyu.training.arguments import ScheduleArguments

SCHEDULES = ("cosine", "warmup_stable_decay", "linear", "constant_with_warmup")


def warmup_note(args: ScheduleArguments, max_steps: int, peak: float) -> str | None:
    """A note when the warmup is not shorter than the run (a short trial of a config meant for a long run, say
    `--max_steps 8` on a YAML with 20 warmup steps): the learning rate never decays, nor reaches its peak before
    the last step."""
    if args.warmup_steps < max_steps:
        return None
    if args.warmup_steps == max_steps:
        what = f"reaches its peak ({peak:g}) only at the last step and never decays"
    else:
        what = f"never reaches its peak ({peak:g}) nor decays"
    return (
        f"note: --warmup_steps {args.warmup_steps} is not below the run's {max_steps} step{'s' * (max_steps != 1)}: "
        f"the learning rate {what}; give a smaller --warmup_steps for a short run"
    )


def step_rate(done: int, *, warmup_steps: int, after) -> float:
    """The share of the peak for the update after `done` updates (LambdaLR's count: the loop steps the scheduler
    after each update, so `done` is 0 while step 1 trains). transformers' rules give update `done` the rate that
    belongs to the update after it (step 1 trained at 0) and start warmup_stable_decay's warmup at the floor:
    the warmup here is the same straight line from 0 for every schedule, the rest is transformers'."""
    step = done + 1
    return step / warmup_steps if step < warmup_steps else after(step)


def build_scheduler(optimizer, args: ScheduleArguments, max_steps: int) -> LambdaLR:
    """The schedule `args.lr_scheduler_type` over `max_steps` optimizer steps, a LambdaLR (module doc: the rates).

    `cosine`: linear warmup, then a half cosine down to `min_lr_ratio` of the peak.
    `linear`: warmup, then a straight line down to `min_lr_ratio` of the peak.
    `constant_with_warmup`: warmup, then the peak to the end (no `min_lr_ratio`).
    `warmup_stable_decay`: warmup, a constant stretch, then a cosine decay over the last `decay_fraction`
    of the steps, or over all the steps after the warmup if fewer (so a run can be extended from any point of the
    stable stretch)."""
    # warmup 0 is warmup 1 (module doc): step 1 at the peak, not one step into the decay
    name, warmup, floor = args.lr_scheduler_type, max(1, args.warmup_steps), args.min_lr_ratio
    after_warmup = max(1, max_steps - warmup)  # one when the warmup fills the run: its last step is the peak
    if name == "cosine":
        curve = get_scheduler("cosine_with_min_lr", optimizer, warmup, warmup + after_warmup, {"min_lr_rate": floor})
    elif name in ("warmup_stable_decay", "linear"):
        decay = min(after_warmup, max(1, round(args.decay_fraction * max_steps))) if name != "linear" else after_warmup
        shape = "cosine" if name == "warmup_stable_decay" else "linear"  # transformers' linear would end at 0
        curve = get_wsd_schedule(
            optimizer, warmup, decay, num_stable_steps=after_warmup - decay, decay_type=shape, min_lr_ratio=floor
        )
    elif name == "constant_with_warmup":  # --min_lr_ratio other than its default is refused (arguments.check_values)
        curve = get_scheduler(name, optimizer, warmup, max_steps)
    else:
        raise ValueError(f"--lr_scheduler_type {name!r}: choose one of {', '.join(SCHEDULES)}")
    # a new LambdaLR on the same optimizer (its peak rates stay in "initial_lr"); a partial, as transformers' own
    # rules are, saves nothing of its own in a checkpoint: a resume's schedule is the command's
    rules = [partial(step_rate, warmup_steps=warmup, after=rule) for rule in curve.lr_lambdas]
    return LambdaLR(optimizer, rules)


def follow_schedule(scheduler) -> None:
    """Set the optimizer's rates to the schedule's for the step it is at. A resume loads the rates the checkpoint's
    optimizer was left with: the old schedule's where the command gives another (a resume's schedule is the
    command's own), so its first step trained at the old rate and only the next followed the new schedule."""
    step, groups = scheduler.last_epoch, scheduler.optimizer.param_groups
    for group, base, rule in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * rule(step)
