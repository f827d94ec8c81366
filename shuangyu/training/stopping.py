"""Clean stops: SIGTERM or Ctrl-C finishes the step, saves a checkpoint and exits 0."""

from __future__ import annotations

import signal

import torch


class StopRequest:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps, so a preempted or interrupted run
    finishes its step, saves a checkpoint and exits cleanly. A second signal stops at once."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.requested: str | None = None
        self._previous = {}
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested:  # asked twice: the user means it
            self.restore()
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def should_stop(stop: StopRequest, accelerator, step: int, every: int) -> bool:
    """Whether a signal asks to stop after this step. With several processes every rank must agree on the
    step, or the next collective hangs: they vote every `every` steps (a collective, so not every step)."""
    if accelerator.num_processes == 1:
        return bool(stop.requested)
    if step % every:
        return False
    flag = torch.tensor(float(bool(stop.requested)), device=accelerator.device)
    if accelerator.reduce(flag, "max").item():
        stop.requested = stop.requested or "another process's signal"
        return True
    return False
