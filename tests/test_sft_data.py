"""Conversations into training rows: the three schemas, every bad input named by file:line, packing without
attention across examples, padding per batch, overlong conversations truncated or skipped and counted."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from shuangyu.data.conversations import ConversationArguments, prepare_conversations
from shuangyu.data.loader import FLAG_LOSS, FLAG_PAD, FLAG_START
from shuangyu.data.prepared import PreparedData
from shuangyu.errors import UsageError
from shuangyu.text.conversations import read_conversation, read_preference
from shuangyu.tokenizer.chat_template import encode_chat

CHAT = [{"role": "user", "content": "写一首诗"}, {"role": "assistant", "content": "床前明月光"}]


def test_the_three_schemas_read_as_the_same_messages():
    alpaca = {"instruction": "写一首诗", "input": "", "output": "床前明月光"}
    sharegpt = {"conversations": [{"from": "human", "value": "写一首诗"}, {"from": "gpt", "value": "床前明月光"}]}
    for row in ({"messages": CHAT}, alpaca, sharegpt):
        assert read_conversation(row, "x:1") == CHAT
    with_input = {"instruction": "翻译", "input": "hello", "output": "你好"}
    assert read_conversation(with_input, "x:1")[0]["content"] == "翻译\n\nhello"
    system = [{"role": "system", "content": "你是诗人"}, *CHAT]
    assert read_conversation({"messages": system}, "x:1") == system


def test_preference_pairs_take_strings_or_messages():
    pair = read_preference({"prompt": "问题", "chosen": "好答案", "rejected": "坏答案"}, "x:1")
    assert pair["prompt"] == [{"role": "user", "content": "问题"}]
    assert pair["chosen"] == [{"role": "assistant", "content": "好答案"}]
    with pytest.raises(UsageError, match="x:1: the conversation ends with a assistant turn, not an user turn"):
        read_preference({"prompt": CHAT, "chosen": "a", "rejected": "b"}, "x:1")


BAD_ROWS = {
    "not_json": ('{"messages": [', "f.jsonl:2: not valid JSON"),
    "roles_out_of_order": (
        json.dumps({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}),
        "f.jsonl:2: message 0 is 'assistant' where 'user' was due",
    ),
    "two_users": (
        json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}),
        "f.jsonl:2: message 1 is 'user' where 'assistant' was due",
    ),
    "empty_assistant": (
        json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "  "}]}),
        "f.jsonl:2: message 1 (assistant) is empty",
    ),
    "no_assistant": (
        json.dumps({"messages": [{"role": "user", "content": "a"}]}),
        "f.jsonl:2: the conversation has no assistant turn",
    ),
    "unknown_schema": (json.dumps({"text": "plain"}), "f.jsonl:2: not a conversation"),
    "lone_surrogate": (  # valid JSON, but no UTF-8 for it: the tokenizer raised a TypeError
        '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b \\ud800 c"}]}',
        "f.jsonl:2: message 1 (assistant) is not valid UTF-8 (a lone surrogate, escaped \\ud800); fix the file",
    ),
    "unknown_role": (
        json.dumps({"messages": [{"role": "robot", "content": "a"}]}),
        "f.jsonl:2: message 0 has role 'robot'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_conversations_stop_with_file_and_line_and_write_nothing(case, tiny_tokenizer_dir, tmp_path):
    line, needle = BAD_ROWS[case]
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps({"messages": CHAT}, ensure_ascii=False) + "\n" + line + "\n", encoding="utf-8")
    out = tmp_path / "prepared"
    args = ConversationArguments(output_dir=str(out), tokenizer_name=str(tiny_tokenizer_dir), files=[str(path)])
    with pytest.raises(UsageError) as err:
        prepare_conversations(args)
    assert needle in str(err.value).replace(str(tmp_path) + "/", ""), str(err.value)
    assert not out.exists() and not list(tmp_path.glob(".prepared*"))


@pytest.mark.parametrize("case", ["empty", "blank_lines", "validation_empty", "validation_too_long"])
def test_a_source_without_examples_is_refused_saying_why(case, tiny_tokenizer_dir, tmp_path):
    """The QA repro: an empty file was "no conversation fits in --block_size", and an empty held-out file was
    accepted as "validation zh: 0 conversations" (the language dropped out of validation unsaid)."""
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text(json.dumps({"messages": CHAT}, ensure_ascii=False) + "\n", encoding="utf-8")
    long_chat = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    bad.write_text({"blank_lines": "\n \n\n", "validation_too_long": json.dumps({"messages": long_chat})}.get(case, ""))
    held_out = case.startswith("validation")
    out = tmp_path / "prepared"
    args = ConversationArguments(
        output_dir=str(out),
        tokenizer_name=str(tiny_tokenizer_dir),
        files=[f"x={good if held_out else bad}"],
        validation_files=[f"zh={bad}"] if held_out else [],
        block_size=64,
    )
    with pytest.raises(UsageError) as err:
        prepare_conversations(args)
    flag, name = ("--validation_files", "zh") if held_out else ("--train_files", "x")
    if case == "validation_too_long":
        assert str(err.value) == (
            f"{flag} {name}: no conversation fits in --block_size 64 (1 skipped as longer); raise --block_size, or leave "
            "the source out"
        )
    else:
        assert str(err.value) == f"{flag} {name}: {bad} holds no conversations; give it some, or leave the source out"
    assert not out.exists() and not list(tmp_path.glob(".prepared*"))


def prepared(tmp_path, files, tokenizer_dir, **kw) -> PreparedData:
    args = ConversationArguments(output_dir=str(tmp_path / "prepared"), tokenizer_name=str(tokenizer_dir), **kw)
    args.files = [f"{name}={path}" for name, path in files.items()]
    return prepare_conversations(args)


def test_packed_rows_restart_positions_and_train_only_replies(synthetic_chats, tiny_tokenizer_dir, tmp_path):
    c = synthetic_chats
    data = prepared(
        tmp_path,
        {"zh": c["zh_train"], "en": c["en_train"]},
        tiny_tokenizer_dir,
        validation_files=[f"zh={c['zh_val']}", f"en={c['en_val']}"],
        block_size=64,
    )
    m = data.manifest
    assert m["kind"] == "conversations" and m["train"]["examples"] == 120
    assert [s["examples"] for s in m["sources"]] == [60, 60] and set(m["validation"]) == {"zh", "en"}
    ds = data.train_dataset()
    tokens, flags = ds.__getitems__(list(range(len(ds))))
    assert (flags & FLAG_START != 0).sum() == 120  # every example starts once, none is split
    assert ((flags & FLAG_START != 0).sum(-1) > 1).any()  # rows hold several examples

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    batch = data.collator()((tokens[:4], flags[:4]))
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    row, labels, positions = batch["input_ids"][0], batch["labels"][0], batch["position_ids"][0]
    starts = (flags[0] & FLAG_START != 0).nonzero().flatten().tolist()
    assert all(row[s] == im_start and positions[s] == 0 for s in starts)
    # what is trained in the row is exactly its examples' replies and their <|im_end|>
    replies = {"你好！", "今天天气很好。", "我们学习语言。", "Hello!", "The city is small.", "People read stories."}
    trained_text = tok.decode(row[labels != -100])
    assert trained_text.count("<|im_end|>") == len(starts)
    assert all(piece in replies for piece in trained_text.split("<|im_end|>")[:-1])


def test_a_packed_example_sees_only_itself(synthetic_chats, tiny_tokenizer_dir, tiny_base_model_dir, tmp_path):
    """Position ids restarting per example keep attention inside it: its logits equal its logits alone."""
    from transformers import AutoModelForCausalLM

    c = synthetic_chats
    data = prepared(tmp_path, {"zh": c["zh_train"], "en": c["en_train"]}, tiny_tokenizer_dir, block_size=64)
    ds = data.train_dataset()
    tokens, flags = ds.__getitems__(list(range(len(ds))))
    r = int(((flags & FLAG_START != 0).sum(-1) > 1).nonzero()[0])
    batch = data.collator()((tokens[r : r + 1], flags[r : r + 1]))
    model = AutoModelForCausalLM.from_pretrained(tiny_base_model_dir, trust_remote_code=True).eval()
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        starts = (flags[r] & FLAG_START != 0).nonzero().flatten().tolist()
        second = starts[1]
        end = starts[2] if len(starts) > 2 else int((flags[r] & FLAG_PAD == 0).sum())
        alone = model(input_ids=batch["input_ids"][:, second:end]).logits[0]
    torch.testing.assert_close(packed[second:end], alone, atol=1e-5, rtol=1e-4)


def test_without_packing_each_batch_is_padded_to_its_longest_row(synthetic_chats, tiny_tokenizer_dir, tmp_path):
    c = synthetic_chats
    data = prepared(tmp_path, {"en": c["en_train"]}, tiny_tokenizer_dir, block_size=128, packing=False)
    ds = data.train_dataset()
    assert len(ds) == 60  # one conversation per row
    tokens, flags = ds.__getitems__([0, 1, 2])
    batch = data.collator()((tokens, flags))
    longest = int((flags & FLAG_PAD == 0).sum(-1).max())
    assert batch["input_ids"].shape == (3, longest) < (3, 128)
    assert (batch["labels"][flags[:, :longest] & FLAG_PAD != 0] == -100).all()


def test_overlong_conversations_are_truncated_after_a_whole_reply_or_skipped(tiny_tokenizer_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    long_chat = []
    for i in range(6):
        long_chat += [
            {"role": "user", "content": f"question {i} " * 3},
            {"role": "assistant", "content": "answer " * 4},
        ]
    first_turn = len(encode_chat(tok, long_chat[:2])[0])
    too_long_start = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    path = tmp_path / "long.jsonl"
    rows = [{"messages": long_chat}, {"messages": too_long_start}, {"messages": CHAT}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    block = first_turn * 2 + 5
    data = prepared(tmp_path, {"long": path}, tiny_tokenizer_dir, block_size=block)
    source = data.manifest["sources"][0]
    assert (source["examples"], source["truncated"], source["skipped"]) == (2, 1, 1)
    ds = data.train_dataset()
    tokens, flags = ds.__getitems__(list(range(len(ds))))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    # the truncated conversation ends right after a reply's <|im_end|>: no half reply is trained
    trained_ends = [(row == im_end) & (f & FLAG_LOSS != 0) for row, f in zip(tokens, flags, strict=True)]
    assert sum(int(t.sum()) for t in trained_ends) == 2 + 1  # two whole replies kept, plus the short chat's
    skip = tmp_path / "skip"
    skip.mkdir()
    data = prepared(skip, {"long": path}, tiny_tokenizer_dir, block_size=block, overlong="skip")
    source = data.manifest["sources"][0]
    assert (source["examples"], source["truncated"], source["skipped"]) == (1, 0, 2)


def test_every_documented_file_format_gives_the_same_rows(synthetic_chats, tiny_tokenizer_dir, tmp_path):
    """docs/sft.md: JSON lines or a .json array, either optionally .gz, or .parquet: the same conversations, the
    same training rows. A gzipped parquet file is refused in one line (parquet needs random access)."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in synthetic_chats["zh_train"].read_text(encoding="utf-8").splitlines()]
    files = {"jsonl": tmp_path / "c.jsonl", "json": tmp_path / "c.json", "parquet": tmp_path / "c.parquet"}
    files["jsonl"].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    files["json"].write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows), files["parquet"])
    for kind in list(files):
        files[f"{kind}.gz"] = tmp_path / f"c.{kind}.gz"
        files[f"{kind}.gz"].write_bytes(gzip.compress(files[kind].read_bytes()))
    with pytest.raises(UsageError, match=r"c\.parquet\.gz: a gzipped parquet file; gunzip it"):
        prepared(tmp_path / "refused", {"zh": files.pop("parquet.gz")}, tiny_tokenizer_dir, block_size=64)
    tokens = {}
    for kind, path in files.items():
        data = prepared(tmp_path / kind, {"zh": path}, tiny_tokenizer_dir, block_size=64)
        assert data.manifest["sources"][0]["examples"] == len(rows), kind
        ds = data.train_dataset()
        tokens[kind] = ds.__getitems__(list(range(len(ds))))[0]
    assert all(torch.equal(torch.as_tensor(t), torch.as_tensor(tokens["jsonl"])) for t in tokens.values())


