"""Where a run ran: hardware, library versions and the code's commit. Training writes it next to its log
(OUTPUT_DIR/environment.json) so that a report rebuilt elsewhere, e.g. on a laptop for a GPU run, still
says what the numbers were measured on."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARIES = ("torch", "transformers", "accelerate", "datasets", "tokenizers", "peft", "trl", "lm_eval")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):  # not every platform has these names
        return None


def gpus() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return []
    return [
        f"{torch.cuda.get_device_name(i)} ({torch.cuda.get_device_properties(i).total_memory / 2**30:.0f} GiB)"
        for i in range(torch.cuda.device_count())
    ]


def git_commit() -> str | None:
    """The checkout's commit, with `+changes` when the tree differs from it; None outside a git checkout."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        if head.returncode:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def program() -> str:
    """How this process was started: `train_clm.py`, or `python -m shuangyu.report` for a module."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return f"python -m {spec.name.removesuffix('.__main__')}"
    return Path(sys.argv[0]).name


def describe_environment(processes: int | None = None, mixed_precision: str | None = None) -> dict:
    env = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "memory_gib": memory_gib(),
        "gpus": gpus(),
        "versions": versions(),
        "commit": git_commit(),
        "command": " ".join([program(), *sys.argv[1:]]),
    }
    if processes is not None:
        env["processes"] = processes
    if mixed_precision is not None:
        env["mixed_precision"] = mixed_precision
    return env
