"""Streaming (`train_clm.py --streaming`): local jsonl/parquet/txt shards read through datasets streaming, split by
rank, shuffled in windows, mixed in tokens, packed on the fly, and resumed exactly from a saved position."""

import itertools
import json
import os
import random
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer

from shuangyu.data.loader import document_position_ids
from shuangyu.data.stream_sources import stream_sources
from shuangyu.data.streaming import StreamedData
from shuangyu.errors import UsageError

WORDS = "我们 今天 天气 很好 中国 学习 语言 模型 the model learns language from text and data".split()


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))


def documents(prefix: str, count: int, seed: int = 0, long_every: int = 0) -> list[str]:
    """Distinct documents `prefix-N ...` (every `long_every`-th one a few blocks long)."""
    rng = random.Random(seed)
    docs = []
    for i in range(count):
        words = rng.choices(WORDS, k=rng.randint(3, 20) * (8 if long_every and i % long_every == 0 else 1))
        docs.append(f"{prefix}-{i} " + " ".join(words))
    return docs


def write_shards(folder, docs: list[str], shards: int, kind: str = "jsonl", column: str = "text") -> str:
    """`docs` dealt into `shards` files of `kind`; returns their glob."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        part = docs[s::shards]
        path = folder / f"part-{s:03d}.{kind}"
        if kind == "jsonl":
            path.write_text("".join(json.dumps({column: d, "id": s}, ensure_ascii=False) + "\n" for d in part), "utf-8")
        elif kind == "parquet":
            pq.write_table(pa.table({column: part, "id": [s] * len(part)}), path, row_group_size=17)
        else:
            path.write_text("".join(d + "\n" for d in part), "utf-8")
    return str(folder / f"*.{kind}")


def open_data(tok, train_files, block_size=16, **kw) -> StreamedData:
    kw.setdefault("validation_docs", 3)
    kw.setdefault("window", 25)
    sources = stream_sources(train_files, kw.pop("dataset_names", []), [])
    return StreamedData(sources, tok, block_size, say=lambda message: None, **kw)


def stream_docs(tok, token_rows) -> list[str]:
    """The whole documents in a process's stream of blocks (the last, cut one left out)."""
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    flat = np.concatenate([np.asarray(r).reshape(-1) for r in token_rows]).tolist()
    docs, current = [], []
    for t in flat:
        if t == eos:
            docs.append(tok.decode(current))
            current = []
        else:
            current.append(t)
    return docs


def first_pass_blocks(loader) -> list[np.ndarray]:
    """Blocks until any source of the loader begins its second pass."""
    blocks = []
    while all(r.pass_ == 0 for r in loader.blocks.readers):
        blocks.append(loader.blocks.next_block())
    return blocks[:-1]


def test_documents_are_packed_end_to_end_after_the_held_out_slice(tmp_path, tok):
    docs = documents("zh", 120)
    glob = write_shards(tmp_path / "zh", docs, shards=1)
    data = open_data(tok, [f"zh={glob}"], validation_docs=5, window=1000)
    loader = data.train_loader(4)
    got = stream_docs(tok, first_pass_blocks(loader))
    held = set(docs[:5])  # one shard, read in stored order: the slice is the first 5 documents
    assert not held & set(got) and len(got) == len(set(got))
    assert len(got) >= 115 - 2 and set(got) <= set(docs) - held
    assert got != docs[5 : 5 + len(got)]  # shuffled within the window
    assert list(data.validation) == ["zh"] and data.validation["zh"].shape[1] == 16
    assert stream_docs(tok, data.validation["zh"])[:1] == docs[:1]


@pytest.mark.parametrize("shards", [4, 3])  # 4: whole shards per process; 3: each process keeps 1 document in 2
def test_ranks_get_disjoint_documents(tmp_path, tok, shards):
    docs = documents("en", 300)
    glob = write_shards(tmp_path / "en", docs, shards=shards)
    data = open_data(tok, [f"en={glob}"], validation_docs=4)
    per_rank = [stream_docs(tok, first_pass_blocks(data.train_loader(2, rank=r, world_size=2))) for r in range(2)]
    assert per_rank[0] and per_rank[1]
    assert not set(per_rank[0]) & set(per_rank[1])  # no document on both processes
    assert len(set(per_rank[0]) | set(per_rank[1])) >= 300 - 4 - 2 * 3  # all but the held out and each one's cut tail


