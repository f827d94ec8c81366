import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

from shuangyu.modeling import ShuangyuConfig, ShuangyuForCausalLM, ShuangyuForSequenceClassification
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
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
bare = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
scorer = AutoModelForSequenceClassification.from_pretrained(sys.argv[1], num_labels=1, trust_remote_code=True).eval()
x = torch.load(sys.argv[2])
with torch.no_grad():
    scorer.score.weight.fill_(0.5)
    out = {"logits": model(x).logits, "hidden": bare(x).last_hidden_state, "score": scorer(x[:1]).logits}
    torch.save(out, sys.argv[3])
model.save_pretrained(sys.argv[4])  # saved again by the folder's own code, as a Hub user fine-tuning it would
print(type(model).__module__, type(bare).__name__)
"""


def test_saved_folder_loads_with_remote_code_in_a_clean_process(tmp_path):
    # A scaled RoPE too: the remote code alone must rebuild it from config.json.
    rope = {"rope_type": "linear", "factor": 2.0, "rope_theta": 50000.0}
    model = tiny_model(tie_word_embeddings=False, rope_parameters=rope)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "configuration_shuangyu.py", "modeling_shuangyu.py"} <= files
    config = json.loads((folder / "config.json").read_text())
    auto_map = {
        "AutoConfig": "configuration_shuangyu.ShuangyuConfig",
        "AutoModel": "modeling_shuangyu.ShuangyuModel",  # the bare model, as stock custom-code models map it
        "AutoModelForCausalLM": "modeling_shuangyu.ShuangyuForCausalLM",
        "AutoModelForSequenceClassification": "modeling_shuangyu.ShuangyuForSequenceClassification",  # reward models
    }
    assert config["auto_map"] == auto_map
    x = token_ids()
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected, hidden = model(x).logits, model.model(x).last_hidden_state
    resaved = tmp_path / "resaved"
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            REMOTE_LOAD,
            str(folder),
            str(tmp_path / "x.pt"),
            str(tmp_path / "out.pt"),
            str(resaved),
        ],
        cwd=tmp_path,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().startswith("transformers_modules") and run.stdout.strip().endswith(" ShuangyuModel")
    out = torch.load(tmp_path / "out.pt")
    assert torch.equal(out["logits"], expected) and torch.equal(out["hidden"], hidden)
    torch.testing.assert_close(out["score"], hidden[:1, -1].sum(-1, keepdim=True) * 0.5)  # the last token's score
    assert json.loads((resaved / "config.json").read_text())["auto_map"] == auto_map


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


def test_sequence_classification_scores_as_llama_s_does(tmp_path):
    """A reward model or classifier from a causal-LM checkpoint: the score of each sequence's last token that is
    not padding (left or right padded), and the loss, as LlamaForSequenceClassification gives them."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    tiny_model(pad_token_id=0).save_pretrained(src)
    assert export_main(["--to", "llama", str(src), str(dst)]) == 0
    ours = AutoModelForSequenceClassification.from_pretrained(src, num_labels=3).eval()
    stock = AutoModelForSequenceClassification.from_pretrained(dst, num_labels=3).eval()
    assert type(ours) is ShuangyuForSequenceClassification and type(stock) is LlamaForSequenceClassification
    stock.score.weight.data.copy_(ours.score.weight)
    x = token_ids().clamp(min=1)
    x[0, :5] = 0  # left padding
    x[1, -3:] = 0  # right padding
    mask, labels = (x != 0).long(), torch.tensor([2, 0])
    with torch.no_grad():
        a, b = ours(x, attention_mask=mask, labels=labels), stock(x, attention_mask=mask, labels=labels)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.loss, b.loss, atol=1e-5, rtol=0)


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


