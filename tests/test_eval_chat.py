"""Evaluating chat models: the held-out reply loss per language, eval/run.py and the lm_eval CLI with
--apply_chat_template on a chat folder."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shuangyu.sharing.folder import is_chat_folder

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def chat_checkpoint(tmp_path_factory, data_tokenizer_dir):
    """An untrained tiny model with the vocab-2000 tokenizer, saved as a chat folder (what an SFT run writes)."""
    from transformers import AutoTokenizer

    import shuangyu.modeling as modeling
    from shuangyu.training.finetune import as_chat_model

    tok = AutoTokenizer.from_pretrained(data_tokenizer_dir)
    config = modeling.ShuangyuConfig.from_preset(
        "tiny", vocab_size=2048, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = modeling.ShuangyuForCausalLM(config)
    as_chat_model(model, tok)
    ckpt = tmp_path_factory.mktemp("chat_ckpt")
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    return ckpt


def test_chat_folders_are_told_from_base_folders(chat_checkpoint, tiny_base_model_dir):
    assert is_chat_folder(chat_checkpoint) and not is_chat_folder(tiny_base_model_dir)


def test_reply_loss_counts_only_the_replies(chat_checkpoint, sft_data_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shuangyu.evaluation.run import conversation_scores
    from shuangyu.text.conversations import read_conversation_files
    from shuangyu.tokenizer.chat_template import encode_chat

    files = [sft_data_dir / "en" / "alpaca_en_val.jsonl"]
    model = AutoModelForCausalLM.from_pretrained(chat_checkpoint, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(chat_checkpoint)
    scores = conversation_scores(model, tok, files, 5, 256, "cpu")
    expected = sum(sum(encode_chat(tok, m)[1][:256]) for m in read_conversation_files(files)[:5])
    assert scores["conversations"] == 5 and scores["tokens"] == expected
    assert math.log(2048) - 1 < scores["loss"] < math.log(2048) + 1  # an untrained model: about uniform
    assert 0 < scores["bits_per_byte"] < 20


@pytest.mark.slow(minutes=1)
def test_eval_run_with_the_chat_template_reports_reply_loss(chat_checkpoint, tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "eval" / "run.py"), str(chat_checkpoint), "--tasks", "arc_easy_local",
         "--limit", "2", "--apply_chat_template", "--bpb_max_bytes", "5000", "--conversation_max", "5",
         "--output", str(out), "--no_model_card"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["apply_chat_template"] is True
    assert set(report["held_out_conversations"]) == {"zh", "en"}
    assert all(math.isfinite(v["loss"]) for v in report["held_out_conversations"].values())
    assert "held-out conversations zh | reply loss" in out.with_suffix(".md").read_text()
    assert {row["task"] for row in report["table"]} == {"arc_easy_local"}


@pytest.mark.slow
def test_lm_eval_cli_with_the_chat_template_on_a_chat_folder(chat_checkpoint, tmp_path):
    subprocess.run([sys.executable, "-m", "shuangyu.evaluation.local_tasks"], cwd=REPO, check=True, capture_output=True)
    out = tmp_path / "out"
    proc = subprocess.run(
        ["lm_eval", "--model", "hf", "--model_args", f"pretrained={chat_checkpoint},trust_remote_code=True",
         "--include_path", str(REPO / "shuangyu" / "evaluation" / "tasks"), "--tasks", "arc_easy_local",
         "--limit", "1", "--apply_chat_template", "--device", "cpu", "--output_path", str(out), "--log_samples"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600, env={**os.environ},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    [samples] = out.rglob("samples_arc_easy_local_*.jsonl")
    sample = json.loads(samples.read_text().splitlines()[0])
    prompt = sample["arguments"]["gen_args_0"]["arg_0"]
    assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")
