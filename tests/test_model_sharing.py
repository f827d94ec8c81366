import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerFast

from shuangyu.modeling import ShuangyuConfig, ShuangyuForCausalLM
from shuangyu.modeling.export import main as export_main

REPO = Path(__file__).resolve().parents[1]
MINIMIND_TOKENIZER = Path("/work/shared/data/tokenizers/minimind/tokenizer.json")


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return ShuangyuForCausalLM(ShuangyuConfig.from_preset("tiny", **overrides)).eval()


def token_ids():
    return torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(7))


def clean_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # A fresh modules cache, so the remote code really is the copy in the folder.
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), HF_MODULES_CACHE=str(tmp_path / "modules"))
    return env


REMOTE_LOAD = """
import sys
sys.modules["shuangyu"] = None  # the package is installed (editable): make it unimportable, as on a user's machine
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
with torch.no_grad():
    torch.save(model(torch.load(sys.argv[2])).logits, sys.argv[3])
print(type(model).__module__)
"""


def test_saved_folder_loads_with_remote_code_in_a_clean_process(tmp_path):
    model = tiny_model(tie_word_embeddings=False, rope_theta=50000.0)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "configuration_shuangyu.py", "modeling_shuangyu.py"} <= files
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_shuangyu.ShuangyuConfig",
        "AutoModelForCausalLM": "modeling_shuangyu.ShuangyuForCausalLM",
    }
    x = token_ids()
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = model(x).logits
    run = subprocess.run(
        [sys.executable, "-c", REMOTE_LOAD, str(folder), str(tmp_path / "x.pt"), str(tmp_path / "logits.pt")],
        cwd=tmp_path,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().startswith("transformers_modules")
    assert torch.equal(torch.load(tmp_path / "logits.pt"), expected)


def test_from_pretrained_round_trip_in_process(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is ShuangyuForCausalLM
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    x = token_ids()
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


@pytest.mark.parametrize(
    "overrides",
    [dict(), dict(tie_word_embeddings=False, attention_bias=True, mlp_bias=True, rope_theta=500000.0)],
    ids=["tied", "untied-biases-theta"],
)
def test_export_to_llama_matches_logits(tmp_path, overrides):
    model = tiny_model(**overrides)
    src, dst = tmp_path / "src", tmp_path / "dst"
    model.save_pretrained(src)
    if MINIMIND_TOKENIZER.exists():
        PreTrainedTokenizerFast(tokenizer_file=str(MINIMIND_TOKENIZER)).save_pretrained(src)
    assert export_main(["--to", "llama", str(src), str(dst)]) == 0

    assert not list(dst.glob("*.py"))
    config = json.loads((dst / "config.json").read_text())
    assert config["model_type"] == "llama" and "auto_map" not in config
    llama = AutoModelForCausalLM.from_pretrained(dst).eval()
    assert type(llama) is LlamaForCausalLM
    x = token_ids()
    with torch.no_grad():
        torch.testing.assert_close(llama(x).logits, model(x).logits, atol=1e-5, rtol=0)
    if MINIMIND_TOKENIZER.exists():
        text = "双语 tokenizer, bilingual"
        assert AutoTokenizer.from_pretrained(dst)(text).input_ids == AutoTokenizer.from_pretrained(src)(text).input_ids


def test_export_refuses_incompatible_knobs_with_exit_status_2(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    tiny_model(norm_type="layernorm", mlp_type="gelu").save_pretrained(src)
    run = subprocess.run(
        [sys.executable, "-m", "shuangyu.modeling.export", "--to", "llama", str(src), str(dst)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "norm_type=layernorm" in lines[0] and "mlp_type=gelu" in lines[0]
    assert not dst.exists()