def test_export_replaces_nothing_unasked_and_never_its_source(tmp_path, capsys):
    src, dst, mine = tmp_path / "runs" / "final", tmp_path / "dst", tmp_path / "mine"
    tiny_model().save_pretrained(src)
    dst.mkdir()
    (mine / "keep").mkdir(parents=True)
    (mine / "keep" / "file.txt").write_text("mine")
    capsys.readouterr()  # save_pretrained's bar
    cases = [
        ([str(src), str(dst)], f"{dst} exists; pass --overwrite to replace it"),
        ([str(src), str(tmp_path / "runs"), "--overwrite"], "is or holds SRC"),  # it used to delete every run
        ([str(src), str(src), "--overwrite"], "is or holds SRC"),
        ([str(src), str(src / "llama")], f"{src / 'llama'}: inside SRC {src}; name a folder outside it"),  # nested
        # --overwrite replaces an earlier export, not a folder of other files (it used to delete them)
        ([str(src), str(mine), "--overwrite"], f"{mine} holds other files (keep) and no config.json: not replaced"),
    ]
    for argv, needle in cases:
        assert export_main(["--to", "llama", *argv]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], lines
    assert (mine / "keep" / "file.txt").read_text() == "mine" and (src / "config.json").is_file()
    assert export_main(["--to", "llama", str(src), str(dst), "--overwrite"]) == 0  # an empty folder
    (dst / "old.txt").write_text("an earlier export's")
    assert export_main(["--to", "llama", str(src), str(dst), "--overwrite"]) == 0  # an earlier export
    assert not (dst / "old.txt").exists() and (dst / "config.json").is_file()
    gguf = tmp_path / "model.gguf"
    gguf.write_text("old")
    assert export_main(["--to", "gguf", str(src), str(gguf)]) == 2 and gguf.read_text() == "old"
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert export_main(["--to", "gguf", str(src), str(src / "model.gguf")]) == 2  # it would be pushed with SRC
    assert "inside SRC" in capsys.readouterr().err and not (src / "model.gguf").exists()


@pytest.mark.parametrize("target", ["llama", "gguf"])
def test_ctrl_c_during_export_is_one_line_exit_130_and_leaves_dst_as_it_was(target, tmp_path, capsys, monkeypatch):
    from test_model_support import model_folder

    import shuangyu.modeling.gguf_export as gguf_export
    import shuangyu.modeling.llama_export as llama_export

    src, _ = model_folder(tmp_path / "src")
    out = tmp_path / "out" / ("model.gguf" if target == "gguf" else "llama")
    out.parent.mkdir()
    if target == "gguf":
        pytest.importorskip("gguf")
        out.write_text("an earlier export")
    else:
        assert export_main(["--to", "llama", str(src), str(out)]) == 0
    before = sorted(p.name for p in out.parent.rglob("*"))

    def interrupted(*args, **kwargs):  # Ctrl-C with the new export half-written beside DST
        raise KeyboardInterrupt

    # the last step before the rename: the weights are already written under the temporary name
    step = (
        (gguf_export, "check_gguf_tokenizer") if target == "gguf" else (llama_export, "write_portable_tokenizer_files")
    )
    monkeypatch.setattr(*step, interrupted)
    capsys.readouterr()
    assert export_main(["--to", target, str(src), str(out), "--overwrite"]) == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        f"python -m shuangyu.modeling.export: interrupted; {out} was left as it was"
    ]
    assert sorted(p.name for p in out.parent.rglob("*")) == before  # no temporary file or folder left


def test_export_to_llama_carries_the_model_card_over(tmp_path):
    """The card holds the training data, recipe and evaluation, which hold for the export (the same logits);
    how to load it names the export, without trust_remote_code. eval/run.py used to start a bare card there."""
    from huggingface_hub import ModelCard

    from shuangyu.sharing.card import write_card

    src, dst = tmp_path / "src", tmp_path / "dst"
    tiny_model().save_pretrained(src)
    write_card(src, name="tiny-run", training={"sources": [], "recipe": {"steps": 7}})
    (src / "eval_results.json").write_text('{"table": []}')
    assert 'from_pretrained("' + str(src) + '", trust_remote_code=True)' in (src / "README.md").read_text()
    assert export_main(["--to", "llama", str(src), str(dst)]) == 0
    card = ModelCard.load(dst / "README.md")
    assert card.text.lstrip().startswith("# tiny-run") and "| steps | 7 |" in card.text  # the training record
    assert f'from_pretrained("{dst}")' in card.text and "trust_remote_code" not in card.text
    assert "(`llama`, exported from Shuangyu: layers" in card.text
    assert "custom_code" not in card.data.tags and "shuangyu" in card.data.tags
    assert (dst / "eval_results.json").read_text() == '{"table": []}'  # what a later eval/run.py adds to


