"""`python -m shuangyu.chat` on a base model: what it continues from, how a text longer than the model's context is
cut (with a note), that a reply never runs past the context, and its flags checked before anything loads."""

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
    notes = [line for line in capsys.readouterr().err.splitlines() if "was cut" in line]
    assert len(notes) == 2 and f"context is {context} tokens" in notes[0], notes


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
