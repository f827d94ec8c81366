"""What a run writes as it goes: run_args.json, environment.json, and each logging step's metrics to the trackers and to
OUTPUT_DIR/train_log.jsonl."""

from __future__ import annotations

import json
import math
from pathlib import Path

from shuangyu.environment import describe_environment
from shuangyu.errors import UsageError
from shuangyu.files import atomic_write_text
from shuangyu.text.readers import json_reason

LOG_NAME = "train_log.jsonl"


def read_train_log(path: Path) -> tuple[list[dict], bool]:
    """The rows of a train_log.jsonl in file order, and whether its last line was cut off: a run killed while it
    wrote a row, or a folder copied while the run trained, ends mid-row (RunLog writes whole lines, so only the last
    can be partial); that row is left out. Any other unreadable line is a UsageError naming the file and line."""
    lines = Path(path).read_bytes().split(b"\n")  # bytes: a cut can fall inside a UTF-8 character
    rows = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:  # JSONDecodeError, or UnicodeDecodeError for a cut character
            if lineno == len(lines):  # no newline after it: the row was never finished
                return rows, True
            reason = json_reason(err) if isinstance(err, json.JSONDecodeError) else "not UTF-8"
            raise UsageError(f"{path}:{lineno}: not valid JSON ({reason})") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise UsageError(f"{path}:{lineno}: not a training log row (it has no step number)")
        rows.append({k: math.nan if v is None else v for k, v in row.items()})  # log_line's null: not a number
    return rows, False


def log_line(row: dict) -> str:
    """A row as one line of strict JSON: a non-finite number (a diverging step's gradient norm) as null, since
    NaN and Infinity are not JSON (JSON.parse and other strict readers refuse the line)."""
    finite = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
    return json.dumps(finite, ensure_ascii=False, allow_nan=False) + "\n"


def write_run_args(out: Path, arguments: dict, resumed_step: int) -> bool:
    """The run's arguments, next to its log; on a resume, log lines past the checkpoint are dropped
    (those steps are about to be trained again), and so is a last line the stopped run left half written, which
    the new rows would otherwise be appended to. Returns whether there was such a line."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "run_args.json", json.dumps(arguments, indent=2, ensure_ascii=False) + "\n")
    log = out / LOG_NAME
    if not log.is_file():
        return False
    rows, cut_off = read_train_log(log)
    kept = [log_line(row) for row in rows if row["step"] <= resumed_step]
    atomic_write_text(log, "".join(kept))
    return cut_off


def write_environment(out: Path, processes: int, mixed_precision: str) -> None:
    """Where this session of the run trains (hardware, versions, commit): the report reads it, so that a
    report rebuilt elsewhere says what the run's numbers were measured on. A resumed run records its own."""
    env = describe_environment(processes, mixed_precision)
    atomic_write_text(out / "environment.json", json.dumps(env, indent=2, ensure_ascii=False) + "\n")


class RunLog:
    """Metrics to the trackers (accelerator.log) and, on the main process, to OUTPUT_DIR/train_log.jsonl."""

    def __init__(self, accelerator, out: Path):
        self.accelerator = accelerator
        self.file = open(out / LOG_NAME, "a", encoding="utf-8") if accelerator.is_main_process else None

    def __call__(self, step: int, logs: dict) -> None:
        self.accelerator.log(logs, step=step)
        if self.file:
            self.file.write(log_line({"step": step, **logs}))
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()