def test_a_second_prepare_with_the_same_inputs_does_no_work(synthetic_chats, tiny_tokenizer_dir, tmp_path):
    files = {"zh": synthetic_chats["zh_train"]}
    first = prepared(tmp_path, files, tiny_tokenizer_dir, block_size=64)
    again = prepared(tmp_path, files, tiny_tokenizer_dir, block_size=64)
    assert again.reused and again.key == first.key
    other = prepared(tmp_path, files, tiny_tokenizer_dir, block_size=64, packing=False)
    assert not other.reused and other.key != first.key and other.data_key != first.data_key


def test_conversations_prepared_again_to_the_same_rows_keep_their_data_key(
    synthetic_chats, tiny_tokenizer_dir, tmp_path
):
    """A touched file prepares the folder again (and says why), to the same rows: a run's checkpoints still fit."""
    import os
    import shutil

    copy = shutil.copy(synthetic_chats["zh_train"], tmp_path / "zh.jsonl")
    first = prepared(tmp_path, {"zh": copy}, tiny_tokenizer_dir, block_size=64)
    state = first.train_loader(batch_size=2).state_dict()
    os.utime(copy, ns=(os.stat(copy).st_atime_ns, os.stat(copy).st_mtime_ns + 10**9))
    again = prepared(tmp_path, {"zh": copy}, tiny_tokenizer_dir, block_size=64)
    assert not again.reused and again.key != first.key and again.data_key == first.data_key
    assert again.rebuilt_because == f"the files: {os.path.realpath(copy)} was modified (its modification time changed)"
    again.train_loader(batch_size=2).load_state_dict(state)


