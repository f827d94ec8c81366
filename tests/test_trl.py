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


def overlong(tok, pairs: list[dict], max_length: int) -> tuple[int, int]:
    """(pairs whose prompt alone is max_length tokens or more, pairs with a reply that goes past it), measured on
    Shuangyu's own encoding of the template (what TRL tokenizes, test_dpo_sees_the_template_control_ids)."""
    from shuangyu.tokenizer.chat_template import encode_chat

    prompt = [len(encode_chat(tok, p["prompt"], add_generation_prompt=True)[0]) for p in pairs]
    whole = [max(len(encode_chat(tok, p["prompt"] + p[k])[0]) for k in ("chosen", "rejected")) for p in pairs]
    return sum(n >= max_length for n in prompt), sum(n < max_length < w for n, w in zip(prompt, whole, strict=True))


def run_dpo(args: list[str], module: str = "shuangyu.training.dpo") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], env=env, capture_output=True, text=True, cwd=REPO, timeout=600
    )


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

    from shuangyu.training.dpo_pairs import read_pairs

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


def test_dpo_counts_the_pairs_trl_leaves_out_or_cuts(tiny_chat_model_dir, sft_data_dir, tmp_path, capsys):
    """Real pairs, some longer than max_length: TRL drops a pair whose prompt alone fills it and cuts the reply of a
    longer one; the counts (and the one line telling them) are those, measured here on our own encoding."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from shuangyu.training.dpo_pairs import check_fits, fitted_pairs, read_pairs

    pairs = read_pairs([str(first_rows(sft_data_dir / "preference.jsonl", 24, tmp_path / "p.jsonl"))], "--x")
    tok = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    max_length = 160
    left_out, cut = overlong(tok, pairs, max_length)
    assert 0 < left_out < len(pairs) and cut > 0  # the data has both kinds at this length
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir, trust_remote_code=True)
    config = DPOConfig(
        output_dir=str(tmp_path / "out"), report_to="none", bf16=False, activation_checkpointing=False,
        trust_remote_code=True, max_length=max_length,
    )  # fmt: skip
    trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(pairs), processing_class=tok)
    fit = fitted_pairs(len(pairs), trainer.train_dataset, max_length)
    assert fit == {"pairs": 24, "left_out": left_out, "cut": cut, "used": 24 - left_out}
    capsys.readouterr()  # the libraries' progress bars
    check_fits({"train": fit}, max_length, 256, tell=True)
    note = capsys.readouterr().err
    assert note.count("\n") == 1 and f"--max_length {max_length}: {left_out} of 24 training pairs are left out" in note
    assert f"{cut} of 24 training pairs are cut" in note and "raise --max_length (the model's context is 256)" in note
    check_fits({"train": {**fit, "left_out": 0, "cut": 0}}, max_length, 256, tell=True)
    assert capsys.readouterr().err == ""  # nothing to tell
    with pytest.raises(UsageError, match="--validation_files: every pair's prompt is --max_length 8 tokens or longer"):
        check_fits({"train": fit, "validation": {"pairs": 3, "left_out": 3, "cut": 0, "used": 0}}, 8, 8, tell=True)


def test_preference_text_spelling_a_control_token_is_refused(tmp_path):
    from shuangyu.training.dpo_pairs import read_pairs

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
    held = first_rows(sft_data_dir / "preference.jsonl", 52, tmp_path / "held.jsonl")  # not trained on
    args = [
        "--config", str(REPO / "configs/dpo-tiny-cpu.yaml"), "--model_name_or_path", str(tiny_chat_model_dir),
        "--output_dir", str(out), "--train_files", str(pairs), "--validation_files", str(held),
        "--max_steps", "3", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
        "--eval_steps", "3", "--save_steps", "3", "--logging_steps", "1", "--max_length", "128",
        "--learning_rate", "1e-3",
    ]  # fmt: skip
    proc = run_dpo(args)
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
    tokenizer_config = json.loads((final / "tokenizer_config.json").read_text())  # not how DPO loaded it
    assert "local_files_only" not in tokenizer_config and "is_local" not in tokenizer_config
    card = (final / "README.md").read_text()
    assert "DPO" in card and "instruction-tuned" in card and str(tiny_chat_model_dir) in card
    assert "preference-tuned (DPO) on the pairs listed above" in card and "conversations listed" not in card
    # the pairs TRL leaves out or cuts at --max_length 128: told in one line, and the card counts what was used
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shuangyu.training.dpo_pairs import read_pairs

    tok = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    left_out, cut = overlong(tok, read_pairs([str(pairs)], "--x"), 128)
    held_left_out, held_cut = overlong(tok, read_pairs([str(held)], "--x"), 128)
    assert left_out and cut, (left_out, cut)

    def counted(training: int, held_out: int) -> str:
        return " and ".join(
            f"{n} of 52 {name} pairs" for n, name in ((training, "training"), (held_out, "held-out")) if n
        )

    note = [line for line in proc.stderr.splitlines() if "--max_length 128:" in line]
    assert len(note) == 1 and f"{counted(left_out, held_left_out)} are left out" in note[0], note
    assert f"{counted(cut, held_cut)} are cut" in note[0]
    used = 52 - left_out
    assert f"| preference | `preference_val.jsonl` | 52 | {left_out} | {cut} | {used} |" in card
    assert f"| held out | `held.jsonl` | 52 | {held_left_out} | {held_cut} | {52 - held_left_out} |" in card
    assert f"done: DPO on {used} of 52 preference pairs" in proc.stdout
    AutoModelForCausalLM.from_pretrained(final, trust_remote_code=True)


def test_dpo_launched_with_fsdp2_on_cpu_processes_trains_once_and_saves_our_model(tiny_chat_model_dir, sft_data_dir, tmp_path):  # fmt: skip
    """accelerate_configs/fsdp2.yaml on 2 CPU processes: accelerate shards on GPUs only, so the processes must join
    as data parallel (as train_clm.py's do). Each trained alone as the first process; both wrote final/ and one
    died in a traceback. The folder loads as our model, from our code, and resumes."""
    pairs = first_rows(sft_data_dir / "preference_val.jsonl", 8, tmp_path / "p.jsonl")
    out = tmp_path / "dpo"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    launch += [str(REPO / "accelerate_configs/fsdp2.yaml"), "--num_processes", "2", "-m", "shuangyu.training.dpo"]
    args = ["--model_name_or_path", str(tiny_chat_model_dir), "--train_files", str(pairs), "--output_dir", str(out)]
    args += ["--per_device_train_batch_size", "2", "--max_length", "64", "--logging_steps", "1", "--save_steps", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}

    def run(steps: int, *more: str) -> subprocess.CompletedProcess:
        cmd = [*launch, *args, "--max_steps", str(steps), *more]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, timeout=600)

    proc = run(1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done: DPO") == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr[-3000:]
    assert "note: FSDP needs GPUs; these CPU processes run plain data parallel (DDP) instead" in proc.stderr
    assert "find_unused_parameters" not in proc.stderr, proc.stderr[-3000:]  # torch's warning, on each process
    state = json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())
    logged = [e for e in state["log_history"] if "loss" in e]
    assert len(logged) == 1 and 0 < logged[0]["loss"] < 5, logged
    assert sorted(p.name for p in (out / "checkpoint-1").glob("rng_state_*")) == ["rng_state_0.pth", "rng_state_1.pth"]
    proc = run(2, "--resume_from_checkpoint", "latest")
    assert proc.returncode == 0 and proc.stdout.count("done: DPO") == 1, proc.stderr[-3000:]
    final = out / "final"
    config = json.loads((final / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_shuangyu.ShuangyuForCausalLM"
    assert sorted(p.name for p in final.glob("*.py")) == ["configuration_shuangyu.py", "modeling_shuangyu.py"]
    assert json.loads((final / "generation_config.json").read_text())["eos_token_id"] == [0, 3]
    assert not (final / "training_args.bin").exists() and not (out / "README.md").exists()  # TRL's, of None
    from transformers import AutoModelForCausalLM

    assert type(AutoModelForCausalLM.from_pretrained(final, trust_remote_code=True)).__name__ == "ShuangyuForCausalLM"


@pytest.mark.slow
def test_a_dpo_adapter_merges_into_a_dpo_model(tiny_chat_model_dir, sft_data_dir, tmp_path):
    """--lora_r: the adapter's card and the merged model's say DPO on the pairs they list, not SFT."""
    pairs = first_rows(sft_data_dir / "preference_val.jsonl", 8, tmp_path / "p.jsonl")
    held = first_rows(sft_data_dir / "preference.jsonl", 8, tmp_path / "held.jsonl")
    adapter = tmp_path / "dpo" / "final"
    proc = run_dpo([
        "--config", str(REPO / "configs/dpo-tiny-cpu.yaml"), "--model_name_or_path", str(tiny_chat_model_dir),
        "--output_dir", str(tmp_path / "dpo"), "--train_files", str(pairs), "--validation_files", str(held),
        "--max_steps", "1", "--per_device_train_batch_size", "2", "--eval_steps", "1", "--save_steps", "1",
        "--lora_r", "8",
    ])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the card's GenerationConfig.from_pretrained(ADAPTER) finds the chat stop; no Trainer pickle or TRL card
    assert json.loads((adapter / "generation_config.json").read_text())["eos_token_id"] == [0, 3]
    assert not (adapter / "training_args.bin").exists() and not (tmp_path / "dpo" / "README.md").exists()
    merged = tmp_path / "merged"
    proc = run_dpo([str(adapter), str(merged)], module="shuangyu.training.merge_lora")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cards = [(folder / "README.md").read_text() for folder in (adapter, merged)]
    assert "preference-tuned (DPO) on the pairs listed below" in cards[0]
    assert "preference-tuned with Shuangyu by DPO on the pairs listed below" in cards[1]
    for card in cards:
        assert "Preference-tuned (DPO) from the chat model" in card and "| preference | `p.jsonl` | 8 |" in card
        assert "preference-tuned (DPO) on the pairs listed above" in card and "- dpo\n" in card
        assert "conversations" not in card and "supervised" not in card, card


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


def test_a_shuangyu_checkpoint_trains_as_a_reward_model_under_trl(tiny_chat_model_dir, sft_data_dir, tmp_path):
    """Users' own TRL scripts: RewardTrainer on AutoModelForSequenceClassification of a chat checkpoint, on the
    shared preference pairs (loading the head as remote code: test_model_sharing.py)."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    tok = AutoTokenizer.from_pretrained(tiny_chat_model_dir, trust_remote_code=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_chat_model_dir, num_labels=1, trust_remote_code=True
    )
    assert type(model).__name__ == "ShuangyuForSequenceClassification" and model.config.pad_token_id is not None
    pairs = first_rows(sft_data_dir / "preference_val.jsonl", 8, tmp_path / "p.jsonl")
    rows = [json.loads(line) for line in pairs.read_text(encoding="utf-8").splitlines()]
    config = RewardConfig(
        output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=2, learning_rate=1e-3,
        max_length=1024, report_to="none", bf16=False, logging_steps=1, save_strategy="no",
    )  # fmt: skip
    before = model.score.weight.detach().clone()
    trainer = RewardTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss)) and not torch.equal(before, model.score.weight)


