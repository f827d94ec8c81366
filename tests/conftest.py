"""Shared test settings: offline Hub access, and where ../shared lives."""

import os
from pathlib import Path

import pytest

# Tests never reach the Hub: the real code paths are exercised on local files.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SHUANGYU_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    path = SHARED / "data" / "corpus"
    if not path.is_dir():
        pytest.fail(f"shared corpus not found at {path}: set SHUANGYU_SHARED to the shared/ folder")
    return path
