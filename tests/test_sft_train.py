"""Instruction tuning end to end on CPU: train_clm.py --sft on a tiny model, the chat folder it leaves, the chat
command answering in format and stopping at <|im_end|> (one prompt, and a conversation on a terminal), exact
resume, LoRA and merging, and bad flags."""

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from shuangyu.tokenizer.chat_template import CHAT_SAMPLING

REPO = Path(__file__).resolve().parent.parent
STEPS = 40


def env() -> dict:
    import os

    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(args: list[str], module: str | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", module, *args] if module else [sys.executable, str(REPO / "train_clm.py"), *args]
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout, cwd=REPO)


def losses(out: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return {e["step"]: e["train/loss"] for e in lines}


@pytest.fixture(scope="module")
def common(tiny_base_model_dir, synthetic_chats, tmp_path_factory) -> list[str]:
    c = synthetic_chats
    return [
        "--sft",
        "--model_name_or_path",
        str(tiny_base_model_dir),
        "--train_files",
        f"zh={c['zh_train']}",
        f"en={c['en_train']}",
        "--validation_files",
        f"zh={c['zh_val']}",
        f"en={c['en_val']}",
        "--data_dir",
        str(tmp_path_factory.mktemp("sft_data") / "prepared"),
        "--block_size",
        "64",
        "--per_device_train_batch_size",
        "4",
        "--learning_rate",
        "1e-2",
        "--warmup_steps",
        "2",
        "--report_to",
        "none",
        "--seed",
        "0",
        "--logging_steps",
        "1",
        "--eval_steps",
        str(STEPS // 2),
        "--save_steps",
        str(STEPS // 2),
    ]


@pytest.fixture(scope="module")
def sft_run(common, tmp_path_factory) -> Path:
    """Full SFT with Muon (the tiny preset's optimizer): the run the others are compared with."""
    out = tmp_path_factory.mktemp("sft") / "run"
    proc = run([*common, "--optimizer", "muon", "--max_steps", str(STEPS), "--output_dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_sft_learns_and_leaves_a_chat_model(sft_run, tiny_base_model_dir):
    trace = losses(sft_run)
    assert trace[STEPS] < trace[1] / 3, trace
    log = [json.loads(line) for line in (sft_run / "train_log.jsonl").read_text().splitlines()]
    evals = [e for e in log if "eval/zh/loss" in e]
    assert [e["step"] for e in evals] == [STEPS // 2, STEPS] and evals[-1]["eval/en/loss"] < 1.0
    final = sft_run / "final"
    generation = json.loads((final / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [0, 3]  # <|endoftext|> and <|im_end|>
    assert {key: generation[key] for key in CHAT_SAMPLING} == CHAT_SAMPLING  # sampled, as the chat command does
    assert json.loads((final / "tokenizer_config.json").read_text())["split_special_tokens"] is False
    assert (final / "chat_template.jinja").is_file()
    card = (final / "README.md").read_text()
    assert "instruction-tuned" in card and "not a base model" in card and str(tiny_base_model_dir) in card
    assert "| zh | `zh.jsonl` | 60 |" in card and "conversational" in card


def test_chat_prompt_answers_in_format_and_stops_at_im_end(sft_run):
    proc = run([str(sft_run / "final"), "--prompt", "你好", "--greedy"], module="shuangyu.chat", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "你好！\n", proc.stdout  # the learned reply, then nothing: it stopped at <|im_end|>
    # the default (sampled) reply of a chat model, with a system prompt: an answer, and the command ends
    proc = run(
        [str(sft_run / "final"), "--prompt", "今天天气", "--system", "你是助手", "--seed", "0"], module="shuangyu.chat"
    )
    assert proc.returncode == 0 and proc.stdout.strip() and "<|im" not in proc.stdout, proc.stdout


def test_transformers_chat_pipeline_answers_as_the_chat_command_does(sft_run):
    """A stock client: transformers' text-generation pipeline given messages applies the folder's chat template
    and stops at <|im_end|> (generation_config.json), as `python -m shuangyu.chat --greedy` does."""
    from transformers import pipeline

    chat = pipeline("text-generation", model=str(sft_run / "final"), trust_remote_code=True)
    assert chat.model.generation_config.do_sample and chat.model.generation_config.top_p == CHAT_SAMPLING["top_p"]
    out = chat([{"role": "user", "content": "你好"}], max_new_tokens=20, do_sample=False)
    assert out[0]["generated_text"][-1] == {"role": "assistant", "content": "你好！"}


def test_chat_on_a_terminal_keeps_the_conversation_until_reset(sft_run, monkeypatch, capsys):
    """The interactive loop: each question is asked with the conversation so far, /reset forgets it, an empty
    line asks nothing, a reply cut off with Ctrl-C takes its question with it, /exit ends with status 0."""
    from transformers import AutoTokenizer

    from shuangyu.chat import cli

    lines = iter(["你好", "你好", "cut off", "你好", "/reset", "", "你好", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    prompts, real_reply = [], cli.reply

    def recording_reply(model, tokenizer, prompt_ids, kwargs):
        prompts.append(prompt_ids)
        if len(prompts) == 3:
            raise KeyboardInterrupt  # Ctrl-C while "cut off" is being answered
        return real_reply(model, tokenizer, prompt_ids, kwargs)

    monkeypatch.setattr(cli, "reply", recording_reply)
    assert cli.main([str(sft_run / "final"), "--greedy"]) == 0
    replies = capsys.readouterr().out.split("\n")
    assert len(replies) == 5 and replies[0] == replies[3] == "你好！" and replies[4] == ""  # 1st == after /reset
    first, second, cut, fourth, after_reset = prompts
    assert second[: len(first)] == first and len(second) > len(first) + 3  # the first exchange, then the question
    assert cut[: len(second)] == second and fourth[: len(second)] == second  # each exchange is kept...
    tok = AutoTokenizer.from_pretrained(sft_run / "final", trust_remote_code=True)
    assert "cut off" in tok.decode(cut) and "cut off" not in tok.decode(fourth)  # ...but an answer cut off
    assert after_reset == first  # ... until /reset


def test_a_long_chat_drops_its_oldest_exchanges_to_fit_the_context(sft_run):
    from transformers import AutoTokenizer

    from shuangyu.chat.cli import Conversation
    from shuangyu.tokenizer.chat_template import encode_chat

    tok = AutoTokenizer.from_pretrained(sft_run / "final", trust_remote_code=True)
    chat = Conversation(tok, "你是助手", context=160, reserve=16)
    questions = [f"第{i}个问题：今天天气怎么样？" for i in range(4)]
    for question in questions[:-1]:
        chat.prompt_ids(question)
        chat.add_reply("很好。")
    ids = chat.prompt_ids(questions[-1])
    assert len(ids) + 16 <= 160 and len(chat.turns) == 3  # two exchanges went, one stays with the question
    assert [t["content"] for t in chat.turns] == [questions[2], "很好。", questions[3]]
    assert ids == encode_chat(tok, [{"role": "system", "content": "你是助手"}, *chat.turns], True)[0]
    assert "你是助手" in tok.decode(ids)  # the system prompt stays
    chat.add_reply("很好。")
    # a question longer than the context on its own: everything before it goes, then the start of the question;
    # the system prompt and the turn's markers stay, and the reply keeps its room
    long_question = "很长的问题，" * 40 + "天气怎么样？"
    ids = chat.prompt_ids(long_question)
    assert 160 - 16 - 4 <= len(ids) <= 160 - 16 and chat.cut > 0, (len(ids), chat.cut)
    (question,) = [t["content"] for t in chat.turns]
    assert long_question.endswith(question) and question.endswith("天气怎么样？") and "\ufffd" not in question
    assert ids == encode_chat(tok, [{"role": "system", "content": "你是助手"}, *chat.turns], True)[0]
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system\n你是助手<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("天气怎么样？<|im_end|>\n<|im_start|>assistant\n")


def test_sft_resume_continues_step_for_step(common, sft_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(sft_run, out)
    shutil.rmtree(out / "checkpoints" / f"step-{STEPS:08d}")
    shutil.rmtree(out / "final")
    args = [*common, "--optimizer", "muon", "--max_steps", str(STEPS), "--output_dir", str(out)]
    proc = run([*args, "--resume_from_checkpoint", "latest"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout + proc.stderr
    assert losses(out) == losses(sft_run)


@pytest.mark.slow
def test_lora_run_saves_an_adapter_that_merges_to_the_same_logits(common, tmp_path):
    out = tmp_path / "lora"
    args = [*common, "--optimizer", "muon", "--lora_r", "8", "--max_steps", "12", "--output_dir", str(out)]
    proc = run([*args, "--eval_steps", "12", "--save_steps", "12"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trains the adapter with AdamW" in proc.stdout
    assert "FutureWarning" not in proc.stderr, proc.stderr[-3000:]  # PEFT's read of a deprecated alias, dropped
    # the chat tokens' rows of the tied head are the embedding's: saved once, without accelerate's warning
    assert "Removed shared tensor" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    trace = losses(out)
    assert trace[12] < trace[1], trace
    final = out / "final"
    assert (final / "adapter_model.safetensors").is_file() and not (final / "model.safetensors").exists()
    from safetensors import safe_open

    with safe_open(final / "adapter_model.safetensors", "pt") as saved:  # the chat tokens' embeddings trained too
        assert any("trainable_tokens" in key for key in saved.keys())
    assert "LoRA adapter (rank 8" in (final / "README.md").read_text()
    chat = run(
        [str(final), "--prompt", "你好", "--system", "你是助手", "--max_new_tokens", "8"], module="shuangyu.chat"
    )
    assert chat.returncode == 0 and "ignored" not in chat.stderr, chat.stderr[-2000:]  # talked to as a chat model
    assert "FutureWarning" not in chat.stderr, chat.stderr[-2000:]
    merged = tmp_path / "merged"
    proc = run([str(final), str(merged)], module="shuangyu.training.merge_lora", timeout=120)
    assert proc.returncode == 0 and "FutureWarning" not in proc.stderr, proc.stderr[-2000:]
    assert "\r" not in proc.stderr  # not a terminal: no progress bars (transformers' loading and writing ones)
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    adapter = AutoPeftModelForCausalLM.from_pretrained(final, trust_remote_code=True).eval()
    plain = AutoModelForCausalLM.from_pretrained(merged, trust_remote_code=True).eval()
    ids = torch.randint(4, 250, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, adapter(ids).logits, atol=1e-4, rtol=1e-4)
    assert json.loads((merged / "generation_config.json").read_text())["eos_token_id"] == [0, 3]
    assert "instruction-tuned" in (merged / "README.md").read_text()


@pytest.mark.slow
def test_sft_non_finite_steps_stop_the_run(common, tmp_path):
    args = [*common, "--optimizer", "adamw", "--learning_rate", "1e30", "--max_grad_norm", "0", "--warmup_steps", "0"]
    proc = run([*args, "--max_steps", "20", "--max_bad_steps", "2", "--output_dir", str(tmp_path / "out")])
    assert proc.returncode == 3 and "2 non-finite steps in a row" in proc.stderr.strip().splitlines()[-1]


BAD = {
    "no_model": (["--model_name_or_path", ""], "--sft fine-tunes a trained model"),
    "lora_target": (["--lora_r", "4", "--lora_target_modules", "q_proj", "qkv"], "--lora_target_modules qkv"),
    "bad_row": ([], "bad.jsonl:2: message 1 (assistant) is empty"),
    # the model folder's own tokenizer (no --tokenizer_name): the message names the flag given
    "no_chat_tokens": ([], "--model_name_or_path {model}: the tokenizer has no <|im_start|> / <|im_end|> special"),
    # the QA repro: accepted, and "validation zh" was a loss on the training set
    "held_out_trained": ([], "is in both --train_files and --validation_files zh, so held-out text would be trained"),
    # the QA repros: "no conversation fits in --block_size" (an empty file, not a block size), and an empty held-out
    # file accepted as "validation zh: 0 conversations"
    "empty_train": ([], "--train_files zh: {empty} holds no conversations; give it some, or leave the source out"),
    "empty_validation": ([], "--validation_files zh: {empty} holds no conversations; give it some, or leave the"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sft_input_fails_fast_with_one_line(case, common, tmp_path, tiny_base_model_dir, capsys):
    extra, needle = BAD[case]
    args = [a for a in common]
    args[args.index("--data_dir") + 1] = str(tmp_path / "data")
    if case == "bad_row":
        bad = tmp_path / "bad.jsonl"
        rows = [
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]},
        ]
        bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
        i = args.index("--train_files")
        args[i + 1 : i + 3] = [str(bad)]
    if case == "no_chat_tokens":
        model = tmp_path / "model"
        shutil.copytree(tiny_base_model_dir, model)
        config = json.loads((model / "tokenizer_config.json").read_text())
        config["extra_special_tokens"] = []
        (model / "tokenizer_config.json").write_text(json.dumps(config))
        tok = json.loads((model / "tokenizer.json").read_text())
        for token in tok["added_tokens"]:
            token["special"] = token["content"] in ("<|endoftext|>", "<|pad|>")
        (model / "tokenizer.json").write_text(json.dumps(tok))
        args[args.index("--model_name_or_path") + 1] = str(model)
        needle = needle.format(model=model)
    if case == "held_out_trained":
        i = args.index("--validation_files")
        args[i + 1] = args[args.index("--train_files") + 1]  # zh=TRAIN as both
        extra = []
    if case.startswith("empty_"):
        empty = tmp_path / "empty.jsonl"
        empty.write_text("\n  \n" if case == "empty_train" else "")  # blank lines only, or 0 bytes
        flag = "--train_files" if case == "empty_train" else "--validation_files"
        args[args.index(flag) + 1] = f"zh={empty}"
        needle = needle.format(empty=empty)
    if case == "no_model":
        i = args.index("--model_name_or_path")
        args[i : i + 2] = ["--tokenizer_name", str(tiny_base_model_dir)]
        extra = []
    start = time.time()
    args = [*args, *extra, "--max_steps", "2", "--output_dir", str(tmp_path / "out")]
    if case == "bad_row":  # the command as a user runs it
        proc = run(args)
        status, stderr = proc.returncode, proc.stderr
    else:  # its main() here: the same code without a fresh interpreter's 10-15 s of imports
        from shuangyu.training import cli

        status, stderr = cli.main(args), capsys.readouterr().err
    assert status == 2, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train_clm.py: error:") and needle in lines[0], lines
    assert not (tmp_path / "out" / "checkpoints").exists() and not (tmp_path / "data").exists()
    if case == "held_out_trained":  # refused before the data is tokenized: nothing written at all
        assert "--exclude '" in lines[0] and not (tmp_path / "out").exists()
    assert time.time() - start < 60


@pytest.mark.slow
def test_sft_push_to_hub_shares_a_chat_model(common, tmp_path):
    """--push_to_hub after SFT, against the local stand-in for the Hub (tests/hub_standin.py)."""
    from hub_standin import HubStandIn, run_card_code

    token = "hf_ShuangyuTestToken0123456789abcdef"
    out = tmp_path / "run"
    with HubStandIn(token) as hub:
        home = tmp_path / "hf_home"
        home.mkdir()
        hub_env = {k: v for k, v in env().items() if k != "HF_TOKEN"}
        hub_env |= {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(home),
                    "HF_TOKEN": token}  # fmt: skip
        args = [*common, "--max_steps", "4", "--eval_steps", "4", "--save_steps", "4", "--output_dir", str(out)]
        args += ["--push_to_hub", "--hub_model_id", "alice/shuangyu-chat", "--report_to", "tensorboard"]  # + runs/
        proc = subprocess.run(
            [sys.executable, str(REPO / "train_clm.py"), *args], env=hub_env, capture_output=True, text=True,
            cwd=REPO, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        files = hub.files("alice/shuangyu-chat")
        # the card's own snippet, copied as is by a Hub user, runs and prints the (sampled) reply alone: neither
        # the prompt nor the chat markup (a 4-step model's reply may also be empty)
        snippet = run_card_code(files["README.md"].decode(), {**hub_env, "HF_TOKEN": ""})
        assert snippet.returncode == 0, snippet.stderr[-3000:]
        assert "给出三个保持健康的秘诀" not in snippet.stdout and "<|im" not in snippet.stdout
        # so does the chat command the card names, given the Hub id: it downloads the model's files, not the logs
        command = re.search(r"`(python -m shuangyu\.chat [^`]+)`", files["README.md"].decode()).group(1)
        assert command == "python -m shuangyu.chat alice/shuangyu-chat", command
        chat = subprocess.run(
            [sys.executable, *command.split()[1:], "--prompt", "你好", "--max_new_tokens", "8"],
            env={**hub_env, "HF_TOKEN": ""}, capture_output=True, text=True, cwd=tmp_path, timeout=300,
        )  # fmt: skip
        assert chat.returncode == 0 and "<|im" not in chat.stdout, chat.stderr[-3000:]
        downloaded = {p.name for p in home.rglob("*") if p.is_file()}
        assert any(name.startswith("runs/") for name in files)  # pushed, and not needed to chat:
        assert "model.safetensors" in downloaded and not any(name.startswith("events.out") for name in downloaded)
        missing = subprocess.run(
            [sys.executable, "-m", "shuangyu.chat", "alice/no-such-model", "--prompt", "你好"],
            env={**hub_env, "HF_TOKEN": ""}, capture_output=True, text=True, cwd=tmp_path, timeout=300,
        )  # fmt: skip
        assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0, missing.stderr
        assert "alice/no-such-model is not a folder" in missing.stderr and "no such model" in missing.stderr
    assert {"chat_template.jinja", "generation_config.json", "model.safetensors", "README.md"} <= set(files)
    assert json.loads(files["generation_config.json"])["eos_token_id"] == [0, 3]
    card = files["README.md"].decode()
    assert "instruction-tuned" in card and 'from_pretrained("alice/shuangyu-chat"' in card
    assert "apply_chat_template" in card and token not in card
