"""Checkpoints: written whole or not at all, the last K kept, incomplete ones skipped; and clean stops.

Layout under --output_dir:

    checkpoints/step-00001000/accelerate/     accelerator.save_state: model, optimizer, scheduler, RNG,
                                              and registered objects (data position, training state)
    checkpoints/step-00001000/model/          an HF folder (weights, config + code, tokenizer): shareable
    checkpoints/step-00001000/checkpoint.json written last: its presence marks the checkpoint complete
    checkpoints/.tmp-step-00001000/           a checkpoint being written; renamed when done

A crash while writing leaves only a `.tmp-` folder (or a folder without checkpoint.json), which
`complete_checkpoints` ignores and the next save clears.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

MARKER = "checkpoint.json"
_STEP_RE = re.compile(r"^step-(\d+)$")


def checkpoints_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return checkpoints_root(output_dir) / f"step-{step:08d}"


def complete_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint, oldest first."""
    root = checkpoints_root(output_dir)
    found = []
    if root.is_dir():
        for path in root.iterdir():
            match = _STEP_RE.match(path.name)
            if match and (path / MARKER).is_file():
                found.append((int(match.group(1)), path))
    return sorted(found)


def resolve_resume(output_dir: str | Path, resume_from: str | None) -> Path | None:
    """`latest`: the newest complete checkpoint, or None to start afresh; a path: that checkpoint."""
    if not resume_from:
        return None
    if resume_from == "latest":
        done = complete_checkpoints(output_dir)
        return done[-1][1] if done else None
    path = Path(resume_from)
    if not (path / MARKER).is_file():
        raise ValueError(f"--resume_from_checkpoint {path}: not a complete checkpoint (no {MARKER} in it)")
    return path


def read_checkpoint_info(path: str | Path) -> dict:
    return json.loads((Path(path) / MARKER).read_text())


def save_checkpoint(
    accelerator,
    output_dir: str | Path,
    step: int,
    info: dict,
    save_model_folder: Callable[[Path], None],
    keep_last: int | None = None,
) -> Path:
    """Save on every rank (`save_state` is collective); the main process renames and prunes."""
    root = checkpoints_root(output_dir)
    final = checkpoint_dir(output_dir, step)
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / "accelerate"))
    save_model_folder(tmp / "model")  # collective too: gathering a sharded model needs every rank
    if accelerator.is_main_process:
        (tmp / MARKER).write_text(json.dumps({"step": step, "time": time.time(), **info}, indent=2) + "\n")
        if final.exists():  # a re-save of the same step replaces the old one
            shutil.rmtree(final)
        tmp.rename(final)
        prune(output_dir, keep_last)
    accelerator.wait_for_everyone()
    return final


def prune(output_dir: str | Path, keep_last: int | None) -> None:
    """Keep the newest `keep_last` complete checkpoints; clear leftovers of interrupted saves."""
    root = checkpoints_root(output_dir)
    for leftover in root.glob(".tmp-step-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    done = complete_checkpoints(output_dir)
    if keep_last:
        for _, path in done[:-keep_last]:
            shutil.rmtree(path, ignore_errors=True)


class StopRequest:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps, so a preempted or interrupted run
    finishes its step, saves a checkpoint and exits cleanly. A second signal stops at once."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.requested: str | None = None
        self._previous = {}
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested:  # asked twice: the user means it
            self.restore()
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
