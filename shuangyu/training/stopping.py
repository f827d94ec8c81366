"""Clean stops: SIGTERM or Ctrl-C finishes the step, saves a checkpoint and exits 0. Before the loop there is no
step to finish (SIGTERM stops at once, as Ctrl-C does); after a complete run there is nothing left to stop."""

from __future__ import annotations

import os
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


class StopAtOnce:
    """Until the loop: SIGTERM (a preemption while the data is prepared or the model built) stops at once as Ctrl-C
    does, a KeyboardInterrupt, so that what the set-up was writing is removed and the run says so in one line;
    `requested` tells the two apart. The default would kill the process with no word and leave a half-written
    `.data.tmp-PID` folder."""

    def __init__(self):
        self.requested: str | None = None
        self._pid = os.getpid()
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        if os.getpid() != self._pid:  # a forked worker (datasets' pool), which its pool's terminate() ends so
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.requested = signal.Signals(signum).name
        raise KeyboardInterrupt

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
