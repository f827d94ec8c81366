"""A terminal window closed under a running command, or the reader of its output gone.

Closing the window hangs its terminal up: the foreground command gets SIGHUP, and from then on every write to the
terminal fails (EIO); a `| tee` gets SIGHUP too and dies, and writes to its pipe fail (EPIPE). A training run told to
stop saves a checkpoint first, and says so; if that line, or a progress bar's redraw a moment before the signal
came, raises, the run ends without its checkpoint. So a command that must outlive its terminal for a while lets
writes to a closed terminal or a pipe nobody reads go to /dev/null.
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


# a write's errors that say no one will read it: a closed terminal, a pipe whose reader has gone
GONE = (errno.EIO, errno.EPIPE)


def to_dev_null(fd: int) -> None:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


def leave_a_closed_terminal() -> bool:
    """Point stdout and stderr at /dev/null where they are a terminal that has been closed; a live terminal, a file
    or a pipe is left as it is. Returns whether one was closed."""
    closed = False
    for fd in (1, 2):
        try:
            os.write(fd, b"")  # a hung-up terminal refuses even an empty write; anything else takes it
        except OSError as err:
            if err.errno == errno.EIO:
                to_dev_null(fd)
                closed = True
    return closed


class _OutlivesItsReader:
    """sys.stdout or sys.stderr, whose writes to a closed terminal or a pipe nobody reads are dropped instead of
    raising (the stream's descriptor goes to /dev/null: C code writing to it stops failing too)."""

    def __init__(self, stream):
        self._stream = stream

    def _call(self, name: str, *args):
        try:
            return getattr(self._stream, name)(*args)
        except OSError as err:
            if err.errno not in GONE:
                raise
            to_dev_null(self._stream.fileno())  # a stream with a descriptor: only those fail so
            leave_a_closed_terminal()  # the other stream, when it is the same closed terminal
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
    """From here, a write of this process's to sys.stdout or sys.stderr after its terminal was closed, or its pipe's
    reader has gone, goes nowhere instead of raising. Call it before progress bars or loggers are made: they keep
    the stream they were given."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _OutlivesItsReader):
            setattr(sys, name, _OutlivesItsReader(stream))