def test_the_mix_follows_the_weights_in_tokens(tmp_path, tok):
    zh = write_shards(tmp_path / "zh", documents("zh", 200, seed=1, long_every=3), shards=2)
    en = write_shards(tmp_path / "en", documents("en", 60, seed=2), shards=2, kind="parquet")
    data = open_data(tok, [f"zh={zh}:0.25", f"en={en}:0.75"])
    loader = data.train_loader(8, seed=1)
    batches = iter(loader)
    for _ in range(60):
        next(batches)
    mix = loader.blocks.achieved_mixture()
    assert mix["zh"] == pytest.approx(0.25, abs=0.01) and mix["en"] == pytest.approx(0.75, abs=0.01)
    en_reader = loader.blocks.readers[1]
    assert en_reader.pass_ >= 1  # the small source ran out and began again, in a new order


def run_and_resume(data_factory, stop_after: int, total: int, **loader_kw):
    """Batches of an uninterrupted loader, and of one stopped after `stop_after` batches, its state put through
    JSON (as checkpoints store it), then restored into a loader over freshly opened data."""
    loader = data_factory().train_loader(4, **loader_kw)
    it = iter(loader)
    expected = [next(it)["input_ids"] for _ in range(total)]
    first = data_factory().train_loader(4, **loader_kw)
    it = iter(first)
    got = [next(it)["input_ids"] for _ in range(stop_after)]
    state = json.loads(json.dumps(first.state_dict()))
    resumed = data_factory().train_loader(4, **loader_kw)
    resumed.load_state_dict(state)
    it = iter(resumed)
    got += [next(it)["input_ids"] for _ in range(total - stop_after)]
    return expected, got


@pytest.mark.parametrize(
    ("rank", "world", "shards", "window"),
    [(0, 1, 3, 25), (1, 2, 4, 7), (0, 2, 3, 40)],  # one process; whole shards; 1 document in 2
)
def test_resume_continues_with_exactly_the_same_batches(tmp_path, tok, rank, world, shards, window):
    zh = write_shards(tmp_path / "zh", documents("zh", 150, seed=3, long_every=5), shards=shards)
    en = write_shards(tmp_path / "en", documents("en", 50, seed=4), shards=shards, kind="parquet")

    def factory():
        return open_data(tok, [f"zh={zh}:0.5", f"en={en}:0.5"], window=window)

    # stops inside windows and inside documents; 40 batches run past the end of a pass of the small source
    for stop_after in (1, 9, 23):
        expected, got = run_and_resume(factory, stop_after, 40, rank=rank, world_size=world, seed=5)
        assert all((a == b).all() for a, b in zip(expected, got, strict=True)), stop_after


def test_text_files_and_a_dataset_folder_stream_too(tmp_path, tok):
    txt = write_shards(tmp_path / "txt", documents("t", 40), shards=2, kind="txt")
    folder = tmp_path / "ds"
    write_shards(folder / "data", documents("d", 40), shards=2)
    data = open_data(tok, [f"t={txt}:1"], dataset_names=[f"d={folder}:1"])
    expected, got = run_and_resume(lambda: data, 5, 12)
    assert all((a == b).all() for a, b in zip(expected, got, strict=True))
    assert set(data.validation) == {"t", "d"}


def test_validation_files_replace_the_held_out_slice(tmp_path, tok):
    glob = write_shards(tmp_path / "zh", documents("zh", 30), shards=1)
    val = write_shards(tmp_path / "val", documents("v", 20), shards=1)
    data = open_data(tok, [f"zh={glob}"], validation_files=[f"zh={val}"])
    assert list(data.validation) == ["zh"] and "files" in data.validation_rule
    assert stream_docs(tok, data.validation["zh"])[:1] == ["v-0" + documents("v", 1)[0][3:]]
    got = stream_docs(tok, first_pass_blocks(data.train_loader(2)))
    assert data.held_out == [frozenset()] and len(set(got)) >= 30 - 1  # nothing held out of training


