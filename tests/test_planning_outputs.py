"""The planner's files and limits around them: CPU processes sharing the host's memory, a --model config.json
shorter than --seq_len, and a --output that cannot be written in full."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from transformers import AutoConfig

import shuangyu.modeling  # noqa: F401  (registers model_type shuangyu, as train_clm does)
from shuangyu.planning import hardware, memory
from shuangyu.planning.plan import main
from shuangyu.planning.planner import Request, make_plan

REPO = Path(__file__).resolve().parent.parent


def test_cpu_processes_plan_with_their_share_of_the_hosts_memory(capsys):
    gpu = hardware.resolve("cpu", peak_tflops=1, memory_gib=23)
    host = memory.usable_bytes(23, cpu=True)
    for processes in (1, 2):
        plan = make_plan(Request(gpu=gpu, gpus=processes, hours=100, model="350m", seq_len=256))
        assert plan.usable_bytes == host / processes
        assert plan.memory.total * processes <= host  # all of them together fit in the one machine
    # 350m fits two processes in 20 GiB, but four of them cannot share it
    argv = ["--gpu", "cpu", "--peak_tflops", "1", "--memory_gib", "20", "--model", "350m", "--hours", "1"]
    assert main([*argv, "--seq_len", "256", "--gpus", "1"]) == 0
    assert main([*argv, "--seq_len", "256", "--gpus", "2"]) == 0
    assert "of 8.0 GiB usable (the host's 16.0 GiB shared by 2 processes)" in capsys.readouterr().out
    assert main([*argv, "--seq_len", "256", "--gpus", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "20 GiB shared by 4 processes, 4.0 GiB usable by each" in err[0], err


def test_a_model_config_shorter_than_seq_len_is_written_with_the_plans_context(tmp_path, capsys):
    fields = json.loads((REPO / "configs/models/1b.json").read_text())
    run = tmp_path / "run1"  # a run folder: its config.json names its code in auto_map
    run.mkdir()
    (run / "config.json").write_text(json.dumps(fields | {"auto_map": {"AutoConfig": "x.Y"}, "rope_theta": 5e5}))
    for spec, name in ((REPO / "configs/models/1b.json", "1b"), (run, "run1")):
        output = tmp_path / f"{name}.yaml"
        argv = ["--model", str(spec), "--seq_len", "4096", "--gpus", "8", "--hours", "24", "--output", str(output)]
        assert main(argv) == 0, capsys.readouterr().err
        config = yaml.safe_load(output.read_text())
        assert config["model_config"] == str(tmp_path / "models" / f"{name}.json")
        copy = json.loads(Path(config["model_config"]).read_text())
        assert copy.pop("max_position_embeddings") == 4096 and "auto_map" not in copy
        assert {k: v for k, v in fields.items() if k != "max_position_embeddings"}.items() <= copy.items()
        # what train_clm checks: --block_size within the model's context
        assert AutoConfig.from_pretrained(config["model_config"]).max_position_embeddings >= config["block_size"]
    # within its context the config is used as it is
    output = tmp_path / "short.yaml"
    assert (
        main(["--model", str(run), "--seq_len", "2048", "--hours", "24", "--gpus", "8", "--output", str(output)]) == 0
    )
    assert yaml.safe_load(output.read_text())["model_config"] == str(run)


def test_a_full_disk_leaves_nothing_half_written(tmp_path):
    output = tmp_path / "p.yaml"
    # a file-size limit of 2 KiB: the model's JSON fits, the YAML does not (EFBIG, as a full disk gives ENOSPC)
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))\n"
        "from shuangyu.planning.plan import main\n"
        f"sys.exit(main(['--model', 'd4', '--hours', '1', '--output', {str(output)!r}]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert f"could not write {output}" in err[0] and "nothing written" in err[0]
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
