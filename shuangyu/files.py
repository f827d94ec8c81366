"""Writing folders whole or not at all, and reading sizes such as 500MB or 2.5B."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from shuangyu.errors import UsageError, exception_chain


@contextmanager
def atomic_folder(dest: str | Path, tmp: str | Path | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of `dest` to fill; on success it replaces `dest` (renamed into place), on any
    error it is removed and `dest` is left as it was. A crash leaves only a dot-named `.NAME.tmp-PID` folder
    (or `tmp`, a name of the caller's choice, for writers in several processes), which readers skip, and which the
    next write of `dest` removes once that process is gone. The old `dest`, if any, is moved aside before the rename
    and deleted after it."""
    dest = Path(dest)
    make_folder(dest.parent)
    remove_leftovers_of_dead_writers(dest)
    tmp = Path(tmp) if tmp is not None else dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    old = dest.parent / f".{dest.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    make_folder(tmp, exist_ok=False)
    try:
        yield tmp
        readable_as_umask_allows(tmp)
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def make_folder(folder: Path, flag: str = "", exist_ok: bool = True) -> None:
    """Create `folder` and its parents, with one that cannot be made (no permission, a read-only mount, a pseudo
    file system such as /proc that root's os.access calls writable) as one line naming `flag`, or the folder."""
    try:
        folder.mkdir(parents=True, exist_ok=exist_ok)
    except OSError as err:
        if is_disk_full(err) or isinstance(err, FileExistsError):  # the first is disk_full_is_one_line's to say
            raise
        where = f"{flag} {folder}" if flag else str(folder)
        raise UsageError(f"{where}: cannot be created ({err.strerror}): choose a folder you can write to") from None


def readable_as_umask_allows(folder: Path) -> None:
    """Give each file under `folder` the read/write bits the user's umask allows, as a plain open() would:
    transformers' save_pretrained writes model.safetensors 0600 (through a private temporary file), so teammates
    on a shared machine could not load a model this repo published. Bits a file already has are kept."""
    umask = os.umask(0)
    os.umask(umask)
    allowed = 0o666 & ~umask
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            mode = path.stat().st_mode & 0o7777
            if mode | allowed != mode:
                path.chmod(mode | allowed)


def remove_leftovers_of_dead_writers(dest: Path) -> None:
    """Remove the `.NAME.tmp-PID` folders that killed writers of `dest` left (a preemption while the data was
    prepared left a whole partial copy). Only those whose process is gone: a writer still at work keeps its own."""
    import psutil

    for leftover in dest.parent.glob(f".{dest.name}.tmp-*"):
        pid = leftover.name.rsplit("-", 1)[1]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):  # another user's process counts as alive too
            shutil.rmtree(leftover, ignore_errors=True)


def check_replaceable(
    dest: str | Path, source: str | Path, source_name: str, overwrite: bool, marker: str | None = None
) -> None:
    """Before writing `dest` whole (atomic_folder, or a file renamed into place): refuse to replace it unless
    `overwrite`, and always when it is, or holds, the `source` being read (replacing it would delete it), or,
    given a `marker` file (config.json for a model folder), when it is a folder of other files: --overwrite
    means "replace my earlier output", not "delete whatever is there"."""
    check_holds_no_input(dest, [(source_name, source)])
    if holds(source, dest):  # the source folder would change, and be copied or pushed with its own export
        raise UsageError(f"{dest}: inside {source_name} {Path(source).resolve()}; name a folder outside it")
    dest = Path(dest)
    if marker and dest.is_dir() and not (dest / marker).is_file() and any(dest.iterdir()):
        shown = ", ".join(sorted(p.name for p in dest.iterdir())[:3])
        raise UsageError(
            f"{dest} holds other files ({shown}) and no {marker}: not replaced, even with --overwrite (only an "
            "earlier output or an empty folder is); name a new one"
        )
    if dest.exists() and not overwrite:
        raise UsageError(f"{dest} exists; pass --overwrite to replace it")


def holds(folder: str | Path, path: str | Path) -> bool:
    """Whether `path` is `folder` or lies inside it (links resolved): replacing or deleting `folder` removes it."""
    folder, path = Path(folder).resolve(), Path(path).resolve()
    return folder == path or folder in path.parents