def test_validation_batches_carry_training_s_document_positions_when_asked(tmp_path, tok):
    """--document_attention: validation scored plain causal attention while training attended per document."""
    glob = write_shards(tmp_path / "zh", documents("zh", 60), shards=1)
    data = open_data(tok, [f"zh={glob}"], validation_docs=10)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    per_document = [b for s in data.validation_shards(4, 0, 0, 1, position_ids=True).values() for b, _ in s.batches()]
    ids = torch.cat([b["input_ids"] for b in per_document])
    assert (ids == eos).sum() >= 5
    assert torch.equal(torch.cat([b["position_ids"] for b in per_document]), document_position_ids(ids, eos))
    assert all("position_ids" not in b for s in data.validation_shards(4, 0, 0, 1).values() for b, _ in s.batches())


def test_a_resumed_stream_must_be_the_same_stream(tmp_path, tok):
    glob = write_shards(tmp_path / "zh", documents("zh", 60), shards=2)
    data = open_data(tok, [f"zh={glob}"])
    state = data.train_loader(2, rank=0, world_size=2, seed=1).state_dict()
    with pytest.raises(UsageError, match="for 2 processes, not 4: .* resume with 2 processes"):
        data.train_loader(2, rank=0, world_size=4, seed=1).load_state_dict(state)
    with pytest.raises(UsageError, match=r"another stream \(--seed changed\)"):
        data.train_loader(2, rank=0, world_size=2, seed=2).load_state_dict(state)
    other = open_data(tok, [f"zh={glob}"], block_size=32)
    with pytest.raises(UsageError, match="--block_size changed"):
        other.train_loader(2, rank=0, world_size=2, seed=1).load_state_dict(state)
    # shards copied anew (every mtime changed, the text the same) are the same stream: keyed by path and size
    for shard in (tmp_path / "zh").iterdir():
        os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    open_data(tok, [f"zh={glob}"]).train_loader(2, rank=0, world_size=2, seed=1).load_state_dict(state)


def test_a_moved_corpus_and_weights_given_as_other_numbers_are_the_same_stream(tmp_path, tok):
    write_shards(tmp_path / "a" / "zh", documents("zh", 60), shards=2)
    write_shards(tmp_path / "a" / "en", documents("en", 60, seed=1), shards=2)
    write_shards(tmp_path / "a" / "val", documents("v", 10), shards=1)

    def loader(root, zh_weight, en_weight):
        data = open_data(
            tok, [f"zh={root}/zh/*.jsonl:{zh_weight}", f"en={root}/en/*.jsonl:{en_weight}"],
            validation_files=[f"zh={root}/val/*.jsonl"],
        )  # fmt: skip
        return data.train_loader(2, rank=0, world_size=1, seed=1)

    first = loader(tmp_path / "a", 0.7, 0.3)
    it = iter(first)
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(first.state_dict()))
    expected = [next(it)["input_ids"] for _ in range(5)]
    # a cluster job copies the corpus to node-local disk, at another path each time
    (tmp_path / "a").rename(tmp_path / "b")
    resumed = loader(tmp_path / "b", 7, 3)
    resumed.load_state_dict(state)
    it = iter(resumed)
    assert all((a == b).all() for a, b in zip(expected, [next(it)["input_ids"] for _ in range(5)], strict=True))
    with pytest.raises(
        UsageError, match=r"another stream \(the weights \(zh 0.7, en 0.3 -> zh 0.6, en 0.4\) changed\)"
    ):
        loader(tmp_path / "b", 6, 4).load_state_dict(state)


def test_a_checkpoint_keyed_as_before_2026_12_03_still_resumes(tmp_path, tok):
    glob = write_shards(tmp_path / "zh", documents("zh", 60), shards=2)
    val = write_shards(tmp_path / "zh_val", documents("zh", 10), shards=1)
    data = open_data(tok, [f"zh={glob}:2"], validation_files=[f"zh={val}"])
    state = data.train_loader(2, rank=0, world_size=1, seed=1).state_dict()
    state["key"] = data.key(1, 1, earlier=True)  # the real paths and the raw weight, as older checkpoints hold
    assert state["key"]["sources"][0]["weight"] == 2.0 and state["key"] != data.key(1, 1)
    data.train_loader(2, rank=0, world_size=1, seed=1).load_state_dict(state)
    state["key"]["seed"] = 2
    with pytest.raises(UsageError, match=r"--seed changed"):
        data.train_loader(2, rank=0, world_size=1, seed=1).load_state_dict(state)


