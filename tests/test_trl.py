"""Shuangyu models under TRL: DPO through python -m shuangyu.training.dpo (TRL's DPOTrainer), and a checkpoint
trained by TRL's SFTTrainer with the chat template's assistant-only loss."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from shuangyu.errors import UsageError

REPO = Path(__file__).resolve().parent.parent


def first_rows(path: Path, n: int, out: Path) -> Path:
    with open(path, encoding="utf-8") as fh:
        out.write_text("".join(next(fh) for _ in range(n)), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def tiny_chat_model_dir(tiny_base_model_dir, tmp_path_factory) -> Path:
    """The tiny base model saved as a chat folder, as an SFT run would (template, stops at <|im_end|>)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shuangyu.training.finetune import as_chat_model

    model = AutoModelForCausalLM.from_pretrained(tiny_base_model_dir, trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained(tiny_base_model_dir)
    as_chat_model(model, tok)
    out = tmp_path_factory.mktemp("tiny_chat") / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_dpo_sees_the_template_control_ids(tiny_chat_model_dir, sft_data_dir, tmp_path):
    """What TRL tokenizes for DPO from our folder: prompts in ChatML with the control ids, replies ending in
    <|im_end|>."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from shuangyu.training.dpo import read_pairs

    pairs = read_pairs([str(first_rows(sft_data_dir / "preference_val.jsonl", 4, tmp_path / "p.jsonl"))], "--x")
    tok = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir, trust_remote_code=True)
    config = DPOConfig(
        output_dir=str(tmp_path / "out"), report_to="none", bf16=False, activation_checkpointing=False,
        trust_remote_code=True, max_length=4096,
    )  # fmt: skip
    trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(pairs), processing_class=tok)
    row = trainer.train_dataset[0]
    im_start, im_end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert row["prompt_ids"][0] == im_start and row["prompt_ids"].count(im_start) == 1 + len(pairs[0]["prompt"])
    assert im_end in row["chosen_ids"] and im_end in row["rejected_ids"]
    from shuangyu.tokenizer.chat_template import encode_chat

    assert row["prompt_ids"] == encode_chat(tok, pairs[0]["prompt"], add_generation_prompt=True)[0]


def test_preference_text_spelling_a_control_token_is_refused(tmp_path):
    from shuangyu.training.dpo import read_pairs

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "q <|im_end|>", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(UsageError, match=r"p.jsonl:1: prompt contains the special token text <\|im_end\|>"):
        read_pairs([str(path)], "--train_files")


def test_dpo_command_keeps_activations_without_a_deprecation_warning():
    """TRL's config turns gradient checkpointing on by default under its old name, which transformers 5.2x warns
    about at every run; the command's default is off, silently, and either name still turns it on."""
    from shuangyu.training.dpo import parse_args

    common = ["--model_name_or_path", "m", "--train_files", "p.jsonl", "--output_dir", "out"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert not parse_args(common)[-1].activation_checkpointing
        assert parse_args([*common, "--activation_checkpointing", "true"])[-1].activation_checkpointing
    with pytest.warns(FutureWarning, match="Use `activation_checkpointing`"):  # the user's own old flag: theirs to fix
        assert parse_args([*common, "--gradient_checkpointing", "true"])[-1].activation_checkpointing


@pytest.mark.slow
def test_dpo_command_trains_a_few_steps_and_saves_a_chat_folder(tiny_chat_model_dir, sft_data_dir, tmp_path):
    out = tmp_path / "dpo"
    pairs = sft_data_dir / "preference_val.jsonl"
    args = [
        "--config", str(REPO / "configs/dpo-tiny-cpu.yaml"), "--model_name_or_path", str(tiny_chat_model_dir),
        "--output_dir", str(out), "--train_files", str(pairs), "--validation_files", str(pairs),
        "--max_steps", "3", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
        "--eval_steps", "3", "--save_steps", "3", "--logging_steps", "1", "--max_length", "128",
        "--learning_rate", "1e-3",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "shuangyu.training.dpo", *args], env=env, capture_output=True, text=True, cwd=REPO,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for noise in ("Warning", "custom code", "instantiate a model of type", "\r"):  # nothing a user cannot act on,
        assert noise not in proc.stdout + proc.stderr, proc.stderr[-3000:]  # and no progress bars in a log
    final = out / "final"
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    logged = [e for e in state["log_history"] if "loss" in e]
    assert len(logged) == 3 and all(0 < e["loss"] < 5 for e in logged), logged
    assert any("eval_loss" in e for e in state["log_history"])
    generation = json.loads((final / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [0, 3] and generation["do_sample"] is True
    card = (final / "README.md").read_text()
    assert "DPO" in card and "instruction-tuned" in card and str(tiny_chat_model_dir) in card
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(final, trust_remote_code=True)


def test_a_shuangyu_checkpoint_trains_under_trl_sft_trainer(tiny_base_model_dir, sft_data_dir, tmp_path):
    """Users' own TRL scripts: SFTTrainer with the assistant-only loss from our template's generation markers. A
    base tokenizer is loaded with split_special_tokens=False, as TRL tokenizes the rendered template."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from shuangyu.text.conversations import read_conversation_files
    from shuangyu.tokenizer.chat_template import encode_chat

    rows = read_conversation_files([first_rows(sft_data_dir / "en" / "alpaca_en_val.jsonl", 8, tmp_path / "c.jsonl")])
    # trust_remote_code: AutoTokenizer reads the model folder's config.json, whose auto_map names code (without it,
    # a terminal stops at transformers' y/N prompt where shuangyu is not imported)
    tok = AutoTokenizer.from_pretrained(tiny_base_model_dir, split_special_tokens=False, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_base_model_dir, trust_remote_code=True)
    config = SFTConfig(
        output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=2, learning_rate=1e-3,
        max_length=256, assistant_only_loss=True, report_to="none", bf16=False, activation_checkpointing=False,
        logging_steps=1, save_strategy="no",
    )  # fmt: skip
    data = Dataset.from_list([{"messages": m} for m in rows])
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tok)
    first = trainer.train_dataset[0]
    ours, trained = encode_chat(tok, rows[0])
    assert first["input_ids"] == ours[: len(first["input_ids"])]
    # TRL's labels come from the template's {% generation %} markers: exactly the tokens our encoder trains
    assert [label != -100 for label in first["labels"]] == trained[: len(first["input_ids"])]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    # docs/sft.md: TRL leaves generation's stop at <|endoftext|>, so the model would talk past <|im_end|>, unless
    # SFTConfig(eos_token="<|im_end|>"), which adds it to the stop ids and leaves the training tokens as they were
    endoftext, im_end = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    assert model.generation_config.eos_token_id == endoftext
    config.eos_token = "<|im_end|>"
    stopping = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tok)
    assert model.generation_config.eos_token_id == [im_end, endoftext]
    assert stopping.train_dataset[0]["input_ids"] == first["input_ids"]
    assert stopping.train_dataset[0]["labels"] == first["labels"]
