"""The demo's view of an `accelerate launch` step's stderr: the step's own lines, without the launcher's report.

When a training process stops with an error (or, before its loop, for Ctrl-C), it has already said why in one line;
torch's elastic agent then adds its own log lines (`E1204 ... failed (exitcode: 2)`) and a `ChildFailedError`
traceback with a `train_clm.py FAILED` block, and accelerate's one-process launcher a `CalledProcessError`. Those
repeat the exit status the demo reports anyway, so they are dropped. Every other line passes, a training process's
own traceback (a bug) included. Progress bars pass at once: only a line that could start a report is held.
"""

from __future__ import annotations

import os
import re
import sys
import threading

from shuangyu.terminal import write_unless_nobody_reads

AGENT_LOG = re.compile(rb"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S*torch/distributed/")  # glog-style, from torch
LAUNCHER_FRAME = b"accelerate/commands/launch.py"
LAUNCHER_ERRORS = (b"ChildFailedError", b"SignalException", b"CalledProcessError")
TRACEBACK = b"Traceback (most recent call last):"


class LauncherReportFilter:
    """Fed the bytes of a step's stderr as they come, writes them on except the launcher's report."""

    def __init__(self, write):
        self.write = write
        self.line = b""  # the start of a line that could begin a report, held until its end
        self.passing = False  # the current line was let through already (a progress bar): pass the rest
        self.traceback: list[bytes] | None = None  # a traceback being read, to be judged at its last line
        self.rules_left = 0  # the `=====` lines of a ChildFailedError's FAILED block still to drop

    def feed(self, data: bytes) -> None:
        while data:
            if self.passing:
                end = data.find(b"\n")
                if end < 0:
                    self.write(data)
                    return
                self.write(data[: end + 1])
                self.passing, data = False, data[end + 1 :]
                continue
            held = self.line + data
            end = held.find(b"\n")
            if end < 0:
                self.line = held
                if self.traceback is None and not self.rules_left and held[:1] not in b"TIWEF=":
                    self.write(held)  # cannot start a report: a progress bar shows at once
                    self.line, self.passing = b"", True
                return
            self.line, data = b"", held[end + 1 :]
            self.judge(held[: end + 1])

    def judge(self, line: bytes) -> None:
        text = line.rstrip(b"\r\n")
        if self.traceback is not None:
            self.traceback.append(line)
            if text[:1] in (b" ", b"\t"):  # a frame: the exception's line comes last
                return
            lines, self.traceback = self.traceback, None
            launchers = any(LAUNCHER_FRAME in frame for frame in lines) and any(e in text for e in LAUNCHER_ERRORS)
            if not launchers:
                self.write(b"".join(lines))
            elif b"ChildFailedError" in text:
                self.rules_left = 2  # its message goes on in a block between two ===== lines
        elif self.rules_left:
            self.rules_left -= text.startswith(b"=====")
        elif text == TRACEBACK:
            self.traceback = [line]
        elif not AGENT_LOG.match(text):
            self.write(line)

    def close(self) -> None:
        """The end of the output: what is held was no report after all."""
        self.write(b"".join(self.traceback or []) + self.line)
        self.traceback, self.line = None, b""


def open_stderr_for_a_step() -> tuple[int, int]:
    """(read end, write end) for a step's stderr: a pseudo-terminal when ours is a terminal, so the step keeps its
    progress bars (progress.bars_only_on_a_terminal asks isatty), else a pipe, so a log file keeps plain lines."""
    if not sys.stderr.isatty():
        return os.pipe()
    import fcntl
    import pty
    import termios

    try:
        read_end, write_end = pty.openpty()
    except OSError:  # no free pseudo-terminal (a container may allow none): plain lines, as in a log file
        return os.pipe()
    try:
        attributes = termios.tcgetattr(write_end)
        attributes[1] &= ~termios.OPOST  # bytes as written: no "\n" -> "\r\n"
        termios.tcsetattr(write_end, termios.TCSANOW, attributes)
        size = fcntl.ioctl(sys.stderr.fileno(), termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(write_end, termios.TIOCSWINSZ, size)  # bars as wide as the real terminal
    except OSError:
        os.close(read_end)
        os.close(write_end)
        return os.pipe()
    return read_end, write_end


def copy_without_the_launchers_report(read_end: int) -> threading.Thread:
    """Copy a step's stderr from `read_end` to ours in a thread, dropping the launcher's report; join it once the step
    has exited (it ends when every process of the step has closed the other end)."""
    out = sys.stderr.buffer

    def write(data: bytes) -> None:
        # the copy goes on reading whatever becomes of our stderr (closed with the terminal, `| tee` ended with it, a
        # full disk), or the step blocks on a full pipe before it saves
        try:
            write_unless_nobody_reads(out, out.write, data)
            write_unless_nobody_reads(out, out.flush)
        except OSError:
            pass

    def copy() -> None:
        report = LauncherReportFilter(write)
        try:
            while True:
                try:
                    data = os.read(read_end, 65536)
                except OSError:  # a pseudo-terminal with no writer left reads as EIO
                    data = b""
                if not data:
                    break
                report.feed(data)
            report.close()
        finally:
            os.close(read_end)

    thread = threading.Thread(target=copy, name="step-stderr", daemon=True)
    thread.start()
    return thread