def check_holds_no_input(dest: str | Path, inputs: Iterable[tuple[str, str | Path]], flag: str = "") -> None:
    """Refuse, whatever --overwrite says, to write `dest` whole when it is, or holds, one of the `inputs` (pairs of
    what it is and its path) being read: replacing `dest` would delete it. `flag` names `dest` in the message."""
    for input_name, path in inputs:
        if holds(dest, path):
            path = Path(path).resolve()
            if not flag:
                raise UsageError(f"{dest}: is or holds {input_name} {path}; name a new one")
            raise UsageError(
                f"{flag} {dest} is or holds {input_name} {path}, which replacing the folder would delete: choose "
                f"another {flag}"
            )


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a file through a temporary name, so a reader never sees half of it."""
    path = Path(path)
    make_folder(path.parent)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kKmMgGbBtT]?)(i?B)?\s*$")
_SCALE = {"": 0, "k": 1, "m": 2, "g": 3, "b": 3, "t": 4}


def parse_size(text: str | int, flag: str) -> int:
    """A positive size in bytes (--max_bytes and the like): a number with an optional k, M, G or B (billion), T
    multiplier and an optional byte unit, so `500M`, `200MB`, `2GB` and `1.5GiB` all read as expected. A multiplier
    followed by `iB` counts in powers of 1024; a bare number is taken as it is. Counts of tokens: parse_count."""
    match = _SIZE_RE.match(str(text))
    if not match:
        raise UsageError(f"{flag} {text!r}: expected a number such as 500M, 2.5B, 200MB or 2GB")
    number, multiplier, unit = match.groups()
    if multiplier.lower() == "b" and unit:  # "2BB" and "2BiB" mean nothing
        raise UsageError(f"{flag} {text!r}: expected a number such as 500M, 2.5B, 200MB or 2GB")
    if not multiplier and unit and unit != "B":
        raise UsageError(f"{flag} {text!r}: expected a number such as 500M, 2.5B, 200MB or 2GB")
    base = 1024 if unit == "iB" else 1000
    value = int(float(number) * base ** _SCALE[multiplier.lower()])
    if value <= 0:
        raise UsageError(f"{flag} {text!r}: must be positive")
    return value


_COUNT_RE = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgGbBtT]?)\s*(i?B)?\s*$")
COUNT_EXAMPLES = "300M, 1.5B or 2000000"


def parse_count(text: str | int, flag: str) -> int:
    """A positive whole number of tokens: a number with an optional k, M, G or B (billion), T multiplier. Unlike
    parse_size no byte unit: `5GB` read as 5B tokens, `1.5` as one token, `-5B` as a flag, each without a word."""
    from decimal import Decimal

    match = _COUNT_RE.match(str(text))
    if not match:
        raise UsageError(f"{flag} {text!r}: expected a number of tokens such as {COUNT_EXAMPLES}")
    number, multiplier, unit = match.groups()
    if unit:
        raise UsageError(f"{flag} {text!r}: a size in bytes; give a number of tokens such as {COUNT_EXAMPLES}")
    value = Decimal(number) * 1000 ** _SCALE[multiplier.lower()]  # exact: 1.1B is 1100000000, not ...0.0002
    if value <= 0:
        raise UsageError(f"{flag} {text!r}: must be positive; give a number of tokens such as {COUNT_EXAMPLES}")
    if value != value.to_integral_value():
        raise UsageError(f"{flag} {text!r}: not a whole number of tokens; give one such as {COUNT_EXAMPLES}")
    return int(value)


def check_writable_folder(path: str | Path, flag: str, named: str | Path | None = None) -> None:
    """Refuse, before any work, an output folder that is a file or cannot be created or written. `named`: what
    the user gave, where that is a file to be written in `path` (export --to gguf's DST)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file, not a folder: choose another path")
    shown = path if named is None else Path(named)  # the messages name what the user gave
    probe = path
    while not probe.exists():  # the nearest folder that exists is where the new one would be created
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{flag} {shown}: {probe} is a file, so the folder cannot be created there")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {shown}: {probe} is not writable: choose a folder you can write to")
    try:  # os.access is not the last word: it tells root that /proc and /sys are writable, yet nothing can be made there
        os.rmdir(tempfile.mkdtemp(prefix=".shuangyu-write-check-", dir=probe))
    except OSError as err:
        raise UsageError(
            f"{flag} {shown}: {probe} is not writable (creating a folder there failed: {err.strerror}): choose a "
            "folder you can write to"
        ) from None


@contextmanager
def disk_full_is_one_line(folder: str | Path, flag: str = "--output_dir") -> Iterator[None]:
    """A full disk while writing `folder` as one line (a UsageError). Used inside atomic_folder, so that the
    half-written folder is removed first."""
    try:
        yield
    except Exception as err:
        if not is_disk_full(err):
            raise
        raise UsageError(
            f"no space left on the device while writing {folder}; nothing was written: free space or choose "
            f"another {flag}"
        ) from None


def is_disk_full(err: BaseException) -> bool:
    """A write that failed for lack of space, anywhere in `err`'s chain of causes: libraries wrap the OSError in
    their own errors (datasets), or report it as a plain Exception with the OS's text (tokenizers); torch's zip
    writer raises a RuntimeError without errno, and in torch 2.13 its "iostream error" is only the context of an
    "unexpected pos" error raised while handling it."""
    import errno

    for cause in exception_chain(err):
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(cause).lower()
        if "no space left" in text or "quota exceeded" in text or "iostream error" in text:
            return True
    return False