def test_bad_input_is_one_line_naming_the_flag(tmp_path, tok):
    body = write_shards(tmp_path / "body", documents("b", 10), shards=1, column="body")
    with pytest.raises(
        UsageError, match=r"--train_files .*: no column 'text' \(columns: body, id\); set --text_column"
    ):
        open_data(tok, [body])
    assert open_data(tok, [body], text_column="body").validation
    folder = tmp_path / "ds"
    write_shards(folder / "data", documents("d", 10), shards=1, kind="parquet", column="content")
    with pytest.raises(UsageError, match=r"--dataset_name .*ds: no column 'text' \(columns: content, id\)"):
        open_data(tok, [], dataset_names=[str(folder)])
    with pytest.raises(UsageError, match=r"--train_files '.*nothing/\*.jsonl': no file matches"):
        open_data(tok, [str(tmp_path / "nothing" / "*.jsonl")])
    mixed = write_shards(tmp_path / "mixed", documents("m", 10), shards=1, kind="parquet")
    write_shards(tmp_path / "mixed", documents("n", 10), shards=1)
    with pytest.raises(UsageError, match="mixes json and parquet files"):
        open_data(tok, [str(tmp_path / "mixed" / "*")])
    with pytest.raises(UsageError, match="several sources: give every source a :WEIGHT"):
        open_data(tok, [f"a={body}", f"b={mixed}"], text_column="body")
    with pytest.raises(UsageError, match="holds 10 documents, and --validation_docs 50 would hold out all"):
        open_data(tok, [body], text_column="body", validation_docs=50)
    data = open_data(tok, [body], text_column="body")
    with pytest.raises(UsageError, match="--dataloader_num_workers 2 with --streaming"):
        data.train_loader(2, num_workers=2)


def test_a_process_without_documents_is_found_before_training(tmp_path, tok):
    folder = tmp_path / "zh"
    folder.mkdir()
    docs = documents("zh", 60)
    (folder / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:5]), "utf-8")
    (folder / "b.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[5:]), "utf-8")
    data = open_data(tok, [str(folder / "*.jsonl")], validation_docs=5)  # all of a.jsonl held out
    errors = []
    for rank in range(2):
        loader = data.train_loader(2, rank=rank, world_size=2)
        try:
            loader.check_sources()
        except UsageError as err:
            errors.append(str(err))
        else:  # the check reads ahead and puts the stream back
            fresh = data.train_loader(2, rank=rank, world_size=2)
            assert (next(iter(loader))["input_ids"] == next(iter(fresh))["input_ids"]).all()
    assert len(errors) == 1 and "no training documents for process" in errors[0], errors


def test_reading_ahead_changes_nothing(tmp_path, tok):
    """The loader's thread reads batches ahead; what the loop receives, and the position it saves, are as without
    it, and an iteration stopped early continues exactly where the loop left it."""
    glob = write_shards(tmp_path / "zh", documents("zh", 200, seed=6, long_every=4), shards=3)
    data = open_data(tok, [f"zh={glob}"], window=11)
    plain = data.train_loader(3, seed=2)
    plain.prefetch = 0
    it = iter(plain)
    expected = [next(it)["input_ids"] for _ in range(30)]
    ahead = data.train_loader(3, seed=2)
    it = iter(ahead)
    got = [next(it)["input_ids"] for _ in range(12)]
    it.close()  # the loop broke out: the thread had read further, and is put back
    it = iter(ahead)
    got += [next(it)["input_ids"] for _ in range(18)]
    it.close()
    assert all((a == b).all() for a, b in zip(expected, got, strict=True))
    assert json.dumps(ahead.state_dict()) == json.dumps(plain.state_dict())


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"text": "caf\xe9 au lait"}', r"not valid UTF-8 \(invalid continuation byte at byte \d+\); fix the file$"),
        (b'{"text": "broken', r"not valid JSON \(.*\); fix or remove the line$"),
        # valid JSON, but the escape decodes to a lone surrogate, which has no UTF-8: pyarrow refused the whole file
        (b'{"text": "abc \\ud800 def"}', r"not valid UTF-8 \(field 'text' holds a lone surrogate, escaped \\ud800\)"),
        (b'{"content": "no text field"}', r"no field 'text' \(fields: content\); set --text_column$"),
    ],
)
def test_a_bad_line_is_named_by_file_and_line_as_prepare_names_it(tmp_path, tok, capsys, line, message):
    """datasets reads the stream; a line it chokes on (or lets through as a null) is found with prepare's checks,
    mid-run as at the start, and all processes stop together at the same batch (StreamFailed)."""
    path = tmp_path / "en.jsonl"
    lines = [json.dumps({"text": d}).encode() for d in documents("en", 200, seed=3)]
    lines[150] = line  # line 151: a few windows in
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(UsageError, match=re.escape(f"{path}:151: ") + message) as caught:
        loader = open_data(tok, [str(path)], window=16).train_loader(2, agree_every=3)
        loader.check_sources()  # not in the first window: training starts
        for _ in itertools.islice(iter(loader), 10_000):
            pass
    # datasets parses the first 10 MB of a json file at once: a line that is not JSON stops the run at its start
    assert type(caught.value).__name__ == ("UsageError" if b"broken" in line or b"ud800" in line else "StreamFailed")
    assert "Failed to load JSON" not in capsys.readouterr().err  # pyarrow's message, logged by datasets, is not shown
    # in the first window, it stops the run before training
    path.write_bytes(b"\n".join([*lines[:5], line, *lines[5:20]]) + b"\n")
    with pytest.raises(UsageError, match=re.escape(f"{path}:6: ") + message):
        open_data(tok, [str(path)], window=16).train_loader(2).check_sources()


