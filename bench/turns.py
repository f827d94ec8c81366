"""Several benchmark processes on one GPU: they compile side by side, then each times its steps alone.

Compiling a 124M model takes about a minute of mostly CPU work, its timed steps a few seconds of GPU work, and a
lent GPU comes for minutes. So `bench/gpu_suite.py` starts a group of processes at once; each warms up (compiles),
says so with a file, waits until every member of the group has warmed up or exited, then times its steps
holding an exclusive lock, so no other member's compilation, autotuning or steps share the GPU with it.

The group is named by the environment: BENCH_TURNS=FOLDER:SIZE and BENCH_TURN_NAME=NAME (a member); the process
that starts the group writes FOLDER/gone-NAME when a member exits, so a member that failed before warming up
does not keep the others waiting (it stops a member still compiling after a while). The starter may hold
FOLDER/lock itself while other GPU work runs (bench/configs.py checks), so no member times beside it. Without
BENCH_TURNS, `my_turn()` does nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import random
import time
from pathlib import Path

WAIT_LIMIT_S = 900  # a member that hangs must not stall the suite past its lease


def group() -> tuple[Path, int, str] | None:
    spec, name = os.environ.get("BENCH_TURNS"), os.environ.get("BENCH_TURN_NAME")
    if not spec or not name:
        return None
    folder, size = spec.rsplit(":", 1)
    return Path(folder), int(size), name


def members_done(folder: Path) -> set[str]:
    """Members that warmed up or exited."""
    return {p.name.split("-", 1)[1] for p in folder.glob("ready-*")} | {
        p.name.split("-", 1)[1] for p in folder.glob("gone-*")
    }


@contextlib.contextmanager
def my_turn():
    """Wait for the whole group to be warm, then hold the GPU alone for the timed steps. Yields a dict whose
    "alone" says whether every other member had finished warming up (False only past WAIT_LIMIT_S)."""
    found = group()
    if found is None:
        yield {"alone": True}
        return
    folder, size, name = found
    free_cached_memory()  # what it holds while it waits is what the members still compiling can use
    (folder / f"ready-{name}").touch()
    deadline = time.monotonic() + WAIT_LIMIT_S
    while len(members_done(folder)) < size and time.monotonic() < deadline:
        time.sleep(0.2)
    with open(folder / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield {"alone": len(members_done(folder)) >= size}
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def free_cached_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def warm_up(step, attempts: int = 30):
    """Run a warm-up step; out of device memory while other members are warming up too, free what this one
    holds and try again a little later (the compiled code is kept, so a retry does not compile again)."""
    import torch

    for attempt in range(attempts):
        try:
            return step()
        except Exception as err:  # compilation wraps the device's out-of-memory error in its own
            out_of_memory = isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()
            if not out_of_memory or group() is None or attempt == attempts - 1:
                raise
            free_cached_memory()
            time.sleep(random.uniform(2, 6))
