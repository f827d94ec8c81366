"""What a run writes as it goes: run_args.json, environment.json, and each logging step's metrics to the trackers and to
OUTPUT_DIR/train_log.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

from shuangyu.environment import describe_environment
from shuangyu.files import atomic_write_text


def write_run_args(out: Path, arguments: dict, resumed_step: int) -> None:
    """The run's arguments, next to its log; on a resume, log lines past the checkpoint are dropped
    (those steps are about to be trained again)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "run_args.json", json.dumps(arguments, indent=2, ensure_ascii=False) + "\n")
    log = out / "train_log.jsonl"
    if log.is_file():
        lines = [line for line in log.read_text().splitlines() if json.loads(line)["step"] <= resumed_step]
        atomic_write_text(log, "".join(line + "\n" for line in lines))


def write_environment(out: Path, processes: int, mixed_precision: str) -> None:
    """Where this session of the run trains (hardware, versions, commit): the report reads it, so that a
    report rebuilt elsewhere says what the run's numbers were measured on. A resumed run records its own."""
    env = describe_environment(processes, mixed_precision)
    atomic_write_text(out / "environment.json", json.dumps(env, indent=2, ensure_ascii=False) + "\n")


class RunLog:
    """Metrics to the trackers (accelerator.log) and, on the main process, to OUTPUT_DIR/train_log.jsonl."""

    def __init__(self, accelerator, out: Path):
        self.accelerator = accelerator
        self.file = open(out / "train_log.jsonl", "a", encoding="utf-8") if accelerator.is_main_process else None

    def __call__(self, step: int, logs: dict) -> None:
        self.accelerator.log(logs, step=step)
        if self.file:
            self.file.write(json.dumps({"step": step, **logs}, ensure_ascii=False) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()
