"""The outcomes a user must be told about in one line, and the exit statuses the commands give for them.

`UsageError` is the one type for "the user asked for something that cannot run": a bad flag, a file that is
not there or not readable, a folder that holds another run. Commands print it as `PROG: error: MESSAGE` and
exit with `EXIT_USAGE`, before any heavy work where it can be checked then. A training run that diverged is
not a usage error: it is reported as `RunDiverged`, with its own status, so scripts can tell the two apart.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from contextlib import contextmanager

EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C


class UsageError(ValueError):
    """Bad input named by the user: the message names the file or flag and says what to do."""


class RunDiverged(RuntimeError):
    """Training stopped on too many non-finite steps in a row; its checkpoints before them are kept."""


def print_error(prog: str, err: Exception, show: bool = True) -> int:
    """Print `err` as one line on stderr (unless `show` is False: another process of the run says it); return
    the exit status for it."""
    kind = "stopped" if isinstance(err, RunDiverged) else "error"
    if show:
        print(f"{prog}: {kind}: {err}", file=sys.stderr, flush=True)
    return EXIT_DIVERGED if isinstance(err, RunDiverged) else EXIT_USAGE


def print_interrupted(prog: str, what_is_left: str, show: bool = True) -> int:
    """Ctrl-C as one line that says what is left on disk (unless `show` is False: another process of the run
    says it); return the exit status for it."""
    if show:
        print(f"\n{prog}: interrupted; {what_is_left}", file=sys.stderr, flush=True)
    return EXIT_INTERRUPTED


@contextmanager
def ctrl_c_is_one_line(prog: str, what_is_left: str = "nothing was left half written", show: bool = True):
    """For a command's `if __name__ == "__main__":` block (and the thin wrappers): a Ctrl-C that escapes main(), or
    lands while main is imported, is the one line and exit 130, not a KeyboardInterrupt traceback. `what_is_left`
    must be true at any moment: before main runs, and after it wrote its output (main says more where it can); the
    default is true of a command that writes each output whole or not at all."""
    try:
        try:
            yield
        except KeyboardInterrupt:
            sys.exit(print_interrupted(prog, what_is_left, show))
    except SystemExit as end:
        if end.code == EXIT_INTERRUPTED:  # a second Ctrl-C while it exits (multiprocessing's clean-up) ends it
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # at once and quietly, not as a traceback
        raise


def left_whole(path) -> str:
    """What Ctrl-C leaves of an output written whole or not at all (atomic_folder): the earlier PATH untouched, or,
    where there was none, nothing ("left as it was" read as if an earlier one was kept)."""
    return f"{path} was left as it was" if os.path.lexists(path) else f"nothing was written to {path}"


_ctrl_c_seen = False


@contextmanager
def ctrl_c_remembered():
    """Within it, Ctrl-C raises KeyboardInterrupt as always and is also remembered: Python ignores an exception
    raised inside a __del__ (one in the regex module's, during garbage collection, took a Ctrl-C and prepare ran on
    to the end, exit 0); `stop_if_ctrl_c_was_seen` raises it again where the work can stop cleanly. A SIGINT left
    ignored (a command started in the background) stays ignored."""
    global _ctrl_c_seen
    _ctrl_c_seen = False
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:
        yield
        return

    def on_ctrl_c(signum, frame):
        global _ctrl_c_seen
        _ctrl_c_seen = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _ctrl_c_seen = False  # outside the block nothing asks, and a later call must not see this one's


def stop_if_ctrl_c_was_seen() -> None:
    if _ctrl_c_seen:
        raise KeyboardInterrupt


_forks_leave_ctrl_c_to_the_parent = False


def _ignore_ctrl_c_if_asked() -> None:
    if _forks_leave_ctrl_c_to_the_parent:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


os.register_at_fork(after_in_child=_ignore_ctrl_c_if_asked)


@contextmanager
def forks_leave_ctrl_c_to_this_process():
    """Processes forked within it (datasets' pool for `map(num_proc=N)` and the manager process it talks to) ignore
    SIGINT from birth. The terminal sends Ctrl-C to every process of the group: a pool process then printed its own
    KeyboardInterrupt traceback, and a manager stopped by it left the pool's processes unable to reach it and the
    command hung. This process stops the pool (datasets terminates it on the way out)."""
    global _forks_leave_ctrl_c_to_the_parent
    before, _forks_leave_ctrl_c_to_the_parent = _forks_leave_ctrl_c_to_the_parent, True
    try:
        yield
    finally:
        _forks_leave_ctrl_c_to_the_parent = before


def closest_flag(parser, unknown: list[str]) -> str:
    """ "; did you mean --files?" for the first unknown flag that is near one the parser knows, else ""."""
    known = [option for option in parser._option_string_actions if option.startswith("--")]
    for word in unknown:
        if word.startswith("--"):
            near = closest_name(word.split("=", 1)[0], known)
            if near:
                return f"; did you mean {near}?"
    return ""


def closest_name(word: str, known) -> str | None:
    """The name in `known` that `word` is a near miss of (a typo, - for _), else None."""
    import difflib

    near = difflib.get_close_matches(word, list(known), n=1, cutoff=0.8)
    return near[0] if near else None


def refuse_repeated_flags(parser, words: list[str]) -> None:
    """UsageError for a list flag given twice: argparse keeps the last list without a word, so `--files A --files B`
    read B alone. A single-value flag given again replaces the value, as in most commands (`$BASE --max_steps 8`
    overrides a script's base flags, and tests and scripts do that); an append flag adds. Words after `--` are no
    flags."""
    first: dict[argparse.Action, str] = {}  # the flag as first typed
    for action, word in typed_flags(parser, words):
        if isinstance(action, argparse._AppendAction):  # append and extend: meant to repeat
            continue
        if not (action.nargs in ("+", "*") or (isinstance(action.nargs, int) and action.nargs > 1)):
            continue
        if action in first:
            raise UsageError(f"{first[action]} given twice: list all values after one {first[action]}")
        typed = word.split("=", 1)[0]
        first[action] = typed if typed in action.option_strings else action.option_strings[0]  # --fil: --files


def typed_flags(parser, words: list[str]):
    """(action, word) for each flag among command-line `words`, as argparse reads them (abbreviations,
    --flag=value, --flag-name for --flag_name; -5 is a value); words after `--` are no flags."""
    for word in words:
        if word == "--":
            break
        found = parser._parse_optional(word)
        if isinstance(found, list):  # Python 3.12.7+ returns a list of candidates
            found = found[0] if found else None
        if found and found[0] is not None:
            yield found[0], word


def refuse_in_one_line(parser):
    """Make an argparse (or HfArgumentParser) parser raise UsageError for a bad flag instead of printing its whole
    usage above the message: the message already names the flag, and `--help` shows the rest. An
    HfArgumentParser's flags that no dataclass knows are refused the same way (it raises a bare ValueError), and
    so is a list flag given twice (refuse_repeated_flags), for every command built on it."""

    def error(message):
        raise UsageError(f"{message} (see --help)")

    parser.error = error
    known_args = parser.parse_known_args  # parse_args and parse_args_into_dataclasses both go through it

    def parse_known_args(args=None, namespace=None):
        words = sys.argv[1:] if args is None else list(args)
        refuse_repeated_flags(parser, words)
        return known_args(words, namespace)

    parser.parse_known_args = parse_known_args
    into_dataclasses = getattr(parser, "parse_args_into_dataclasses", None)
    if into_dataclasses is not None:

        def parse_args_into_dataclasses(*args, return_remaining_strings=False, **kwargs):
            *parsed, unknown = into_dataclasses(*args, return_remaining_strings=True, **kwargs)
            if return_remaining_strings:
                return (*parsed, unknown)
            if unknown:
                raise UsageError(f"unknown arguments {' '.join(unknown)}{closest_flag(parser, unknown)} (see --help)")
            return tuple(parsed)

        parser.parse_args_into_dataclasses = parse_args_into_dataclasses
    return parser


def exception_chain(err: BaseException):
    """`err` and the exceptions it was raised from or while handling, innermost last (a chain can loop)."""
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        yield err
        err = err.__cause__ or err.__context__
