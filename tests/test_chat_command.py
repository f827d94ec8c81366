"""`python -m shuangyu.chat` on a tiny model, in-process (the end-to-end runs on a trained chat model are in
test_sft_train.py): what it continues from, how a text or conversation longer than the model's context is cut (with
a note), that a reply never runs past the context nor ends in half a character, a LoRA adapter whose base moved,
Ctrl-C, and its flags checked before anything loads."""

import json

import pytest

from shuangyu.chat import cli


def test_an_empty_prompt_continues_from_the_start_of_a_document(tiny_base_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base_model_dir)
    assert cli.continuation_ids(tok, "", 100) == ([tok.convert_tokens_to_ids("<|endoftext|>")], 0)
    ids, cut = cli.continuation_ids(tok, "今天天气很好。" * 50, 40)
    assert len(ids) == 40 and cut > 0
    assert ids == cli.encode_text(tok, "今天天气很好。" * 50).ids[-40:]  # the end of the text stays


def test_a_long_text_is_cut_at_its_start_and_the_reply_stays_inside_the_context(
    tiny_base_model_dir, monkeypatch, capsys
):
    context = json.loads((tiny_base_model_dir / "config.json").read_text())["max_position_embeddings"]
    calls = []
    monkeypatch.setattr(cli, "reply", lambda model, tok, ids, kwargs: calls.append((ids, kwargs)) or "")
    text = "今天天气很好，我们去公园散步。" * context  # several times the context
    for max_new_tokens in (20, 10 * context):  # a reply asked longer than the context stops at its end
        argv = [str(tiny_base_model_dir), "--prompt", text, "--max_new_tokens", str(max_new_tokens), "--greedy"]
        assert cli.main(argv) == 0
    (short_ids, short), (long_ids, long) = calls
    assert len(short_ids) == context - 20 and short["max_new_tokens"] == 20
    assert len(long_ids) == context // 2 and len(long_ids) + long["max_new_tokens"] == context
    err = capsys.readouterr().err.splitlines()
    notes = [line for line in err if "was cut" in line]
    assert len(notes) == 2 and f"context is {context} tokens" in notes[0], notes
    capped = [line for line in err if "capped" in line]  # the cap was silent before
    assert capped == [
        f"python -m shuangyu.chat: note: --max_new_tokens {10 * context} is capped to {long['max_new_tokens']}: a "
        f"reply stops where the model's {context}-token context ends, and the prompt takes {len(long_ids)}"
    ], err


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--top_k", "-1"], "--top_k -1 must be 0 (off) or more"),
        (["--no_repeat_ngram_size", "-3"], "--no_repeat_ngram_size -3 must be 0 (off) or more"),
        (["--top_p", "0"], "--top_p 0.0 must be in (0, 1]"),
        (["--max_new_tokens", "0"], "--max_new_tokens 0 must be at least 1"),
    ],
)
def test_bad_sampling_flags_are_refused_in_one_line(flags, needle, tmp_path, capsys):
    assert cli.main([str(tmp_path), "--prompt", "x", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_a_name_that_is_neither_a_folder_nor_a_hub_id_is_refused(tmp_path, capsys):
    for name in (str(tmp_path / "missing"), "./missing", "a/b/c"):
        assert cli.main([name, "--prompt", "x"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"python -m shuangyu.chat: error: {name} is not a folder"], err


def fake_reply(text):
    """A stand-in for the generation: the same reply every time, fast."""
    return lambda model, tok, ids, kwargs: text


def test_a_long_conversation_says_when_its_oldest_exchanges_go_and_reset_says_it_cleared(
    tiny_base_model_dir, monkeypatch, capsys
):
    long_question = "你好，今天天气很好。" * 4
    lines = iter(["你好", "你好", "你好", long_question, "你好", "/reset", "你好", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    prompts = []
    monkeypatch.setattr(cli, "reply", lambda model, tok, ids, kwargs: prompts.append(len(ids)) or "很好。" * 12)
    # 256-token context, 100 kept for the reply; each reply is about 60 tokens: a third question does not fit
    assert cli.main([str(tiny_base_model_dir), "--mode", "chat", "--max_new_tokens", "100"]) == 0
    err = capsys.readouterr().err.splitlines()
    went = "went: the conversation no longer fits the model's 256-token context with 100 tokens kept for the reply"
    # a note each time exchanges go (there was none before): the 3rd question, the long one, the one after it
    assert [line for line in err if "went" in line] == [
        f"python -m shuangyu.chat: note: the oldest {exchanges} (question and reply) {went} (/reset starts afresh)"
        for exchanges in ("exchange", "2 exchanges", "exchange")
    ], err
    assert prompts[-1] == prompts[0]  # after /reset, the first question alone again
    assert err[-1] == "(the conversation is cleared)"  # /reset printed nothing before


def test_a_reply_cut_inside_a_character_loses_the_characters_first_bytes(tiny_base_model_dir, capsys):
    """A rare character is 2-3 byte tokens: a reply that stops after the first of them showed U+FFFD at its end."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base_model_dir)
    whole, rare = cli.encode_text(tok, "我们").ids, cli.encode_text(tok, "龘").ids
    assert len(rare) > 1 and tok.decode(whole + rare[:1]).endswith("\ufffd")  # the case this test is about

    class Model:
        device = torch.device("cpu")

        def generate(self, input_ids, attention_mask, streamer, **kwargs):
            streamer.put(input_ids[0])
            for token in whole + rare[:1]:  # one token at a time, as generate streams them
                streamer.put(torch.tensor([token]))
            streamer.end()
            return torch.cat([input_ids, torch.tensor([whole + rare[:1]])], dim=1)

    assert cli.reply(Model(), tok, [5, 6], {}) == "我们"  # what the conversation keeps
    assert capsys.readouterr().out == "我们\n"  # what the screen shows


def test_an_adapter_whose_base_moved_is_named_in_one_line_and_base_model_loads_it(
    tiny_base_model_dir, tmp_path, monkeypatch, capsys
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shuangyu.training.arguments import LoraArguments
    from shuangyu.training.finetune import apply_lora

    base = AutoModelForCausalLM.from_pretrained(tiny_base_model_dir, trust_remote_code=True)
    adapter = tmp_path / "adapter"
    apply_lora(base, LoraArguments(lora_r=4), say=lambda _: None).save_pretrained(adapter)
    AutoTokenizer.from_pretrained(tiny_base_model_dir).save_pretrained(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": "/x/final"}))
    assert cli.main([str(adapter), "--prompt", "你好"]) == 2  # a 30-line OSError traceback before
    assert capsys.readouterr().err.splitlines() == [
        f"python -m shuangyu.chat: error: {adapter / 'adapter_config.json'}: the base model /x/final is not there; "
        "pass --base_model"
    ]
    assert cli.main([str(adapter), "--prompt", "x", "--base_model", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"python -m shuangyu.chat: error: --base_model {tmp_path / 'nope'}: no such folder"
    ]
    assert cli.main([str(tiny_base_model_dir), "--prompt", "x", "--base_model", str(tiny_base_model_dir)]) == 2
    assert "is a whole model, not a LoRA adapter folder" in capsys.readouterr().err
    monkeypatch.setattr(cli, "reply", fake_reply("好"))
    assert cli.main([str(adapter), "--prompt", "你好", "--base_model", str(tiny_base_model_dir)]) == 0


@pytest.mark.parametrize("when", ["load", "reply"])
def test_ctrl_c_while_loading_or_answering_a_prompt_is_one_line(when, tiny_base_model_dir, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, when, interrupted)
    try:
        status = cli.main([str(tiny_base_model_dir), "--prompt", "你好"])
    except KeyboardInterrupt:  # as before: a traceback (and, uncaught, the end of this pytest run)
        pytest.fail("Ctrl-C came out of the chat command as a KeyboardInterrupt")
    assert status == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["python -m shuangyu.chat: interrupted; nothing was written"], err


@pytest.mark.parametrize("mode, why", [("continue", " in continue mode"), ("auto", ": {model} is not a chat model")])
def test_an_ignored_system_prompt_says_why(mode, why, tiny_base_model_dir, monkeypatch, capsys):
    """The tiny model's tokenizer has the chat template: --mode continue was called "not a chat model" before."""
    monkeypatch.setattr(cli, "reply", fake_reply(""))
    assert cli.main([str(tiny_base_model_dir), "--mode", mode, "--system", "你是助手", "--prompt", "你好"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "--system" in line]
    assert notes == [f"python -m shuangyu.chat: note: --system is ignored{why.format(model=tiny_base_model_dir)}"]


def test_an_empty_prompt_to_a_chat_model_is_refused(tiny_base_model_dir, monkeypatch, capsys):
    """A chat model answered an empty user turn with a page of noise; a continuation starts a document instead."""
    monkeypatch.setattr(cli, "reply", fake_reply(""))
    assert cli.main([str(tiny_base_model_dir), "--mode", "chat", "--prompt", " "]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        'python -m shuangyu.chat: error: --prompt "": a chat model answers a message: give one (or --mode continue)'
    ]
    assert cli.main([str(tiny_base_model_dir), "--mode", "continue", "--prompt", ""]) == 0
