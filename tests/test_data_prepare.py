"""prepare: packing, end-of-text, token-weighted mixing, validation split, cache reuse and invalidation."""

import json
import os
import signal
import time

import numpy as np
import pytest
from transformers import AutoTokenizer

import shuangyu.data.prepare as prepare_module
from shuangyu.data.documents import tokenize_documents
from shuangyu.data.inputs import PrepareArguments
from shuangyu.data.packing import mix_documents, token_dtype
from shuangyu.data.prepare import prepare as prepare_data
from shuangyu.data.prepared import TRAIN_FILE, VALIDATION_FILE, PreparedData
from shuangyu.errors import UsageError


def write_jsonl(path, texts, column="text"):
    path.write_text("".join(json.dumps({column: t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return path


def prepare(tmp_path, tokenizer_dir, name="out", **kwargs):
    kwargs.setdefault("num_proc", 1)
    args = PrepareArguments(output_dir=str(tmp_path / name), tokenizer_name=str(tokenizer_dir), **kwargs)
    return prepare_data(args, show_progress=False)


def flat(data, split="train"):
    m = data.manifest
    return np.fromfile(data.path / (TRAIN_FILE if split == "train" else VALIDATION_FILE), dtype=m["dtype"])


def split_docs(tokens, eos):
    """Documents (as tuples of ids, EOS included) that lie whole in a token stream."""
    ends = np.flatnonzero(tokens == eos)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tuple(tokens[s : e + 1].tolist()) for s, e in zip(starts, ends, strict=True)]


@pytest.fixture(scope="module")
def tok(data_tokenizer_dir):
    return AutoTokenizer.from_pretrained(str(data_tokenizer_dir))


def test_every_document_is_packed_once_and_ends_with_eos(tmp_path, data_tokenizer_dir, tok):
    # texts that contain the special token's text: it must be encoded as plain characters, not as EOS
    texts = [f"第{i}篇文章：今天天气很好。 Document number {i} says hello <|endoftext|> world." for i in range(300)]
    src = write_jsonl(tmp_path / "docs.jsonl", texts)
    data = prepare(tmp_path, data_tokenizer_dir, files=[str(src)], block_size=64, validation_fraction=0.0)
    m = data.manifest
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    assert m["dtype"] == "uint16" and m["tokenizer"]["eos_token_id"] == eos
    expected = {tuple(tok(t, add_special_tokens=False)["input_ids"] + [eos]) for t in texts}
    assert all(eos not in ids[:-1] for ids in expected)  # text "<|endoftext|>" never became the EOS id
    tokens = flat(data)
    assert tokens.size == m["train"]["blocks"] * 64 and m["train"]["blocks"] > 10
    total = sum(len(d) for d in expected)
    assert m["train"]["tokens"] + m["train"]["tokens_dropped"] == total  # no padding, only the tail dropped
    whole = split_docs(tokens, eos)
    assert len(whole) == len(set(whole)) and set(whole) <= expected
    assert len(whole) >= len(expected) - 1  # all but the document cut by the dropped tail
    # documents are shuffled, not in file order
    assert whole[:20] != [tuple(tok(t, add_special_tokens=False)["input_ids"] + [eos]) for t in texts[:20]]


def test_mixture_is_honoured_in_tokens_and_reported(tmp_path, data_tokenizer_dir, data_corpus_slices):
    files = [
        f"zh={data_corpus_slices['zh_reviews']},{data_corpus_slices['zh_news']}:0.7",
        f"en={data_corpus_slices['en_reviews']}:0.3",
    ]
    data = prepare(tmp_path, data_tokenizer_dir, files=files, block_size=128)
    zh, en = data.manifest["sources"]
    assert zh["share_asked"] == pytest.approx(0.7) and en["share_asked"] == pytest.approx(0.3)
    assert zh["share"] == pytest.approx(0.7, abs=0.005) and en["share"] == pytest.approx(0.3, abs=0.005)
    # the total is the largest that repeats no source: one of them is taken whole, once
    assert min(s["tokens_available"] - s["tokens_taken"] for s in (zh, en)) <= 0
    assert zh["passes"] == en["passes"] == 1
    assert (
        data.manifest["train"]["tokens"] + data.manifest["train"]["tokens_dropped"]
        == zh["tokens_taken"] + en["tokens_taken"]
    )

    # asking for more tokens than the small source has upsamples it, in whole extra passes
    more = prepare(
        tmp_path,
        data_tokenizer_dir,
        name="more",
        files=files,
        block_size=128,
        max_tokens=str(3 * zh["tokens_available"]),
    )
    zh2, en2 = more.manifest["sources"]
    assert en2["passes"] > 1 and zh2["passes"] > 1
    assert zh2["share"] == pytest.approx(0.7, abs=0.005)


def test_mix_documents_is_deterministic_and_exact():
    rng = np.random.default_rng(0)
    source = rng.integers(0, 3, 5000)
    tokens = rng.integers(5, 50, 5000)
    order, report = mix_documents(source, tokens, 3, [0.5, 0.25, 0.25], 100_000, seed=7)
    again, _ = mix_documents(source, tokens, 3, [0.5, 0.25, 0.25], 100_000, seed=7)
    other, _ = mix_documents(source, tokens, 3, [0.5, 0.25, 0.25], 100_000, seed=8)
    assert np.array_equal(order, again) and not np.array_equal(order, other)
    taken = np.bincount(source[order], weights=tokens[order], minlength=3)
    assert taken.sum() == pytest.approx(100_000, abs=150)  # each source overshoots by under one document
    assert taken / taken.sum() == pytest.approx([0.5, 0.25, 0.25], abs=0.002)
    assert [r["share"] for r in report] == pytest.approx([0.5, 0.25, 0.25], abs=0.002)
    # without weights, every document once
    order, _ = mix_documents(source, tokens, 3, None, None, seed=7)
    assert sorted(order.tolist()) == list(range(5000))


def test_validation_split_by_whole_documents_per_source(tmp_path, data_tokenizer_dir, tok, data_corpus_slices):
    files = [f"zh={data_corpus_slices['zh_reviews']}", f"en={data_corpus_slices['en_reviews']}"]
    a = prepare(tmp_path, data_tokenizer_dir, name="a", files=files, block_size=32, validation_fraction=0.05, seed=1)
    b = prepare(tmp_path, data_tokenizer_dir, name="b", files=files, block_size=32, validation_fraction=0.05, seed=1)
    c = prepare(tmp_path, data_tokenizer_dir, name="c", files=files, block_size=32, validation_fraction=0.05, seed=2)
    eos = a.eos_token_id
    val = a.manifest["validation"]
    assert set(val) == {"zh", "en"} and all(v["docs"] > 5 and v["blocks"] > 0 for v in val.values())
    assert np.array_equal(flat(a, "validation"), flat(b, "validation"))  # deterministic by seed
    assert not np.array_equal(flat(a, "validation"), flat(c, "validation"))
    # never overlapping train: no held-out document appears in the training stream
    held = set(split_docs(flat(a, "validation"), eos))
    train = set(split_docs(flat(a), eos))
    assert held and not held & train
    # each language's held-out blocks come from that language only
    datasets = a.validation_datasets()
    zh_text = tok.decode(datasets["zh"][0])
    assert sum("\u4e00" <= ch <= "\u9fff" for ch in zh_text) > len(zh_text) / 3


def test_a_fraction_that_holds_out_no_block_is_topped_up_and_said(tmp_path, data_tokenizer_dir, tok):
    """0.5% of 200 documents is none: the source dropped out of validation with `0 docs, 0 blocks` and exit 0.
    Whole documents are held out, in a seeded order, until they fill a block; a one-document source cannot be
    split, and the report says it has no validation."""
    from shuangyu.data.prepare import format_report

    zh = write_jsonl(tmp_path / "zh.jsonl", [f"第{i}条：一些中文的句子，用来测试。" for i in range(200)])
    en = write_jsonl(tmp_path / "en.jsonl", [f"Line {i}: some English words to pack." for i in range(200)])
    one = write_jsonl(tmp_path / "one.jsonl", ["a single document " * 20])
    files = [f"zh={zh}:0.4", f"en={en}:0.4", f"one={one}:0.2"]
    data = prepare(tmp_path, data_tokenizer_dir, files=files, block_size=32)
    val = data.manifest["validation"]
    for name in ("zh", "en"):
        assert val[name]["blocks"] == 1 and 1 <= val[name]["docs"] <= 100 and val[name]["topped_up"], val
    assert val["one"]["blocks"] == 0 and not val["one"]["topped_up"]
    held = set(split_docs(flat(data, "validation"), data.eos_token_id))
    assert held and not held & set(split_docs(flat(data), data.eos_token_id))  # still never in training
    again = prepare(tmp_path, data_tokenizer_dir, name="again", files=files, block_size=32)
    assert np.array_equal(flat(data, "validation"), flat(again, "validation"))  # deterministic
    report = format_report(data)
    assert "validation   en: " in report and "--validation_fraction 0.005 made no block: more held out" in report
    assert "too little text for a block of 32: no validation for one" in report
    # --validation_fraction 0 asks for no validation: nothing topped up
    none = prepare(tmp_path, data_tokenizer_dir, name="none", files=files, block_size=32, validation_fraction=0.0)
    assert all(v["docs"] == 0 for v in none.manifest["validation"].values())
    assert "no validation asked for" in format_report(none) and "too little text" not in format_report(none)


def test_explicit_validation_files(tmp_path, data_tokenizer_dir, data_corpus_slices):
    data = prepare(
        tmp_path,
        data_tokenizer_dir,
        files=[f"zh={data_corpus_slices['zh_reviews']}", f"en={data_corpus_slices['en_reviews']}"],
        validation_files=[f"zh={data_corpus_slices['zh_news']}", f"en={data_corpus_slices['en_news']}"],
        block_size=64,
    )
    m = data.manifest
    assert all(s["validation_docs"] == 0 for s in m["sources"])  # nothing held out of the training sources
    assert m["validation"]["zh"]["tokens"] > 0 and m["validation"]["en"]["tokens"] > 0
    assert m["validation_rule"] == "files"


def test_second_run_does_no_work_and_any_change_invalidates(
    tmp_path, data_tokenizer_dir, data_other_tokenizer_dir, monkeypatch
):
    calls = []
    real = tokenize_documents

    def counting(batch, **kwargs):
        calls.append(len(batch["text"]))
        return real(batch, **kwargs)

    monkeypatch.setattr(prepare_module, "tokenize_documents", counting)
    zh = write_jsonl(tmp_path / "zh.jsonl", [f"这是第{i}个句子，用来测试缓存。" * 3 for i in range(200)])
    en = write_jsonl(tmp_path / "en.jsonl", [f"This is sentence {i}, written to test the cache." for i in range(200)])
    base = dict(files=[f"zh={zh}:0.5", f"en={en}:0.5"], block_size=32)

    def run(**changes):
        calls.clear()
        data = prepare(tmp_path, changes.pop("tok", data_tokenizer_dir), **{**base, **changes})
        return data, sum(calls)

    first, n = run()
    assert n == 400 and not first.reused
    again, n = run()
    assert n == 0 and again.reused and again.key == first.key
    assert again.manifest == first.manifest

    # each change rebuilds: content (size, mtime), weights, block size, tokenizer (with --overwrite)
    with open(en, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"text": "One more line."}) + "\n")
    changed, n = run()
    assert n == 401 and changed.key != first.key
    st = os.stat(en)
    os.utime(en, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same size, newer file
    assert run()[1] == 401
    assert run(files=[f"zh={zh}:0.6", f"en={en}:0.4"])[1] == 401
    assert run(block_size=16)[1] == 401
    assert run(seed=5)[1] == 401
    other, n = run(tok=data_other_tokenizer_dir, overwrite=True)
    assert n == 401 and other.manifest["tokenizer"]["vocab_size"] == 400
    assert not list(tmp_path.glob(".out.*"))  # no temporary folders left behind


def test_a_rebuild_says_what_changed_and_the_same_blocks_keep_their_data_key(
    tmp_path, data_tokenizer_dir, data_other_tokenizer_dir
):
    """Only the mtime changed (a corpus copied anew): prepared again, and said why, but the blocks and their data key
    (what a checkpoint's position is for) are the same. The same mix written as other numbers is no change."""
    zh = write_jsonl(tmp_path / "zh.jsonl", [f"这是第{i}个句子，用来测试缓存。" * 3 for i in range(200)])
    en = write_jsonl(tmp_path / "en.jsonl", [f"This is sentence {i}, written to test the cache." for i in range(200)])
    said = []

    def run(files=(f"zh={zh}:0.7", f"en={en}:0.3"), tok=data_tokenizer_dir, **kwargs):
        said.clear()
        args = PrepareArguments(
            output_dir=str(tmp_path / "out"), tokenizer_name=str(tok), files=list(files), num_proc=1, **kwargs
        )
        return prepare_data(args, show_progress=False, say=said.append)

    first = run(block_size=32)
    assert said == [] and first.rebuilt_because is None
    assert run(files=[f"zh={zh}:7", f"en={en}:3"], block_size=32).reused and said == []

    st = os.stat(zh)
    os.utime(zh, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched
    touched = run(block_size=32)
    assert not touched.reused and touched.key != first.key
    assert said == [
        f"{tmp_path / 'out'}: preparing it again, since what it was prepared from changed: the files: {zh} was "
        "modified (its modification time changed)"
    ]
    assert touched.data_key == first.data_key and np.array_equal(flat(touched), flat(first))

    with open(en, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"text": "One more line."}) + "\n")
    grown = run(block_size=32)
    assert said[0].endswith(f"the files: {en} changed size") and grown.data_key != first.data_key
    # each change against the one before it
    half = [f"zh={zh}:0.5", f"de={en}:0.5"]
    for change, why in (
        ({"files": [f"zh={zh}:0.5", f"en={en}:0.5"]}, "the weights"),
        ({"files": half}, "the sources (zh, en -> zh, de)"),
        (
            {"files": [f"zh={zh}:0.6", f"de={en}:0.4"], "block_size": 16, "seed": 5},
            "the weights; the block size; the seed",
        ),
        (
            {"files": half, "tok": data_other_tokenizer_dir, "overwrite": True},
            "the tokenizer; the weights; the block size; the seed",
        ),
        ({"files": half, "tok": data_other_tokenizer_dir, "skip_bad_lines": True}, "other options (--skip_bad_lines)"),
    ):
        assert run(**{"block_size": 32, **change}).rebuilt_because == why and said[0].endswith(f"changed: {why}")


def test_a_folder_prepared_before_blocks_were_hashed_keeps_its_checkpoints(tmp_path, data_tokenizer_dir):
    """Checkpoints saved before the blocks were hashed carry the inputs' key: prepared again to the same blocks
    (after a touch), the folder still accepts them; to other blocks, not."""
    src = write_jsonl(tmp_path / "docs.jsonl", [f"第{i}篇：今天天气很好。 Document {i}." for i in range(300)])
    first = prepare(tmp_path, data_tokenizer_dir, files=[str(src)], block_size=64)
    manifest = first.path / "manifest.json"
    old = {k: v for k, v in first.manifest.items() if k not in ("inputs", "blocks_sha256", "earlier_keys")}
    manifest.write_text(json.dumps(old))  # as the earlier version wrote it
    state = PreparedData.load(first.path).train_loader(batch_size=4).state_dict()
    assert state["data_key"] == first.key  # that version's checkpoints: the inputs' key

    os.utime(src, ns=(os.stat(src).st_atime_ns, os.stat(src).st_mtime_ns + 10**9))
    again = prepare(tmp_path, data_tokenizer_dir, files=[str(src)], block_size=64)
    assert not again.reused and again.manifest["earlier_keys"] == [first.key]
    again.train_loader(batch_size=4).load_state_dict(state)  # accepted
    once_more = prepare(tmp_path, data_tokenizer_dir, files=[str(src)], block_size=64, seed=1)
    assert once_more.manifest["earlier_keys"] == []
    with pytest.raises(UsageError, match="the training data changed since the run started"):
        once_more.train_loader(batch_size=4).load_state_dict(state)


def test_num_proc_2_gives_the_same_blocks(tmp_path, data_tokenizer_dir, data_corpus_slices):
    files = [f"zh={data_corpus_slices['zh_news']}:1", f"en={data_corpus_slices['en_news']}:1"]
    one = prepare(tmp_path, data_tokenizer_dir, name="one", files=files, block_size=64, num_proc=1)
    two = prepare(tmp_path, data_tokenizer_dir, name="two", files=files, block_size=64, num_proc=2)
    assert np.array_equal(flat(one), flat(two)) and np.array_equal(flat(one, "val"), flat(two, "val"))


def test_more_processes_than_documents_is_no_warning(tmp_path, data_tokenizer_dir, capfd):
    """datasets warned "num_proc must be <= 1. Reducing num_proc to 1" for a one-document source."""
    path = write_jsonl(tmp_path / "one.jsonl", ["a single short document"])
    data = prepare(tmp_path, data_tokenizer_dir, files=[f"en={path}"], block_size=8, num_proc=2)
    assert data.manifest["train"]["blocks"] > 0
    printed = capfd.readouterr()
    assert "num_proc" not in printed.out + printed.err, printed.err


def test_token_dtype():
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
    assert token_dtype(151_000) == np.uint32


def test_gzip_and_txt_sources(tmp_path, data_tokenizer_dir):
    import gzip

    with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as fh:
        for i in range(100):
            fh.write(json.dumps({"body": f"压缩文件里的第{i}行。"}) + "\n")
    (tmp_path / "b.txt").write_text("".join(f"plain text line {i}\n" for i in range(100)), encoding="utf-8")
    data = prepare(tmp_path, data_tokenizer_dir, files=[f"gz={tmp_path}/*.jsonl.gz"], text_column="body", block_size=16)
    assert data.manifest["sources"][0]["docs"] == 100
    txt = prepare(tmp_path, data_tokenizer_dir, name="txt", files=[f"{tmp_path}/b.txt"], block_size=16)
    assert txt.manifest["sources"][0]["docs"] == 100


def test_a_long_document_is_tokenised_in_pieces_into_the_same_ids(tmp_path, data_tokenizer_dir, tok, monkeypatch):
    """A document longer than PIECE_CHARS is encoded piece by piece (the tokenizer's memory grows with the text it
    encodes at once), cut where pre-tokens start: the ids are those of the whole, with one end-of-text at its end."""
    import shuangyu.data.documents as documents

    monkeypatch.setattr(documents, "PIECE_CHARS", 700)
    parts = [
        "今天天气很好，我们去公园散步。",
        "The model learns language from text.",
        "第3章：数据 2024年",
        "(see §4.1)…",
    ]
    rng = np.random.default_rng(0)
    text = "".join(parts[i] + ["", " ", "\n", "\n\n", "  "][j] for i, j in rng.integers(0, [4, 5], (900, 2)))
    pieces = documents.split_at_pretoken_starts(text, 700)
    assert "".join(pieces) == text and len(pieces) > 20 and max(map(len, pieces)) <= 700
    no_whitespace = "".join(text.split())  # no place to cut but by size
    assert all(len(p) <= 700 for p in documents.split_at_pretoken_starts(no_whitespace, 700))

    src = write_jsonl(tmp_path / "long.jsonl", [text])
    data = prepare(tmp_path, data_tokenizer_dir, files=[str(src)], block_size=16, validation_fraction=0.0)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    whole = tok(text, add_special_tokens=False)["input_ids"] + [eos]
    m = data.manifest["train"]
    assert m["tokens"] + m["tokens_dropped"] == len(whole)
    assert flat(data).tolist() == whole[: m["tokens"]]  # one document, the same ids, one end-of-text


@pytest.mark.slow(minutes=0.5)
def test_ctrl_c_while_tokenising_on_2_processes_is_one_line(tmp_path, data_tokenizer_dir):
    """Ctrl-C reaches datasets' pool of tokenising processes too (the terminal signals the whole group): one line,
    exit 130, the folder as it was, no temporary folder and no process left."""
    import subprocess
    import sys
    from pathlib import Path

    old = prepare(
        tmp_path, data_tokenizer_dir, files=[str(write_jsonl(tmp_path / "small.jsonl", ["短文。"] * 50))], block_size=16
    )
    before = (old.path / "manifest.json").read_text()
    big = write_jsonl(
        tmp_path / "big.jsonl", [f"第{i}篇：今天天气很好，我们去公园散步。 Document {i} " * 60 for i in range(3000)]
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "shuangyu.data.prepare", "--tokenizer_name", str(data_tokenizer_dir), "--files"]
    cmd += [str(big), "--output_dir", str(old.path), "--num_proc", "2", "--block_size", "64"]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline, children = time.monotonic() + 120, set()
    while time.monotonic() < deadline and proc.poll() is None:
        alive = {int(p.name) for p in Path("/proc").glob("[0-9]*") if _parent_pid(p) == proc.pid}
        children |= alive
        # the pool's 2 processes and datasets' manager process are up, so tokenising (the text is read: its Arrow
        # file is whole). Not "a tokens file is written": that comes as the pool ends, and on a busy machine this
        # loop saw it only once prepare had finished (exit 0)
        if len(alive) >= 3 and list(tmp_path.glob(".out.tmp-*/arrow/**/generator-train.arrow")):
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"tokenising never started ({proc.poll()=})")
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: every process of the group
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert err.strip().splitlines() == [f"python -m shuangyu.data.prepare: interrupted; {old.path} was left as it was"]
    assert (old.path / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.jsonl", "out", "small.jsonl"]
    time.sleep(1)
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()], "worker processes left running"


