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
import stat
import sys


def stop_signals() -> tuple[int, ...]:
    """The signals that stop a command cleanly: SIGTERM, Ctrl-C, and SIGHUP (a closed terminal) unless it is ignored,
    as `nohup` does to ask a command to outlive its terminal (a handler would undo that)."""
    hang_up = () if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN else (signal.SIGHUP,)
    return (signal.SIGTERM, signal.SIGINT, *hang_up)


def to_dev_null(fd: int) -> None:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


def nobody_reads(err: OSError, fd: int) -> bool:
    """Whether a write to `fd` failed because no one will read it: EIO from a terminal (a character device: a closed
    one), EPIPE from a pipe or socket whose reader has gone. EIO from a file is a failing disk: not this."""
    try:
        mode = os.fstat(fd).st_mode  # works on a hung-up terminal
    except OSError:
        return False
    if err.errno == errno.EIO:
        return stat.S_ISCHR(mode)
    return err.errno == errno.EPIPE and (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode))


def leave_a_closed_terminal() -> bool:
    """Point stdout and stderr at /dev/null where they are a terminal that has been closed; a live terminal, a file
    or a pipe is left as it is. Returns whether one was closed."""
    closed = False
    for fd in (1, 2):
        try:
            os.write(fd, b"")  # a hung-up terminal refuses even an empty write; anything else takes it
        except OSError as err:
            if err.errno == errno.EIO and nobody_reads(err, fd):
                to_dev_null(fd)
                closed = True
    return closed


def write_unless_nobody_reads(stream, write, *args):
    """`write(*args)` on `stream` (a text or binary stream with a descriptor); if no one will read it any more (a
    closed terminal, a pipe whose reader has gone), the descriptor goes to /dev/null and the write is dropped."""
    try:
        return write(*args)
    except OSError as err:
        try:
            fd = stream.fileno()
        except (OSError, ValueError):  # no descriptor (a test's capture): not a terminal or a pipe
            fd = -1
        if not nobody_reads(err, fd):
            raise
        to_dev_null(fd)  # C code writing to it stops failing too
        leave_a_closed_terminal()  # the other stream, when it is the same closed terminal
    try:  # once more, to /dev/null: the stream's buffer still holds what failed
        return write(*args)
    except OSError:
        return None


class _OutlivesItsReader:
    """sys.stdout or sys.stderr, whose writes to a closed terminal or a pipe nobody reads are dropped instead of
    raising. Its `.buffer` is the stream's own: write_unless_nobody_reads guards a write to it."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        written = write_unless_nobody_reads(self._stream, self._stream.write, text)
        return len(text) if written is None else written

    def writelines(self, lines):
        return write_unless_nobody_reads(self._stream, self._stream.writelines, lines)

    def flush(self):
        return write_unless_nobody_reads(self._stream, self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def outlive_a_closed_terminal() -> None:
    """From here, a write of this process's to sys.stdout or sys.stderr after its terminal was closed, or its pipe's
    reader has gone, goes nowhere instead of raising. Call it before progress bars or loggers are made: they keep
    the stream they were given (a logger made before writes to the raw one; logging swallows its errors, and the
    first guarded write sends the descriptor to /dev/null)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _OutlivesItsReader):
            setattr(sys, name, _OutlivesItsReader(stream))
