"""One run per output folder: a lock held by the run's main process for as long as it trains, so a second
command into the same folder is refused instead of deleting the first one's temporary checkpoint or
interleaving its log."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from shuangyu.errors import UsageError
from shuangyu.files import make_folder

LOCK_FILE = ".lock"


def is_held(output_dir: Path) -> bool:
    """Whether a run on this machine holds `output_dir`'s lock now (it is training there)."""
    try:
        with open(output_dir / LOCK_FILE) as lock:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # no lock file: no run has trained here, or the folder was copied without it
        return False
    return False


class RunLock:
    def __init__(self, output_dir: Path):
        self.created = not output_dir.exists()  # by this run: `abandon` may remove it
        make_folder(output_dir, "--output_dir")
        self.path = output_dir / LOCK_FILE
        self.created_file = not self.path.exists()
        self.file = open(self.path, "a+")  # noqa: SIM115 - held open for the run's lifetime
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the OS if the process dies
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise UsageError(
                f"--output_dir {output_dir} is in use by another run ({holder}): wait for it to finish, or choose "
                "another --output_dir"
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {os.uname().nodename}")
        self.file.flush()

    def release(self) -> None:
        if not self.file.closed:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()

    def abandon(self) -> None:
        """Release the lock of a run that stopped before writing anything (a bad flag or file found in its set-up),
        so that the failed command leaves no trace: the lock file goes if this run made it, and so does the folder
        if this run made it and nothing else is in it. A folder holding anything else is left as it is."""
        folder = self.path.parent
        if self.created_file and not self.file.closed and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
            self.path.unlink(missing_ok=True)  # while still held: no other command can have taken the folder
            if self.created:
                try:
                    folder.rmdir()
                except OSError:  # something appeared in it meanwhile: it stays
                    pass
        self.release()
