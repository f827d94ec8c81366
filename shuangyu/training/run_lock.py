"""One run per output folder: a lock held by the run's main process for as long as it trains, so a second
command into the same folder is refused instead of deleting the first one's temporary checkpoint or
interleaving its log."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from shuangyu.errors import UsageError

LOCK_FILE = ".lock"


class RunLock:
    def __init__(self, output_dir: Path):
        output_dir.mkdir(parents=True, exist_ok=True)
        self.path = output_dir / LOCK_FILE
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
