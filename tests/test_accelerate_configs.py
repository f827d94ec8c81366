"""The launcher's configs in accelerate_configs/ as a user meets them before any GPU: placeholders that cannot be
taken for a real machine, and the optional packages they need named where the README says to use them."""

import socket
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "accelerate_configs"


def test_multi_nodes_unfilled_address_names_no_real_machine():
    """Its placeholder was 10.0.0.1: on a network where something answers there, the unedited config spent 15
    minutes retrying that host with C++ frame dumps. A `.invalid` name never resolves (RFC 2606), so the launcher's
    repeated line names the placeholder, which the header quotes."""
    config = yaml.safe_load((CONFIGS / "multi_node.yaml").read_text())
    address = config["main_process_ip"]
    assert address == "FILL_IN.invalid"
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo(address, config["main_process_port"])
    header = (CONFIGS / "multi_node.yaml").read_text()
    assert f"The IPv6 network addresses of ({address}, {config['main_process_port']})" in header.replace("\n# ", " ")
    assert "disk every machine sees" in header


def test_deepspeed_is_pinned_and_named_where_the_readme_offers_it():
    """Without DeepSpeed the launcher stops in a 6-frame ImportError; only the yaml's header said to install it."""
    pins = (REPO / "requirements-deepspeed.txt").read_text().splitlines()
    assert [line for line in pins if line.startswith("deepspeed==")] == ["deepspeed==0.19.8"]
    row = next(line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("| DeepSpeed |"))
    assert "pip install -r requirements-deepspeed.txt" in row
    assert "pip install -r requirements-deepspeed.txt" in (CONFIGS / "deepspeed_zero2.yaml").read_text()


def test_one_machine_configs_take_a_free_port_and_say_nothing_of_a_busy_one(tmp_path):
    """With 29500 taken (another run, or the tests side by side) every launch printed accelerate's "Port 29500 is
    already in use" warning, which passed through the demo's output too: port 0 picks a free one quietly."""
    import os
    import subprocess
    import sys

    for name in ("cpu", "multi_gpu", "fsdp2", "deepspeed_zero2"):
        config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        assert config["num_machines"] == 1 and config["main_process_port"] == 0, name
    script = tmp_path / "ranks.py"
    script.write_text("import os; print(os.environ['RANK'], os.environ['MASTER_PORT'])")
    busy = socket.socket()
    try:
        busy.bind(("127.0.0.1", 29500))
        busy.listen()
    except OSError:
        pass  # taken already: as good
    try:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "cpu.yaml")]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([*launch, str(script)], capture_output=True, text=True, timeout=120, env=env)
    finally:
        busy.close()
    assert proc.returncode == 0, proc.stderr[-2000:]
    ranks = dict(line.split() for line in proc.stdout.splitlines())
    assert sorted(ranks) == ["0", "1"] and ranks["0"] == ranks["1"] != "29500", proc.stdout
    assert "already in use" not in proc.stderr, proc.stderr
