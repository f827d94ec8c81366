"""Checkpoints, all of it in one place: saving (written whole or not at all, the last K kept), finding the one
to resume from (incomplete ones skipped), the shareable model folder in each, and OUTPUT_DIR/final.

Layout under --output_dir:

    checkpoints/step-00001000/accelerate/     accelerator.save_state: model, optimizer, scheduler, RNG,
                                              and registered objects (data position, training state)
    checkpoints/step-00001000/model/          an HF folder (weights, config + code, tokenizer): shareable
    checkpoints/step-00001000/data_stream.json --streaming runs: every process's stream position (its own part
                                              of the sources, so accelerate's main-process-only custom state
                                              cannot hold it)
    checkpoints/step-00001000/checkpoint.json written last: its presence marks the checkpoint complete
                                              (and it records the flags a resume must keep)
    checkpoints/.step-00001000.tmp/           a checkpoint being written; renamed when done
    final/                                    a copy of the last checkpoint's model/, when the run finishes

A crash while writing leaves only a dot-named temporary folder (or a folder without checkpoint.json), which
`complete_checkpoints` ignores and the next save clears.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

from shuangyu.errors import UsageError
from shuangyu.files import atomic_folder, is_disk_full
from shuangyu.sharing.card import write_card
from shuangyu.training.model_folder import save_model_folder

MARKER = "checkpoint.json"
STREAM_POSITIONS = "data_stream.json"
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


def resolve_resume(output_dir: str | Path, resume_from: str | None, warn=print) -> Path | None:
    """`latest`: the newest checkpoint that is complete, intact and not taken in a run of non-finite steps,
    or None to start afresh when there is none at all; a path: that checkpoint, if intact."""
    if not resume_from:
        return None
    if resume_from != "latest":
        path = Path(resume_from)
        if not (path / MARKER).is_file():
            raise UsageError(f"--resume_from_checkpoint {path}: not a complete checkpoint (no {MARKER} in it)")
        damage = find_damage(path)
        if damage:
            raise UsageError(f"--resume_from_checkpoint {path}: {damage}; pass an earlier checkpoint")
        return path
    done = complete_checkpoints(output_dir)
    passed_over = []
    for _, path in reversed(done):
        damage = find_damage(path)
        if not damage and read_checkpoint_info(path).get("bad_in_a_row", 0):
            damage = "saved during a run of non-finite steps (name it with --resume_from_checkpoint to use it)"
        if not damage:
            if passed_over:
                warn(f"warning: resuming from {path}, the newest usable checkpoint: " + "; ".join(passed_over))
            return path
        passed_over.append(f"{path.name} passed over: {damage}")
    if passed_over:
        shown = "; ".join(passed_over[:3]) + (f"; and {len(passed_over) - 3} more" if len(passed_over) > 3 else "")
        raise UsageError(
            f"--resume_from_checkpoint latest: no usable checkpoint in {output_dir} ({len(passed_over)} found: "
            f"{shown}): pass --resume_from_checkpoint PATH of a checkpoint to resume from, or start over with "
            "--overwrite_output_dir or in a new --output_dir"
        )
    return None


def find_damage(path: Path) -> str | None:
    """What is wrong with a complete checkpoint's files (missing, or not the size they were written with), or None.
    Truncation is what a crash, a full disk or a bad copy leaves; it is found without reading the files."""
    try:
        files = read_checkpoint_info(path).get("files")
    except (OSError, json.JSONDecodeError) as err:
        return f"{path / MARKER} is unreadable ({err})"
    for name, size in (files or {}).items():
        if Path(name).name == "README.md":
            continue  # the model card: eval/run.py adds its results to it (a checkpoint may be evaluated); not state
        file = path / name
        if not file.is_file():
            return f"{file} is missing"
        if file.stat().st_size != size:
            return f"{file} is damaged ({file.stat().st_size:,} bytes, written with {size:,})"
    return None


def read_checkpoint_info(path: str | Path) -> dict:
    return json.loads((Path(path) / MARKER).read_text())


def _stream_processes_differ(path: Path, saved: int, processes: int) -> UsageError:
    return UsageError(
        f"--resume_from_checkpoint {path}: its stream positions are for {saved} processes, not {processes}: each "
        f"process streams its own shards, so resume with {saved} processes"
    )


def read_stream_position(path: Path, rank: int, world_size: int) -> dict:
    """This process's stream position in a checkpoint saved by `world_size` processes."""
    try:
        positions = json.loads((path / STREAM_POSITIONS).read_text())["processes"]
    except (OSError, json.JSONDecodeError, KeyError) as err:
        raise UsageError(f"--resume_from_checkpoint {path}: {STREAM_POSITIONS} is unreadable ({err})") from None
    if len(positions) != world_size:
        raise _stream_processes_differ(path, len(positions), world_size)
    return positions[rank]


