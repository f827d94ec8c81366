"""Clean stops: SIGTERM, Ctrl-C or a closed terminal (SIGHUP) finishes the step, saves a checkpoint and exits 0.
Before the loop there is no step to finish (SIGTERM stops at once, as Ctrl-C does); after a complete run there is
nothing left to stop."""

from __future__ import annotations

import os
import signal
import sys
import time

from shuangyu.terminal import leave_a_closed_terminal, stop_signals

_launcher_pid: int | None = None  # the process that started this one, when stop_with_the_launcher watches it


def stop_with_the_launcher() -> None:
    """Under `accelerate launch`, a launcher that dies without passing a signal on (one process: any SIGTERM; several:
    a kill -9, an out-of-memory kill) would leave its processes training on, orphaned, with no one to stop them and
    GPUs held. Ask Linux to send each process SIGTERM when the launcher dies, which saves a checkpoint and exits like
    any SIGTERM (several processes agree on it at the next logging step, as when torchrun passes a SIGTERM on).
    Not for processes started by a shell: `nohup` users expect the run to outlive their terminal."""
    global _launcher_pid
    if not os.environ.get("ACCELERATE_MIXED_PRECISION") or not sys.platform.startswith("linux"):
        return  # not started by accelerate launch
    import ctypes

    PR_SET_PDEATHSIG = 1
    _launcher_pid = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the launcher died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def echo_of_the_launchers_death(signum: int) -> bool:
    """A SIGTERM after the launcher died is Linux repeating its death signal: it sends one each time the process is
    handed to another of the dying launcher's threads (two or more under torchrun). Not a second request."""
    return signum == signal.SIGTERM and _launcher_pid is not None and os.getppid() != _launcher_pid


# a SIGTERM or SIGHUP this soon after the first stop request is that request again, not a second one: a scheduler
# that signals every process of a job (Slurm's scancel and time limit), or a closed terminal, reaches a process
# directly and through the parent that passes it on (the demo, torch's launcher), milliseconds apart. A user's second
# `kill` comes later, or is Ctrl-C
SAME_STOP_SECONDS = 2.0


def same_stop_again(signum: int, first_at: float | None) -> bool:
    """Whether a SIGTERM or SIGHUP is the stop already requested (at `first_at`) reaching this process another way."""
    if signum == signal.SIGINT or first_at is None:
        return False
    return echo_of_the_launchers_death(signum) or time.monotonic() - first_at < SAME_STOP_SECONDS


class StopRequest:
    """Turns SIGTERM/SIGINT/SIGHUP into a flag the loop checks between steps, so a preempted or interrupted run
    finishes its step, saves a checkpoint and exits cleanly. A second signal stops at once (but a SIGTERM or SIGHUP
    right after the first: same_stop_again). After a closed terminal, what the run says goes to /dev/null."""

    def __init__(self, signals=None):
        self.requested: str | None = None
        self._requested_at: float | None = None
        self._previous = {}
        for sig in signals or stop_signals():
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        leave_a_closed_terminal()  # SIGHUP, or a stop passed on by a demo whose terminal was closed
        if same_stop_again(signum, self._requested_at):
            return
        if self.requested:  # asked twice: the user means it
            self.restore()
            raise KeyboardInterrupt
        self.requested, self._requested_at = signal.Signals(signum).name, time.monotonic()

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
    import torch  # here: the commands that import this module answer --help and Ctrl-C before torch loads

    flag = torch.tensor(float(bool(stop.requested)), device=accelerator.device)
    if accelerator.reduce(flag, "max").item():
        stop.requested = stop.requested or "another process's signal"
        return True
    return False


class StopAtOnce:
    """Until the loop: SIGTERM or SIGHUP (a preemption or a closed terminal while the data is prepared or the model
    built) stops at once as Ctrl-C does, a KeyboardInterrupt, so that what the set-up was writing is removed and the
    run says so in one line; `requested` tells the two apart. The default would kill the process with no word and
    leave a half-written `.data.tmp-PID` folder."""

    def __init__(self):
        self.requested: str | None = None
        self._requested_at: float | None = None
        self._pid = os.getpid()
        self._previous = {sig: signal.signal(sig, self._handle) for sig in stop_signals() if sig != signal.SIGINT}

    def _handle(self, signum, frame):
        if os.getpid() != self._pid:  # a forked worker (datasets' pool), which its pool's terminate() ends so
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        leave_a_closed_terminal()
        if same_stop_again(signum, self._requested_at):
            return  # the set-up is stopping already: let it remove what it was writing
        self.requested, self._requested_at = signal.Signals(signum).name, time.monotonic()
        raise KeyboardInterrupt

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