def dpo_flags(model: Path, out: Path, pairs: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(model), "--output_dir", str(out), "--train_files", str(pairs),
        "--per_device_train_batch_size", "2", "--save_steps", "1", "--max_length", "128", *extra,
    ]  # fmt: skip


@pytest.fixture
def few_pairs(sft_data_dir, tmp_path) -> Path:
    return first_rows(sft_data_dir / "preference_val.jsonl", 8, tmp_path / "pairs.jsonl")


def test_dpo_refuses_an_output_dir_holding_its_inputs_before_any_work(tiny_chat_model_dir, few_pairs, tmp_path, capsys):
    """Whatever --overwrite_output_dir says: the run replaces final/ and checkpoint-N there (found: the start model
    in X/final, replaced with no message)."""
    import shutil

    from shuangyu.training.dpo import main

    run = tmp_path / "run"
    shutil.copytree(tiny_chat_model_dir, run / "final")
    weights = (run / "final" / "model.safetensors").read_bytes()
    for out, extra in ((run, ()), (run, ("--overwrite_output_dir", "true")), (tmp_path, ())):
        assert main(dpo_flags(run / "final", out, few_pairs, "--max_steps", "1", *extra)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--output_dir {out} is or holds " in err, err
        assert "choose another --output_dir" in err
    assert (run / "final" / "model.safetensors").read_bytes() == weights and sorted(os.listdir(run)) == ["final"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max_steps", "0"], "--max_steps 0: must be at least 1"),
        (["--max_steps", "-2"], "--max_steps -2: must be at least 1"),
        (["--beta", "-1"], "--beta -1.0: must be above 0"),  # TRL trained on, the preference turned around
        (["--beta", "0"], "--beta 0.0: must be above 0"),
        # the Trainer's Accelerator enables fp16 on GPUs only: on a CPU the run trained in fp32 without a word
        (["--fp16"], "--fp16: fp16 trains on a GPU only (on this CPU it would run in fp32); leave it off"),
        (
            ["--resume_from_checkpoint", "nowhere/checkpoint-4"],
            "--resume_from_checkpoint nowhere/checkpoint-4 does not "
            "exist: name an OUTPUT_DIR/checkpoint-N folder, or pass latest",
        ),  # fmt: skip
        (["--resume_from_checkpoint", "{out}/checkpoint-3"], "is not a complete checkpoint (no trainer_state.json"),
        ([], "holds another run; pass --resume_from_checkpoint latest to continue it, or --overwrite_output_dir"),
        (["--resume_from_checkpoint", "latest"], "holds a run but no complete checkpoint to resume"),
    ],
)
def test_dpo_refuses_bad_flags_in_one_line_before_any_work(
    tiny_chat_model_dir, few_pairs, tmp_path, capsys, monkeypatch, extra, message
):
    import shuangyu.training.dpo as dpo

    out = tmp_path / "out"
    (out / "checkpoint-3").mkdir(parents=True)  # an earlier run's, its save cut short (no trainer_state.json)
    monkeypatch.setattr(dpo, "train_dpo", lambda *a: pytest.fail("refused only after the set-up"))
    extra = [value.format(out=out) for value in extra]
    assert dpo.main(dpo_flags(tiny_chat_model_dir, out, few_pairs, "--max_steps", "1", *extra)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_dpo_refuses_training_on_its_held_out_pairs(tiny_chat_model_dir, few_pairs, tmp_path, capsys):
    """The QA repro: the same file as --train_files and --validation_files trained, its eval loss on trained pairs."""
    from shuangyu.training.dpo import main

    out = tmp_path / "out"
    held = ["--validation_files", f"{few_pairs.parent}/../{few_pairs.parent.name}/{few_pairs.name}"]
    assert main(dpo_flags(tiny_chat_model_dir, out, few_pairs, "--max_steps", "1", *held)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{held[1]} is in both --train_files and --validation_files {held[1]}" in err
    assert "leave it out of --train_files by naming only other files there" in err, err
    assert not out.exists()


def test_dpo_output_dir_that_is_a_file_is_one_line(tiny_chat_model_dir, few_pairs, tmp_path, capsys):
    from shuangyu.training.dpo import main

    (tmp_path / "afile").write_text("x")
    assert main(dpo_flags(tiny_chat_model_dir, tmp_path / "afile", few_pairs, "--max_steps", "1")) == 2
    assert capsys.readouterr().err.endswith(f"--output_dir {tmp_path / 'afile'} is a file, not a folder: choose "
                                            "another path\n")  # fmt: skip


def test_dpo_resume_latest_is_the_newest_complete_checkpoint(tmp_path):
    from shuangyu.training.dpo import resolve_resume

    assert resolve_resume(tmp_path, "latest") is None  # none: start afresh, as train_clm.py
    for step, complete in ((2, True), (10, True), (12, False)):  # 12: a save cut short
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert resolve_resume(tmp_path, "latest") == tmp_path / "checkpoint-10"
    assert resolve_resume(tmp_path, None) is None


@pytest.fixture(scope="module")
def tiny_tied_chat_model_dir(tiny_chat_model_dir, tmp_path_factory) -> Path:
    """The chat model with its head tied to the embedding (as the demo's models are): saved without lm_head."""
    import shutil

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir, trust_remote_code=True, tie_word_embeddings=True)
    out = tmp_path_factory.mktemp("tiny_tied_chat") / "model"
    model.save_pretrained(out)
    for name in os.listdir(tiny_chat_model_dir):
        if name.startswith("tokenizer") or name.endswith(".jinja"):
            shutil.copy(tiny_chat_model_dir / name, out / name)
    return out


def test_dpo_rerun_resume_and_ctrl_c_keep_what_is_on_disk(tiny_tied_chat_model_dir, few_pairs, tmp_path, capsys,
                                                           monkeypatch):  # fmt: skip
    """A finished run is not trained over by the same command; a resumed one (`latest`) loads the tied head without
    the Trainer's "missing keys" warning; Ctrl-C while final/ is written is one line and exit 130, the earlier
    final/ whole and the last checkpoint named."""
    import logging

    from transformers.utils import logging as hf_logging

    import shuangyu.training.dpo as dpo

    out = tmp_path / "dpo"
    assert dpo.main(dpo_flags(tiny_tied_chat_model_dir, out, few_pairs, "--max_steps", "1")) == 0
    weights = (out / "final" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert dpo.main(dpo_flags(tiny_tied_chat_model_dir, out, few_pairs, "--max_steps", "1")) == 2
    assert "holds another run; pass --resume_from_checkpoint latest" in capsys.readouterr().err

    warned = []
    handler = logging.Handler()
    handler.emit = lambda record: warned.append(record.getMessage())

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(dpo, "finish_folder", interrupt)
    hf_logging.add_handler(handler)
    try:
        flags = dpo_flags(tiny_tied_chat_model_dir, out, few_pairs, "--max_steps", "2")
        assert dpo.main([*flags, "--resume_from_checkpoint", "latest"]) == 130
    finally:
        hf_logging.remove_handler(handler)
    assert not [w for w in warned if "missing keys" in w], warned
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"{dpo.PROG}: interrupted; the last checkpoint, {out / 'checkpoint-2'}, is intact: rerun with "
        "--resume_from_checkpoint latest"
    )
    assert (out / "final" / "model.safetensors").read_bytes() == weights
    assert not [p for p in os.listdir(out) if p.startswith(".")]


def test_dpo_ctrl_c_before_the_first_save_removes_the_folder_it_made(tiny_chat_model_dir, few_pairs, tmp_path,
                                                                    capsys, monkeypatch):  # fmt: skip
    from trl import DPOTrainer

    import shuangyu.training.dpo as dpo

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(DPOTrainer, "training_step", interrupt)
    out = tmp_path / "dpo"
    assert dpo.main(dpo_flags(tiny_chat_model_dir, out, few_pairs, "--max_steps", "2")) == 130
    err = capsys.readouterr().err
    assert err.endswith(f"{dpo.PROG}: interrupted; no step was saved: rerun the same command to start again\n")
    assert "Traceback" not in err and not out.exists()


def dpo_until_signalled(flags: list[str], sig: int, log: Path, processes: int = 1) -> tuple[int, str]:
    """`python -m shuangyu.training.dpo FLAGS`, sent `sig` from outside once the first step is logged (mid-run, as a
    scheduler's preemption, a closed terminal or Ctrl-C comes); (exit status, what it printed). With several
    processes (accelerate launch), the last one alone gets it: the others learn of it at their next logging step."""
    import signal
    import time

    import psutil

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "shuangyu.training.dpo", *flags]
    if processes > 1:
        cmd[1:2] = ["-m", "accelerate.commands.launch", "--config_file", str(REPO / "accelerate_configs/cpu.yaml"),
                    "--num_processes", str(processes), "-m"]  # fmt: skip
    with open(log, "w") as fh:
        # SIGHUP as a terminal's command gets it, even where the tests run under nohup (which ignores it)
        hang_up_heard = lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL)  # noqa: E731
        proc = subprocess.Popen(
            cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, text=True, cwd=REPO, preexec_fn=hang_up_heard
        )
        deadline = time.time() + 300
        while "'loss'" not in log.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert "'loss'" in log.read_text(), log.read_text()[-3000:]
        if processes > 1:  # rank 1: rank 0 speaks for the launch, and must learn of it at the vote
            (target,) = [p for p in psutil.Process(proc.pid).children() if p.environ().get("RANK") == "1"]
        else:
            target = proc
        target.send_signal(sig)
        proc.wait(timeout=300)
    return proc.returncode, log.read_text()


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_signal_mid_run_saves_the_step_and_resumes_to_the_end(tiny_chat_model_dir, sft_data_dir, tmp_path, sig):
    """As train_clm.py: a preemption (SIGTERM), Ctrl-C or a closed terminal finishes the step, saves the Trainer's
    checkpoint-N, writes no final/, says the step in one line and exits 0; `latest` trains on to the end. (The
    process died with no checkpoint (143, 129), or Ctrl-C was "interrupted" and saved nothing.)"""
    import signal

    pairs = first_rows(sft_data_dir / "preference_val.jsonl", 32, tmp_path / "pairs.jsonl")
    out = tmp_path / "dpo"
    flags = dpo_flags(tiny_chat_model_dir, out, pairs, "--max_steps", "300", "--save_steps", "1000")
    flags += ["--logging_steps", "1"]
    status, output = dpo_until_signalled(flags, getattr(signal, sig), tmp_path / "log")
    assert status == 0, output[-3000:]
    stopped = [line for line in output.splitlines() if line.startswith("stopped by")]
    assert len(stopped) == 1 and stopped[0].startswith(f"stopped by {sig} at step "), output[-3000:]
    step = int(stopped[0].split(" at step ")[1].split(";")[0])
    assert stopped[0] == f"stopped by {sig} at step {step}; resume with --resume_from_checkpoint latest"
    assert 1 <= step < 300 and "Traceback" not in output
    assert sorted(os.listdir(out)) == [f"checkpoint-{step}"]  # no final/, no TRL card
    assert json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())["global_step"] == step
    if sig != "SIGTERM":
        return  # the resume is the same for each
    proc = run_dpo([*flags, "--resume_from_checkpoint", "latest"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done: DPO" in proc.stdout and (out / "final" / "model.safetensors").is_file()
    state = json.loads((out / "checkpoint-300" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "loss" in e] == list(range(1, 301))


def test_a_closed_terminal_window_saves_the_step(tiny_chat_model_dir, sft_data_dir, tmp_path, terminal_window):
    """The window a run's progress bars are drawn in is closed: SIGHUP, and every later write fails. The run saves
    the step and exits 0 (it died at once, with nothing saved)."""
    import time

    pairs = first_rows(sft_data_dir / "preference_val.jsonl", 32, tmp_path / "pairs.jsonl")
    out = tmp_path / "dpo"
    flags = dpo_flags(tiny_chat_model_dir, out, pairs, "--max_steps", "3000", "--save_steps", "10000")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "shuangyu.training.dpo", *flags, "--logging_steps", "1"]
    window = terminal_window(cmd, env=env, cwd=REPO)
    deadline = time.time() + 300
    while "'loss'" not in window.shown() and window.process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    window.close()
    assert window.process.wait(timeout=300) == 0, window.shown()[-3000:]
    (saved,) = os.listdir(out)  # the step's checkpoint, no final/
    assert (out / saved / "trainer_state.json").is_file() and saved.startswith("checkpoint-")


@pytest.mark.slow(minutes=1)
def test_two_processes_stop_together_when_one_is_signalled(tiny_chat_model_dir, sft_data_dir, tmp_path):
    """The other process learns of the signal at the next logging step and both save that step (else the next
    collective hangs, or one rank's checkpoint is missing)."""
    import signal

    pairs = first_rows(sft_data_dir / "preference_val.jsonl", 32, tmp_path / "pairs.jsonl")
    out = tmp_path / "dpo"
    flags = dpo_flags(tiny_chat_model_dir, out, pairs, "--max_steps", "3000", "--save_steps", "10000")
    status, output = dpo_until_signalled([*flags, "--logging_steps", "5"], signal.SIGTERM, tmp_path / "log", 2)
    assert status == 0, output[-3000:]
    stopped = [line for line in output.splitlines() if line.startswith("stopped by")]
    assert len(stopped) == 1 and stopped[0].startswith("stopped by another process's signal at step "), output[-3000:]
    step = int(stopped[0].split(" at step ")[1].split(";")[0])
    assert step % 5 == 0 and sorted(os.listdir(out)) == [f"checkpoint-{step}"]
    assert sorted(p.name for p in (out / f"checkpoint-{step}").glob("rng_state_*")) == [
        "rng_state_0.pth",
        "rng_state_1.pth",
    ]


def test_sigterm_before_training_stops_at_once_in_one_line(tiny_chat_model_dir, few_pairs, tmp_path, capsys,
                                                           monkeypatch):  # fmt: skip
    """While the model loads or TRL tokenizes, a SIGTERM stops at once, exit 0 as a preemption, and the folder the
    run made goes (the process died with no word, leaving it)."""
    import signal

    import shuangyu.training.dpo as dpo

    class Killed(Exception):
        pass

    def killed(*args):  # what the default handler would do to this test's process: here, a test failure
        raise Killed

    real = dpo.load_pairs

    def preempted(*args):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    monkeypatch.setattr(dpo, "load_pairs", preempted)
    signal.signal(signal.SIGTERM, killed)
    out = tmp_path / "dpo"
    assert dpo.main(dpo_flags(tiny_chat_model_dir, out, few_pairs, "--max_steps", "2")) == 0
    err = capsys.readouterr().err
    assert err.endswith(f"{dpo.PROG}: stopped by SIGTERM before training; no step was saved: rerun the same command "
                        "to start again\n")  # fmt: skip
    assert "Traceback" not in err and not out.exists()
    assert signal.getsignal(signal.SIGTERM) is killed  # restored


def test_dpo_overwrite_output_dir_deletes_the_earlier_runs_checkpoints(tmp_path):
    """Else `latest` would later resume the earlier run's checkpoint-40 past this run's checkpoint-4."""
    from shuangyu.training.dpo import start_fresh

    for name in ("checkpoint-4", "checkpoint-40", "final", "runs"):
        (tmp_path / name).mkdir()
    start_fresh(tmp_path)
    assert os.listdir(tmp_path) == ["runs"]


def test_the_docs_trl_snippets_run_on_a_cpu_as_written(tiny_base_model_dir, sft_data_dir, tmp_path, monkeypatch):
    """docs/sft.md "Your own TRL scripts": the SFTTrainer and RewardTrainer snippets, run as printed on this CPU
    machine (TRL's bf16 default is refused there). Shrunk only where a test must be: the model path, 8 rows of
    data, the output folders, and the configs' step count and logging."""
    import trl

    section = (REPO / "docs" / "sft.md").read_text(encoding="utf-8").split("## Your own TRL scripts")[1]
    snippets = [block.split("```")[0] for block in section.split("## ")[0].split("```python\n")[1:]]
    assert len(snippets) == 2, "expected the SFTTrainer and the RewardTrainer snippet"
    chats = first_rows(sft_data_dir / "zh" / "alpaca_zh_val.jsonl", 8, tmp_path / "c.jsonl")
    # the 8 shortest pairs: the snippet's max_length (the tiny model's 256 tokens) drops the longer ones
    rows = sorted((sft_data_dir / "preference.jsonl").read_text(encoding="utf-8").splitlines(keepends=True), key=len)
    pairs = tmp_path / "p.jsonl"
    pairs.write_text("".join(rows[:8]), encoding="utf-8")
    code = (
        "\n\x00".join(snippets)  # each run on its own, as a reader copies one
        .replace('"outputs/tiny-cpu/final"', repr(str(tiny_base_model_dir)))
        .replace('"../shared/data/sft/zh/alpaca_zh.jsonl"', repr(str(chats)))
        .replace('"../shared/data/sft/preference.jsonl"', repr(str(pairs)))
        .replace('"outputs/', f'"{tmp_path}/')
    )
    assert str(tiny_base_model_dir) in code and str(chats) in code and str(pairs) in code
    for name in ("SFTConfig", "RewardConfig"):
        real = getattr(trl, name)
        # a few steps, nothing saved; bf16 and every other argument stay as the docs print them
        shrunk = lambda real=real, **kw: real(**{**kw, "max_steps": 2, "report_to": "none", "save_strategy": "no"})  # noqa: E731
        monkeypatch.setattr(trl, name, shrunk)
    import warnings

    for snippet in code.split("\n\x00"):
        namespace: dict = {}
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*gradient_checkpointing.*deprecated")
            exec(compile(snippet, "docs/sft.md", "exec"), namespace)
    assert namespace["model"].score.weight.isfinite().all()  # the reward snippet, run on its own, last


ROTATE = """
import sys
from pathlib import Path
from transformers.trainer_utils import rotate_checkpoints
from shuangyu.library_warnings import checkpoints_saved_within_a_second
out = Path(sys.argv[1])
for step in (1, 2, 3):  # saved within a second, as a short run saves them
    (out / f"checkpoint-{step}").mkdir()
with checkpoints_saved_within_a_second():
    rotate_checkpoints(output_dir=str(out), save_total_limit=2, use_mtime=True)
print(sorted(p.name for p in out.iterdir()))
"""


def test_checkpoints_saved_within_a_second_rotate_without_transformers_filesystem_warning(tmp_path):
    """DPO with --save_total_limit printed "mtime may not be reliable on this filesystem" at each rotation of a short
    run: its checkpoints are saved under a second apart, which transformers reads as fake mtimes, and then sorts them
    by step, the right order. The oldest is still the one removed."""
    proc = subprocess.run(
        [sys.executable, "-c", ROTATE, str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "['checkpoint-2', 'checkpoint-3']"
    assert "mtime" not in proc.stderr, proc.stderr


def test_a_stop_saves_its_step_once_without_an_evaluation_even_at_an_epoch_end(tmp_path):
    """The Trainer ends the epoch after a stop: under --save_strategy epoch it saved the stop's checkpoint again (a
    kill then left it half rewritten, marked complete), and --eval_strategy epoch evaluated first; a stop step that
    was an evaluation step evaluated before saving (under --save_strategy best, the save then hung on the metric)."""
    import os
    import signal
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState, TrainingArguments
    from transformers.trainer_callback import DefaultFlowCallback

    from shuangyu.training.trainer_stopping import StopBetweenSteps

    args = TrainingArguments(
        output_dir=str(tmp_path), save_strategy="epoch", eval_strategy="steps", eval_steps=3, logging_steps=1,
        report_to="none", use_cpu=True,
    )  # fmt: skip
    state, control = TrainerState(max_steps=10, logging_steps=1), TrainerControl()
    flow, stopping = DefaultFlowCallback(), StopBetweenSteps(SimpleNamespace(num_processes=1))
    stopping.on_train_begin(args, state, control)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        state.global_step = 3  # an evaluation step
        for callback in (flow, stopping):  # the Trainer's order: its own flow first, ours after
            callback.on_step_end(args, state, control)
        assert control.should_save and not control.should_evaluate and control.should_training_stop
        control.should_save = False  # the Trainer saved the step (checkpoint-3)
        for callback in (flow, stopping):
            callback.on_epoch_end(args, state, control)
        assert not control.should_save and not control.should_evaluate
        assert stopping.stopped_by == "SIGTERM"
    finally:
        stopping.stop.restore()