def test_weights_are_refused_for_conversations(synthetic_chats, tiny_tokenizer_dir, tmp_path):
    args = ConversationArguments(
        output_dir=str(tmp_path / "p"),
        tokenizer_name=str(tiny_tokenizer_dir),
        files=[f"{synthetic_chats['zh_train']}:0.5"],
    )
    with pytest.raises(UsageError, match="weights do not apply to conversations"):
        prepare_conversations(args)


def test_a_dataset_folder_is_read_through_datasets(synthetic_chats, tiny_tokenizer_dir, tmp_path):
    """--dataset_name: the Hub path (datasets.load_dataset), on a local dataset folder; bad rows name the row."""
    import shutil

    folder = tmp_path / "chats"
    folder.mkdir()
    shutil.copy(synthetic_chats["zh_train"], folder / "train.jsonl")
    args = ConversationArguments(
        output_dir=str(tmp_path / "p"), tokenizer_name=str(tiny_tokenizer_dir), dataset=[f"chats={folder}"]
    )
    data = prepare_conversations(args)
    assert data.manifest["sources"][0]["examples"] == 60 and data.manifest["sources"][0]["dataset"] == str(folder)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "only a question"}]}) + "\n")
    args.dataset, args.output_dir = [str(bad)], str(tmp_path / "q")
    with pytest.raises(UsageError, match=r"--dataset_name .*bad: row 0: the conversation has no assistant turn"):
        prepare_conversations(args)
