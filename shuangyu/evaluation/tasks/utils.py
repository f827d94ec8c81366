"""Loads the local benchmark copies for the `*_local` lm-eval tasks (used as the tasks' `custom_dataset`).

The data folder is `$SHUANGYU_BENCHMARKS`, by default `<repo>/../shared/data/benchmarks`; each task names its
files relative to it, so no path is written into a YAML and nothing depends on the working directory."""

from __future__ import annotations

import os
from pathlib import Path

import datasets

REPO = Path(__file__).resolve().parents[3]
ENV_VAR = "SHUANGYU_BENCHMARKS"


def benchmarks_dir() -> Path:
    return Path(os.environ.get(ENV_VAR) or REPO.parent / "shared" / "data" / "benchmarks").expanduser().resolve()


class BenchmarkDataMissing(FileNotFoundError):
    """A local task's data file is not where the task looks for it."""


def local_paths(local_files: dict[str, str]) -> dict[str, str]:
    """Absolute paths of a task's split files; raises BenchmarkDataMissing naming the first missing one."""
    root = benchmarks_dir()
    paths = {split: root / rel for split, rel in local_files.items()}
    for path in paths.values():
        if not path.is_file():
            raise BenchmarkDataMissing(
                f"benchmark data missing: {path} (set {ENV_VAR} to the benchmarks folder, default "
                f"<repo>/../shared/data/benchmarks; its README.md says where each file comes from)"
            )
    return {split: str(path) for split, path in paths.items()}


def load_benchmark(local_files: dict[str, str] | None = None, **_metadata) -> datasets.DatasetDict:
    """lm-eval calls this with the task's metadata and dataset_kwargs; only `local_files` (split -> file) is ours."""
    if not local_files:
        raise ValueError("a *_local task needs dataset_kwargs.local_files (split -> file under the benchmarks folder)")
    return datasets.load_dataset("json", data_files=local_paths(local_files))
