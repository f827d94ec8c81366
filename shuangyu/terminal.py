"""A terminal window closed under a running command.

Closing the window hangs its terminal up: the foreground command gets SIGHUP, and from then on every write to the
terminal fails (EIO). A training run told to stop saves a checkpoint first, and says so; if that line, or a progress
bar's redraw a moment before the signal came, raises, the run ends without its checkpoint. So a command that must
outlive its terminal for a while lets writes to a closed one go to /dev/null.
"""

from __future__ import annotations

import errno
import os
import signal
import sys


def stop_signals() -> tuple[int, ...]:
    """The signals that stop a command cleanly: SIGTERM, Ctrl-C, and SIGHUP (a closed terminal) unless it is ignored,
    as `nohup` does to ask a command to outlive its terminal (a handler would undo that)."""
    hang_up = () if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN else (signal.SIGHUP,)
    return (signal.SIGTERM, signal.SIGINT, *hang_up)


def leave_a_closed_terminal() -> bool:
    """Point stdout and stderr at /dev/null where they are a terminal that has been closed; a live terminal, a file
    or a pipe is left as it is. Returns whether one was closed."""
    closed = False
    for fd in (1, 2):
        try:
            os.write(fd, b"")  # a hung-up terminal refuses even an empty write; anything else takes it
        except OSError as err:
            if err.errno != errno.EIO:
                continue
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)
            closed = True
    return closed


class _OutlivesItsTerminal:
    """sys.stdout or sys.stderr, whose writes to a closed terminal are dropped instead of raising."""

    def __init__(self, stream):
        self._stream = stream

    def _call(self, name: str, *args):
        try:
            return getattr(self._stream, name)(*args)
        except OSError as err:
            if err.errno != errno.EIO or not leave_a_closed_terminal():
                raise
        try:  # once more, to /dev/null: the stream's buffer still holds what failed
            return getattr(self._stream, name)(*args)
        except OSError:
            return len(args[0]) if args else None

    def write(self, text):
        return self._call("write", text)

    def flush(self):
        return self._call("flush")

    def __getattr__(self, name):
        return getattr(self._stream, name)


def outlive_a_closed_terminal() -> None:
    """From here, a write of this process's to sys.stdout or sys.stderr after its terminal was closed goes nowhere
    instead of raising. Call it before progress bars or loggers are made: they keep the stream they were given."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _OutlivesItsTerminal):
            setattr(sys, name, _OutlivesItsTerminal(stream))