def save_checkpoint(
    accelerator,
    output_dir: str | Path,
    step: int,
    model,
    tokenizer,
    *,
    card: dict,
    info: dict,
    keep_last: int | None = None,
    stream_positions: list[dict] | None = None,
) -> Path:
    """Save on every rank (`save_state` is collective) into a temporary folder, which the main process renames
    into place once everything, the marker last, is written; then prune. `stream_positions`: every process's
    streaming loader state, in rank order (gathered by the caller). A full disk met by any process is a
    UsageError on every process, the temporary folder removed."""
    from shuangyu.training.accelerator import first_failure  # torch: not for the flag checks that import this module

    final = checkpoint_dir(output_dir, step)
    tmp = final.parent / f".{final.name}.tmp"  # one name every rank knows
    main = accelerator.is_main_process
    full = None  # what a full disk said to this process
    try:
        with atomic_folder(final, tmp) if main else nullcontext(tmp):
            accelerator.wait_for_everyone()  # the folder exists
            full = _unless_disk_full(
                lambda: (
                    accelerator.save_state(str(tmp / "accelerate")),
                    save_model_folder(accelerator, model, tokenizer, tmp / "model", card),
                )
            )
            # every rank has written its part, or all of them stop: one left waiting for the others would hang
            full = first_failure(accelerator, full)
            if main and not full:
                full = _unless_disk_full(lambda: _write_marker(tmp, step, info, stream_positions))
            if full:
                raise _Abandoned  # the temporary folder goes
    except _Abandoned:
        pass
    full = first_failure(accelerator, full)  # the marker is the main process's: the others learn of it here
    if full:
        done = complete_checkpoints(output_dir)
        kept = f"the last checkpoint, {done[-1][1]}, is intact" if done else "no earlier checkpoint exists"
        raise UsageError(
            f"no space left on the device while saving {final} ({shutil.disk_usage(final.parent).free:,} bytes "
            f"free); the partial checkpoint was removed and {kept}: free space (or lower --save_total_limit), then "
            "rerun with --resume_from_checkpoint latest"
        )
    if main:
        prune(output_dir, keep_last)
    accelerator.wait_for_everyone()
    return final


class _Abandoned(Exception):
    """Leaves a save's `atomic_folder` block so that the partial folder is removed."""


def _unless_disk_full(write) -> str | None:
    """Run `write`; what a full disk said, or None. Any other error is raised."""
    try:
        write()
    except Exception as err:  # torch's zip writer raises RuntimeError, safetensors its own SafetensorError
        if not is_disk_full(err):
            raise
        return f"{type(err).__name__}: {err}"
    return None


def _write_marker(tmp: Path, step: int, info: dict, stream_positions: list[dict] | None) -> None:
    if stream_positions is not None:
        (tmp / STREAM_POSITIONS).write_text(json.dumps({"processes": stream_positions}) + "\n")
    # sizes of what was written, so that a damaged checkpoint is recognised before it is loaded
    files = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
    marker = {"step": step, "time": time.time(), **info, "files": files}
    (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def prune(output_dir: str | Path, keep_last: int | None) -> None:
    """Keep the newest `keep_last` complete checkpoints; clear leftovers of interrupted saves."""
    root = checkpoints_root(output_dir)
    for leftover in root.glob(".step-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    done = complete_checkpoints(output_dir)
    if keep_last:
        for _, path in done[:-keep_last]:
            shutil.rmtree(path, ignore_errors=True)


def publish_final(output_dir: str | Path) -> Path:
    """Copy the last checkpoint's model folder to OUTPUT_DIR/final (replacing a previous one whole); its card
    then says to load it from there. A full disk leaves the previous final/ as it was and says so in a line."""
    final = Path(output_dir) / "final"
    try:
        with atomic_folder(final) as tmp:
            shutil.copytree(complete_checkpoints(output_dir)[-1][1] / "model", tmp, dirs_exist_ok=True)
            if (tmp / "README.md").is_file():
                write_card(tmp, load_path=str(final))
    except Exception as err:  # copytree gathers its files' errors into one shutil.Error
        if not is_disk_full(err):
            raise
        raise UsageError(
            f"no space left on the device while writing {final} ({shutil.disk_usage(final.parent).free:,} bytes "
            "free); the checkpoints are intact: free space, then rerun with --resume_from_checkpoint latest, which "
            "writes final/ again"
        ) from None
    return final


FRESH_START_DELETES = ("checkpoints", "final")  # folders of --output_dir; the log too


def start_fresh(output_dir: str | Path) -> None:
    """--overwrite_output_dir: clear the previous run's checkpoints, final model and log (not the data)."""
    out = Path(output_dir)
    for name in FRESH_START_DELETES:
        shutil.rmtree(out / name, ignore_errors=True)
    (out / "train_log.jsonl").unlink(missing_ok=True)