def test_a_json_null_is_named_as_prepare_names_it_and_an_empty_source_is_named(tmp_path, tok):
    path = tmp_path / "en.jsonl"
    lines = [json.dumps({"text": d}) for d in documents("en", 40)]
    lines[20] = json.dumps({"text": None})  # prepare refuses a null text (it passed over it, uncounted)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UsageError, match=re.escape(f"{path}:21: field 'text' is null, not a string; fix or remove it")):
        first_pass_blocks(open_data(tok, [str(path)], window=16).train_loader(2))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UsageError, match=re.escape(f"--train_files {empty}: empty (its files hold no rows)")):
        open_data(tok, [str(empty)])


def test_a_field_that_is_not_a_string_is_named_by_line_and_type(tmp_path, tok):
    path = tmp_path / "en.jsonl"
    lines = [json.dumps({"text": d}) for d in documents("en", 40)]
    lines[19] = json.dumps({"text": 20})  # the column exists: --text_column is not the fix
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UsageError, match=re.escape(f"{path}:20: field 'text' is int, not a string")) as caught:
        open_data(tok, [str(path)], window=16).train_loader(2).check_sources()
    assert "--text_column" not in str(caught.value)


@pytest.mark.parametrize("kind", ["txt", "jsonl"])
def test_a_source_of_whitespace_is_said_to_have_no_text(tmp_path, tok, kind):
    path = tmp_path / f"ws.{kind}"
    path.write_text("  \n\t\n \n" if kind == "txt" else '{"text": " "}\n{"text": "\\n"}\n')
    message = re.escape(f"--train_files {path}: no document with text (empty, or only whitespace)")
    with pytest.raises(UsageError, match=message):  # held-out slice
        open_data(tok, [str(path)])
    other = write_shards(tmp_path / "val", documents("v", 10), shards=1)
    with pytest.raises(UsageError, match=message):  # one process: shards or processes are not the cause
        open_data(tok, [str(path)], validation_files=[other]).train_loader(2).check_sources()


def test_a_text_file_s_byte_order_mark_is_dropped_as_prepare_drops_it(tmp_path, tok):
    path = tmp_path / "zh.txt"
    docs = documents("zh", 30)
    path.write_bytes(b"\xef\xbb\xbf" + "".join(d + "\n" for d in docs).encode())
    data = open_data(tok, [str(path)], validation_docs=3, block_size=8)
    assert stream_docs(tok, data.validation[str(path)])[0] == docs[0]