def _report_ctrl_c_handler(queue):
    queue.put(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)
    time.sleep(60)  # as a pool or manager process that nothing tells to stop


def test_processes_forked_for_the_tokenising_pool_leave_ctrl_c_to_prepare_and_end_with_it():
    """Ctrl-C while datasets set its pool up: a pool process printed its own KeyboardInterrupt traceback, and one
    started just after the Ctrl-C was left running, which multiprocess waits for at exit: prepare hung."""
    import multiprocess

    from shuangyu.data.prepare import datasets_pool_left_to_this_process

    signal.signal(signal.SIGINT, signal.default_int_handler)  # heard, as in a command (xdist's workers ignore it)
    queue, heard = multiprocess.get_context("fork").Queue(), signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), datasets_pool_left_to_this_process():
        process = multiprocess.get_context("fork").Process(target=_report_ctrl_c_handler, args=(queue,))
        process.start()
        assert queue.get(timeout=30) is True  # it ignores SIGINT from birth
        raise KeyboardInterrupt
    process.join(timeout=10)
    assert not process.is_alive() and process.exitcode == -signal.SIGTERM
    assert signal.getsignal(signal.SIGINT) is heard  # this process's own handling of Ctrl-C is as it was


def test_ctrl_c_while_main_imports_and_builds_its_parser_is_one_line(tmp_path, monkeypatch, capsys):
    """main() imports transformers (seconds) before parsing: Ctrl-C then was a KeyboardInterrupt traceback."""
    import transformers

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(transformers, "HfArgumentParser", ctrl_c)
    argv = ["--tokenizer_name", "tok", "--files", "a.jsonl", "--output_dir", str(tmp_path / "out")]
    try:
        status = prepare_module.main(argv)
    except KeyboardInterrupt:  # caught here: else it would stop pytest itself
        pytest.fail("Ctrl-C escaped main() as a KeyboardInterrupt")
    assert status == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "python -m shuangyu.data.prepare: interrupted; nothing was written"
    ]
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_that_a_del_method_swallows_still_stops_prepare(tmp_path, data_tokenizer_dir, monkeypatch, capsys):
    """Python ignores an exception raised inside a __del__: a Ctrl-C that landed in one (the regex module's, in
    garbage collection) was lost and prepare ran to the end, exit 0. It still stops the run, before the folder."""
    import signal

    class DelTakesCtrlC:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs here, inside __del__

    hold_out = prepare_module.hold_out_a_block_each

    def ctrl_c_in_a_del(*args):
        DelTakesCtrlC()
        return hold_out(*args)

    monkeypatch.setattr(prepare_module, "hold_out_a_block_each", ctrl_c_in_a_del)
    # a terminal's Ctrl-C meets Python's own handler; a test process may hold another (the autouse fixture restores it)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    src = write_jsonl(tmp_path / "small.jsonl", ["短文。 some text"] * 50)
    out = tmp_path / "out"
    argv = ["--tokenizer_name", str(data_tokenizer_dir), "--files", str(src), "--output_dir", str(out)]
    assert prepare_module.main([*argv, "--block_size", "16"]) == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        f"python -m shuangyu.data.prepare: interrupted; nothing was written to {out}"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.jsonl"]


def _parent_pid(proc_dir) -> int | None:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def test_gpt2s_tokenizer_ends_documents_with_its_endoftext(tmp_path, gpt2_tokenizer_dir):
    """GPT-2's <|endoftext|> (50256) is also its unk token: it was taken for missing and the tokenizer refused,
    though the docs name it as one that works. A tokenizer that really lacks the token is still refused."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from shuangyu.errors import UsageError

    texts = [f"Document {i}: 一些中文 and some English." for i in range(30)]
    data = prepare(tmp_path, gpt2_tokenizer_dir, files=[str(write_jsonl(tmp_path / "d.jsonl", texts))], block_size=16)
    assert data.manifest["tokenizer"]["eos_token_id"] == 50256
    tokens = np.concatenate([flat(data), flat(data, "validation")])
    assert (tokens == 50256).sum() >= len(texts) - 2  # every document ends with it (but the dropped tail's)

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(tmp_path / "no_eos")
    with pytest.raises(UsageError, match="has no <\\|endoftext\\|> token"):
        prepare(tmp_path, tmp_path / "no_eos", name="out2", files=[str(tmp_path / "d.jsonl")], block_size=16)
