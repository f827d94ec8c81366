"""eval/push.py --logs: only tensorboard's files go up, against the local stand-in for the Hub (tests/hub_standin.py)."""

import shutil
import subprocess
from pathlib import Path

import pytest
from hub_standin import HubStandIn
from test_sharing import PUSH, REPO, TOKEN, hub_env


@pytest.fixture
def hub():
    with HubStandIn(TOKEN) as standin:
        yield standin


@pytest.fixture
def run_folder(tiny_cpu_run, tmp_path) -> Path:
    """A run folder as train_clm.py leaves it: final/, checkpoints with optimizer states, the tensorboard folder."""
    run = Path(shutil.copytree(tiny_cpu_run, tmp_path / "run"))
    (run / "checkpoints" / "step-1").mkdir(parents=True, exist_ok=True)
    (run / "checkpoints" / "step-1" / "optimizer.pt").write_bytes(b"optimizer state")
    (run / "data_cache.bin").write_bytes(b"tokens")
    return run


def push(hub, tmp_path, final: Path, logs: Path) -> subprocess.CompletedProcess:
    args = [*PUSH, str(final), "--hub_model_id", "alice/tiny", "--logs", str(logs)]
    return subprocess.run(args, env=hub_env(hub, tmp_path), capture_output=True, text=True, cwd=REPO, timeout=300)


def test_logs_upload_only_tensorboard_files(hub, run_folder, tmp_path):
    """--logs RUN (the run folder, not RUN/shuangyu) used to upload the whole folder: checkpoints, optimizer
    states, the data cache."""
    expected = sorted(
        "runs/" + p.relative_to(run_folder).as_posix()
        for p in run_folder.rglob("*")
        if p.is_file() and (p.name.startswith("events.out.tfevents.") or p.name == "hparams.yml")
    )
    assert expected and any("events.out.tfevents." in name for name in expected)
    proc = push(hub, tmp_path, run_folder / "final", run_folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = hub.files("alice/tiny", "main")
    assert sorted(n for n in files if n.startswith("runs/")) == expected  # relative layout kept, nothing else
    assert "model.safetensors" in files
    assert not any("optimizer" in n or "data_cache" in n or n.startswith("runs/final/") for n in files)


def test_logs_without_event_files_is_one_line(hub, run_folder, tmp_path):
    empty = tmp_path / "not-logs"
    empty.mkdir()
    (empty / "notes.txt").write_text("no tensorboard here")
    proc = push(hub, tmp_path, run_folder / "final", empty)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line == (
        f"push.py: error: --logs {empty} holds no tensorboard event files (events.out.tfevents.*): give the run's "
        "tensorboard folder, e.g. RUN/shuangyu"
    )
    assert not hub.commits and not hub.repos  # refused before anything was sent
