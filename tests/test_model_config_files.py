"""A bad model config.json given on a command line: the planner's --model and train_clm's --model_config refuse it
with the same one line (shuangyu.modeling.config_json), exit 2, and train_clm before it prepares any data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shuangyu.modeling import PRESETS
from shuangyu.planning.plan import main as plan_main
from shuangyu.training import cli

REPO = Path(__file__).resolve().parent.parent
LLAMA_SAYS = "model_type 'llama' is not 'shuangyu'; give a Shuangyu config (such as configs/models/1b.json) or a preset name (tiny, mini, 124m, 350m)"  # fmt: skip
# file name -> (fields over the tiny preset's, what the line says after "FLAG PATH: ")
BAD = {
    "zero_heads.json": ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer, got 0"),
    "string_width.json": ({"hidden_size": "64"}, "hidden_size must be a positive integer, got '64'"),
    "indivisible.json": (
        {"hidden_size": 100, "num_attention_heads": 3},
        "hidden_size (100) must be divisible by num_attention_heads (3)",
    ),
    "bool_layers.json": ({"num_hidden_layers": True}, "num_hidden_layers must be a positive integer, got True"),
    "llama": (None, LLAMA_SAYS),  # a folder: a stock LlamaConfig saved by transformers
}


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> Path:
    from transformers import LlamaConfig

    root = tmp_path_factory.mktemp("model_configs")
    for name, (fields, _) in BAD.items():
        if fields is not None:
            (root / name).write_text(json.dumps({"model_type": "shuangyu", **PRESETS["tiny"], **fields}))
    LlamaConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=1000
    ).save_pretrained(root / "llama")
    return root


@pytest.mark.parametrize("name", BAD)
def test_the_planner_refuses_a_bad_config_in_one_line(configs, name, capsys):
    path = configs / name
    assert plan_main(["--model", str(path), "--gpu", "H100", "--hours", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"python -m shuangyu.planning.plan: error: --model {path}: {BAD[name][1]}"]


def train_args(configs: Path, name: str, corpus: dict, tokenizer: Path, tmp_path: Path) -> list[str]:
    return [
        "--tokenizer_name", str(tokenizer), "--train_files", str(corpus["en_train"]),
        "--data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"),
        "--model_config", str(configs / name), "--max_steps", "1", "--report_to", "none",
    ]  # fmt: skip


@pytest.mark.parametrize("name", BAD)
def test_train_clm_refuses_a_bad_config_before_the_data(configs, name, synthetic_corpus, tiny_tokenizer_dir, tmp_path, capsys):  # fmt: skip
    status = cli.main(train_args(configs, name, synthetic_corpus, tiny_tokenizer_dir, tmp_path))
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"train_clm.py: error: --model_config {configs / name}: {BAD[name][1]}"]
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()  # no data prepared, no run folder


@pytest.mark.parametrize("launcher", ["python", "accelerate"])
def test_train_clm_refuses_a_llama_config_once_as_a_command(configs, launcher, synthetic_corpus, tiny_tokenizer_dir, tmp_path):  # fmt: skip
    args = train_args(configs, "llama", synthetic_corpus, tiny_tokenizer_dir, tmp_path)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    launch += [str(REPO / "accelerate_configs/cpu.yaml"), "--num_processes", "1"]
    cmd = [*([sys.executable] if launcher == "python" else launch), str(REPO / "train_clm.py"), *args]
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode != 0 and (launcher == "accelerate" or proc.returncode == 2), proc.stderr[-2000:]
    line = f"train_clm.py: error: --model_config {configs / 'llama'}: {LLAMA_SAYS}"
    if launcher == "python":
        assert proc.stderr.strip().splitlines() == [line], proc.stderr[-2000:]
    else:  # said once; torch's launcher then reports the failed process in its own words (ChildFailedError)
        assert [s for s in proc.stderr.splitlines() if "train_clm.py: error:" in s] == [line], proc.stderr[-2000:]
        assert "AttributeError" not in proc.stderr and proc.stderr.count("Traceback") <= 1, proc.stderr[-2000:]
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()
