"""The demo's signals to a step's processes: a stop passed on, Ctrl-Z and `fg`, and the demo's own death.

Each step runs in a session of its own, so that a Ctrl-C at the terminal reaches the demo alone and the demo decides
what the step is told (demo.Steps.run): what the terminal would have done for the step is done here.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

import psutil


def tell_the_step(process: subprocess.Popen, signum: int, launcher: bool) -> None:
    """Ask the step to stop: SIGINT for Ctrl-C, else SIGTERM (SIGHUP too: save and stop). Under a launcher only its
    training processes are told: a launcher that sees a signal reports it as a failure, one that sees its processes
    exit does not."""
    sent = signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM
    try:
        if not launcher:
            os.killpg(process.pid, sent)  # the step and its workers, as a terminal would
            return
        workers = psutil.Process(process.pid).children()
        for worker in workers:
            worker.send_signal(sent)
        if not workers:  # a launcher still starting: SIGTERM ends it quietly
            process.send_signal(signal.SIGTERM)
    except (psutil.NoSuchProcess, ProcessLookupError):
        pass  # it has exited already


def to_the_whole_step(process: subprocess.Popen, sent: int) -> None:
    """`sent` to the step and every process under it (torch's launcher starts each worker in a session of its own)."""
    try:
        under = psutil.Process(process.pid).children(recursive=True)
        os.killpg(process.pid, sent)
    except (psutil.NoSuchProcess, ProcessLookupError):
        return  # it has exited already
    for child in under:
        try:
            child.send_signal(sent)
        except psutil.NoSuchProcess:
            pass


_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def end_with_the_demo() -> None:
    """Run in the step's process before it starts: Linux sends it SIGTERM if the demo dies without passing a signal on
    (kill -9, out of memory), as the terminal's hang-up would have. Only a call looked up before the fork (no import,
    no lock: the fork may have copied a lock another thread of the demo held)."""
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