# ------------------------------------------------------------------------ transformers 4.x and 5.x alike
LOADER_FLAGS = ("local_files_only", "is_local", "trust_remote_code", "cache_dir", "revision", "token")


def exported_llama_with_tokenizer(tmp_path, **overrides):
    """A Shuangyu folder whose tokenizer went through AutoTokenizer.from_pretrained + save_pretrained (as a
    training run saves it, loader flags included), exported to Llama."""
    from test_model_support import model_folder, save_tokenizer

    save_tokenizer(tmp_path / "tok")
    src, model = model_folder(tmp_path / "src", **overrides)
    AutoTokenizer.from_pretrained(tmp_path / "tok", local_files_only=True).save_pretrained(src)
    assert export_main(["--to", "llama", str(src), str(tmp_path / "dst")]) == 0
    return src, tmp_path / "dst", model


def test_export_writes_a_tokenizer_config_transformers_4_reads(tmp_path):
    src, dst, _ = exported_llama_with_tokenizer(tmp_path)
    source = json.loads((src / "tokenizer_config.json").read_text())
    assert source["tokenizer_class"] == "TokenizersBackend" and source["local_files_only"] is True  # the problem
    config = json.loads((dst / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"  # a class both 4.x and 5.x have
    assert "extra_special_tokens" not in config  # a list there breaks 4.x, which expects named tokens
    assert config["additional_special_tokens"] == ["<|im_start|>", "<|im_end|>"]
    assert not set(LOADER_FLAGS) & set(config)
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == ("<|endoftext|>",) * 2 + ("<|pad|>",)
    assert config["split_special_tokens"] is True and config["clean_up_tokenization_spaces"] is False
    # 5.x loads the portable folder as the same tokenizer.
    ours, theirs = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(dst)
    text = "双语模型 is bilingual: 2024年！ <|endoftext|>"
    assert theirs(text).input_ids == ours(text).input_ids
    assert theirs.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [2, 3]
    assert (theirs.eos_token_id, theirs.pad_token_id) == (ours.eos_token_id, ours.pad_token_id)


def test_export_config_carries_rope_theta_for_transformers_4(tmp_path):
    _, dst, _ = exported_llama_with_tokenizer(tmp_path, rope_theta=500000.0)
    config = json.loads((dst / "config.json").read_text())
    assert config["rope_theta"] == 500000.0 and config["rope_scaling"] is None
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 500000.0}
    assert config["torch_dtype"] == config["dtype"] == "float32"


TF4_SCRIPT = """
import json, sys, torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, text = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder).eval()
ids = tok(text).input_ids
with torch.no_grad():
    torch.save(model(torch.tensor([ids])).logits, folder + "/tf4_logits.pt")
print(json.dumps({"version": transformers.__version__, "class": type(tok).__name__, "ids": ids,
                  "rope_theta": model.config.rope_theta, "rope_scaling": model.config.rope_scaling,
                  "special": [tok.eos_token, tok.pad_token, tok.additional_special_tokens]}))
"""


# a Python with transformers 4.x: `make install-transformers4` makes one, or name your own
TF4_PYTHON = os.environ.get("SHUANGYU_TF4_PYTHON") or str(REPO / ".transformers4" / "bin" / "python")


@pytest.mark.slow
@pytest.mark.skipif(not Path(TF4_PYTHON).is_file(), reason="make install-transformers4 (or set SHUANGYU_TF4_PYTHON)")
def test_exported_llama_loads_under_transformers_4(tmp_path):
    src, dst, model = exported_llama_with_tokenizer(
        tmp_path, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 50000.0}
    )
    text = "双语模型 is bilingual: 2024年！"
    run = subprocess.run(
        [TF4_PYTHON, "-c", TF4_SCRIPT, str(dst), text],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(tmp_path),
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["version"].startswith("4.") and got["class"] == "PreTrainedTokenizerFast"
    assert got["ids"] == AutoTokenizer.from_pretrained(src)(text).input_ids
    assert got["rope_theta"] == 50000.0 and got["rope_scaling"]["factor"] == 2.0
    assert got["special"] == ["<|endoftext|>", "<|pad|>", ["<|im_start|>", "<|im_end|>"]]
    with torch.no_grad():
        ours = model(torch.tensor([got["ids"]])).logits
    torch.testing.assert_close(torch.load(dst / "tf4_logits.pt"), ours, rtol=0, atol=1e-5)
