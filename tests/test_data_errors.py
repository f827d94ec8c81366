"""Bad input to `python -m shuangyu.data.prepare`: a one-line error naming the file or flag, exit 2, no cache."""

import json
import time

import pytest

import shuangyu.data.prepare as prepare_module
from shuangyu.data.prepare import main as prepare_main
from shuangyu.data.prepared import MANIFEST, PROG, PreparedData
from shuangyu.errors import UsageError


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def run_cli(capsys, tmp_path, tokenizer_dir, *flags, out="out"):
    argv = ["--tokenizer_name", str(tokenizer_dir), "--output_dir", str(tmp_path / out), "--num_proc", "1"]
    code = prepare_main([*argv, *map(str, flags)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, tmp_path, *needles, out="out"):
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith(PROG)]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (tmp_path / out).exists()  # nothing half-written
    assert not list(tmp_path.glob(f".{out}.*"))


def good_docs(n=200):
    return [{"text": f"Line {i}: 一些中文和 some English words for packing."} for i in range(n)]


def test_missing_text_column_lists_the_columns(capsys, tmp_path, data_tokenizer_dir):
    src = write_jsonl(tmp_path / "c.jsonl", [{"content": "hello", "id": 1}])
    code, _, err = run_cli(capsys, tmp_path, data_tokenizer_dir, "--files", src)
    assert_one_line_error(code, err, tmp_path, f"{src}:1", "'text'", "content, id", "--text_column")


def test_missing_parquet_column_lists_the_columns(capsys, tmp_path, data_tokenizer_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["a", "b"], "lang": ["en", "en"]}), tmp_path / "p.parquet")
    code, _, err = run_cli(capsys, tmp_path, data_tokenizer_dir, "--files", tmp_path / "p.parquet")
    assert_one_line_error(code, err, tmp_path, "p.parquet", "columns: body, lang", "--text_column")


def test_corrupt_jsonl_line_names_file_and_line(capsys, tmp_path, data_tokenizer_dir):
    src = tmp_path / "bad.jsonl"
    lines = [json.dumps(d) for d in good_docs()]
    lines.insert(7, '{"text": "broken')  # line 8
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, _, err = run_cli(capsys, tmp_path, data_tokenizer_dir, "--files", src, "--block_size", "16")
    assert_one_line_error(code, err, tmp_path, f"{src}:8", "not valid JSON", "--skip_bad_lines")

    # --skip_bad_lines: skipped, counted, reported
    code, out, _ = run_cli(
        capsys, tmp_path, data_tokenizer_dir, "--files", src, "--block_size", "16", "--skip_bad_lines"
    )
    assert code == 0
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["skipped_lines"] == 1 and manifest["sources"][0]["docs"] == 200
    assert "skipped" in out


@pytest.mark.parametrize("value, kind", [(None, "null"), (7, "int")])
def test_a_text_that_is_not_a_string_is_named_and_can_be_skipped(capsys, tmp_path, data_tokenizer_dir, value, kind):
    """A null text was dropped without being counted (`skipped 0`) while a number stopped prepare: both are bad
    lines now, named, and counted when skipped."""
    records = good_docs()
    records[10] = {"text": value}  # line 11
    src = write_jsonl(tmp_path / "mixed.jsonl", records)
    code, _, err = run_cli(capsys, tmp_path, data_tokenizer_dir, "--files", src, "--block_size", "16")
    assert_one_line_error(code, err, tmp_path, f"{src}:11: field 'text' is {kind}, not a string", "--skip_bad_lines")
    flags = ["--files", src, "--block_size", "16", "--skip_bad_lines"]
    code, out, _ = run_cli(capsys, tmp_path, data_tokenizer_dir, *flags)
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert code == 0 and manifest["skipped_lines"] == 1 and manifest["sources"][0]["docs"] == 199


def test_bad_utf8_names_the_skip_flag(capsys, tmp_path, data_tokenizer_dir):
    src = tmp_path / "latin1.jsonl"
    src.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    code, _, err = run_cli(capsys, tmp_path, data_tokenizer_dir, "--files", src)
    assert_one_line_error(code, err, tmp_path, f"{src}:2", "UTF-8", "--skip_bad_lines")


def test_an_escaped_lone_surrogate_is_a_bad_line_not_a_bad_file(capsys, tmp_path, data_tokenizer_dir):
    """`"\\ud800"` is valid JSON but no UTF-8 text: the size probe refused the whole file, naming no line, and
    --skip_bad_lines did not help. Now it is a bad line like a bad byte: named, or skipped and counted."""
    lines = [json.dumps(d) for d in good_docs()]
    lines[6] = '{"text": "abc \\ud800 def"}'  # line 7
    src = tmp_path / "surrogate.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, _, err = run_cli(capsys, tmp_path, data_tokenizer_dir, "--files", src, "--block_size", "16")
    assert_one_line_error(code, err, tmp_path, f"{src}:7: not valid UTF-8", "lone surrogate", "--skip_bad_lines")
    flags = ["--files", src, "--block_size", "16", "--skip_bad_lines"]
    code, _, _ = run_cli(capsys, tmp_path, data_tokenizer_dir, *flags)
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert code == 0 and manifest["skipped_lines"] == 1 and manifest["sources"][0]["docs"] == 199


def test_fewer_tokens_than_one_block(capsys, tmp_path, data_tokenizer_dir):
    src = write_jsonl(tmp_path / "tiny.jsonl", [{"text": "too short"}])
    code, _, err = run_cli(capsys, tmp_path, data_tokenizer_dir, "--files", src, "--block_size", "4096")
    assert_one_line_error(code, err, tmp_path, "fewer than one block", "--block_size 4096")


def test_an_empty_validation_source_is_refused(capsys, tmp_path, data_tokenizer_dir):
    """It would drop its language from validation without a word (an empty training source is refused too)."""
    src = write_jsonl(tmp_path / "train.jsonl", good_docs())
    val = write_jsonl(tmp_path / "zh_val.jsonl", good_docs(20))
    empty = tmp_path / "en_val.jsonl"
    empty.write_text("\n", encoding="utf-8")
    flags = ["--files", src, "--block_size", "16", "--validation_files", f"zh={val}", f"en={empty}"]
    code, _, err = run_cli(capsys, tmp_path, data_tokenizer_dir, *flags)
    assert_one_line_error(code, err, tmp_path, f"--validation_files en={empty}: no document with text")
    # a few tokens, fewer than one block, drop the language out of validation the same way
    write_jsonl(empty, [{"text": "hello there"}])
    code, _, err = run_cli(capsys, tmp_path, data_tokenizer_dir, *flags)
    assert_one_line_error(
        code, err, tmp_path, f"--validation_files en={empty}: ", "fewer than one block of --block_size 16"
    )


def test_tokenizer_mismatch_with_existing_cache(capsys, tmp_path, data_tokenizer_dir, data_other_tokenizer_dir):
    src = write_jsonl(tmp_path / "docs.jsonl", good_docs())
    code, _, _ = run_cli(capsys, tmp_path, data_tokenizer_dir, "--files", src, "--block_size", "16")
    assert code == 0
    before = (tmp_path / "out" / MANIFEST).read_text()

    code, _, err = run_cli(capsys, tmp_path, data_other_tokenizer_dir, "--files", src, "--block_size", "16")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--output_dir" in err and "another tokenizer" in err and "vocab 2,000" in err and "--overwrite" in err
    assert (tmp_path / "out" / MANIFEST).read_text() == before  # the existing cache is untouched

    # the training side: loading the blocks with another tokenizer, or into a model with a smaller vocabulary
    from transformers import AutoTokenizer

    with pytest.raises(UsageError, match="prepared with tokenizer .* not this one"):
        PreparedData.load(tmp_path / "out", AutoTokenizer.from_pretrained(str(data_other_tokenizer_dir)))
    data = PreparedData.load(tmp_path / "out", AutoTokenizer.from_pretrained(str(data_tokenizer_dir)))
    with pytest.raises(UsageError, match="vocab_size to at least 2,000"):
        data.check_vocab_size(1000)
    data.check_vocab_size(2048)


def test_files_and_flags_checked_before_reading(capsys, tmp_path, data_tokenizer_dir):
    code, _, err = run_cli(capsys, tmp_path, data_tokenizer_dir, "--files", tmp_path / "nothing*.jsonl")
    assert_one_line_error(code, err, tmp_path, "--files", "no file matches")
    code, _, err = run_cli(capsys, tmp_path, tmp_path / "no_tokenizer", "--files", tmp_path / "x.jsonl")
    assert_one_line_error(code, err, tmp_path, "--files")  # files are checked first
    src = write_jsonl(tmp_path / "docs.jsonl", good_docs())
    code, _, err = run_cli(capsys, tmp_path, tmp_path / "no_tokenizer", "--files", src)
    assert_one_line_error(code, err, tmp_path, "--tokenizer_name", "no_tokenizer")
    code, _, err = run_cli(capsys, tmp_path, data_tokenizer_dir, "--files", f"a={src}:1", f"b={src}")
    assert_one_line_error(code, err, tmp_path, "WEIGHT", "b")
    code, _, err = run_cli(capsys, tmp_path, data_tokenizer_dir, "--files", src, "--block_size", "1")
    assert_one_line_error(code, err, tmp_path, "--block_size")


def test_a_weight_too_small_to_give_a_token_is_refused(capsys, tmp_path, data_tokenizer_dir):
    """It was read, then left out of training with `0` taken and exit 0."""
    zh = write_jsonl(tmp_path / "zh.jsonl", good_docs())
    en = write_jsonl(tmp_path / "en.jsonl", good_docs(50))
    code, _, err = run_cli(capsys, tmp_path, data_tokenizer_dir, "--files", f"zh={zh}:1", f"en={en}:1e-9")
    assert_one_line_error(code, err, tmp_path, "--files en: weight 1e-09 gives it none of the", "raise its weight")


def test_output_dir_that_is_not_a_cache_is_not_replaced_even_with_overwrite(capsys, tmp_path, data_tokenizer_dir):
    """--overwrite deleted any folder (a training run's too), and the error recommended it for one."""
    run = tmp_path / "out"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run_args.json").write_text("{}")
    src = write_jsonl(tmp_path / "docs.jsonl", good_docs())
    for overwrite in ([], ["--overwrite"]):
        code, _, err = run_cli(capsys, tmp_path, data_tokenizer_dir, "--files", src, "--block_size", "16", *overwrite)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"--output_dir {run} exists and holds no prepared data; choose another --output_dir" in err
        assert "pass --overwrite" not in err
        assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "run_args.json"]
    # an empty folder, or earlier prepared data, is still this tool's to fill or replace
    (run / "checkpoints").rmdir(), (run / "run_args.json").unlink()
    assert run_cli(capsys, tmp_path, data_tokenizer_dir, "--files", src, "--block_size", "16")[0] == 0
    assert run_cli(capsys, tmp_path, data_tokenizer_dir, "--files", src, "--block_size", "8", "--overwrite")[0] == 0
    assert json.loads((run / MANIFEST).read_text())["block_size"] == 8


@pytest.mark.parametrize("inside", ["files", "validation_files", "tokenizer"])
def test_an_output_dir_that_holds_an_input_is_refused_even_with_overwrite(capsys, tmp_path, data_tokenizer_dir, inside):
    """Replacing the folder whole deleted the corpus (or the tokenizer the new manifest names) and exited 0."""
    import shutil

    proj = tmp_path / "proj"
    for folder in (proj / "corpus", tmp_path / "corpus"):
        folder.mkdir(parents=True)
    src = write_jsonl((proj if inside == "files" else tmp_path) / "corpus" / "docs.jsonl", good_docs())
    val = write_jsonl((proj if inside == "validation_files" else tmp_path) / "corpus" / "val.jsonl", good_docs(20))
    tokenizer = proj / "tokenizer" if inside == "tokenizer" else data_tokenizer_dir
    if inside == "tokenizer":
        shutil.copytree(data_tokenizer_dir, tokenizer)
    before = sorted(p.relative_to(proj) for p in proj.rglob("*"))
    flags = ["--files", src, "--validation_files", f"zh={val}", "--block_size", "16", "--overwrite"]
    code, _, err = run_cli(capsys, tmp_path, tokenizer, *flags, out="proj")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    held = {"files": src, "validation_files": val, "tokenizer": tokenizer}[inside]
    assert f"--output_dir {proj} is or holds" in err and str(held) in err and "choose another --output_dir" in err
    assert sorted(p.relative_to(proj) for p in proj.rglob("*")) == before  # nothing deleted

    # without --overwrite, a folder that already holds prepared data was replaced as well
    if inside == "files":
        shutil.rmtree(proj)
        assert run_cli(capsys, tmp_path, data_tokenizer_dir, "--files", val, "--block_size", "16", out="proj")[0] == 0
        (proj / "corpus").mkdir()
        write_jsonl(proj / "corpus" / "docs.jsonl", good_docs())
        code, _, err = run_cli(capsys, tmp_path, data_tokenizer_dir, "--files", src, "--block_size", "16", out="proj")
        assert code == 2 and "is or holds" in err and src.is_file()


def test_a_failure_keeps_the_previous_cache(capsys, tmp_path, data_tokenizer_dir, monkeypatch):
    src = write_jsonl(tmp_path / "docs.jsonl", good_docs())
    assert run_cli(capsys, tmp_path, data_tokenizer_dir, "--files", src, "--block_size", "16")[0] == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(prepare_module, "write_packed", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        run_cli(capsys, tmp_path, data_tokenizer_dir, "--files", src, "--block_size", "32")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert not list(tmp_path.glob(".out.*"))


def test_train_clm_names_its_own_flags(tmp_path, data_tokenizer_dir):
    """train_clm.py prepares through the same code under its own flag names: every message names a flag it takes."""
    from types import SimpleNamespace

    from shuangyu.training.arguments import DataArguments, parse_args
    from shuangyu.training.training_data import prepare_blocks_for

    src = tmp_path / "bad.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in good_docs()) + '{"text": "broken\n', encoding="utf-8")
    main = SimpleNamespace(is_local_main_process=False)

    def prepare(**data):
        return prepare_blocks_for(DataArguments(block_size=16, **data), str(tmp_path / "data"), str(data_tokenizer_dir),
                                  0, main)  # fmt: skip

    with pytest.raises(UsageError, match=f"{src}:201: not valid JSON .*, or pass --skip_bad_lines$"):
        prepare(train_files=[str(src)])
    assert prepare(train_files=[str(src)], skip_bad_lines=True).manifest["skipped_lines"] == 1
    with pytest.raises(UsageError, match=r"^--train_files '.*nothing\*.jsonl': no file matches"):
        prepare(train_files=[str(tmp_path / "nothing*.jsonl")])
    with pytest.raises(UsageError, match=r"^--preprocessing_num_workers -1 must be at least 1"):
        prepare(train_files=[str(src)], preprocessing_num_workers=-1)
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "notes.txt").write_text("mine")
    (tmp_path / "data" / "manifest.json").unlink(missing_ok=True)
    with pytest.raises(
        UsageError, match=r"--data_dir .*data exists and holds no prepared data; choose another --data_dir$"
    ):
        prepare_blocks_for(DataArguments(train_files=[str(src)], skip_bad_lines=True, block_size=16), str(tmp_path / "data"),
                           str(data_tokenizer_dir), 0, main)  # fmt: skip
    # without --data_dir the folder is the run's OUTPUT_DIR/data: the user gave --output_dir (a user's files there
    # are not replaced even so)
    with pytest.raises(
        UsageError, match=r"^--output_dir .*data exists and holds no prepared data; choose another --output_dir$"
    ):
        prepare_blocks_for(DataArguments(train_files=[str(src)], skip_bad_lines=True, block_size=16), str(tmp_path / "data"),
                           str(data_tokenizer_dir), 0, main, own=True)  # fmt: skip
    assert (tmp_path / "data" / "notes.txt").read_text() == "mine"
    # train_clm.py takes prepare's --validation_fraction (it prepares the data itself)
    good = write_jsonl(tmp_path / "good.jsonl", good_docs())
    data_args = DataArguments(block_size=16, train_files=[str(good)], validation_fraction=0.2)
    prepared = prepare_blocks_for(data_args, str(tmp_path / "data2"), str(data_tokenizer_dir), 0, main)
    share = prepared.manifest["sources"][0]["validation_docs"]
    assert 20 < share < 60
    run = ["--train_files", str(good), "--tokenizer_name", str(data_tokenizer_dir), "--max_steps", "1"]
    assert parse_args([*run, "--validation_fraction", "0.2"]).data.validation_fraction == 0.2
    for other, said in (("--streaming", "pass --validation_docs N"), ("--sft", "--validation_files only")):
        with pytest.raises(UsageError, match=f"--validation_fraction.* {said}"):
            parse_args([*run, "--validation_fraction", "0.2", other])
    with pytest.raises(UsageError, match="--skip_bad_lines with --streaming"):
        parse_args(["--streaming", "--skip_bad_lines", "--train_files", str(src), "--tokenizer_name",
                    str(data_tokenizer_dir), "--max_steps", "1", "--output_dir", str(tmp_path / "run")])  # fmt: skip


def test_a_full_disk_is_one_line_and_leaves_nothing(capsys, tmp_path, data_tokenizer_dir, monkeypatch):
    import errno

    src = write_jsonl(tmp_path / "docs.jsonl", good_docs())

    def full(*args, **kwargs):  # as datasets raises it: its own error, caused by the OSError
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as err:
            raise RuntimeError("An error occurred while generating the dataset") from err

    monkeypatch.setattr(prepare_module, "write_packed", full)
    code, _, err = run_cli(capsys, tmp_path, data_tokenizer_dir, "--files", src, "--block_size", "16")
    assert_one_line_error(code, err, tmp_path, "no space left on the device while writing", "another --output_dir")


@pytest.mark.parametrize("command", ["prepare", "train_bpe"])
def test_ctrl_c_is_one_line_and_exit_130(command, capsys, tmp_path, monkeypatch):
    """Ctrl-C while reading and tokenising: the folder is written whole or not at all (atomic_folder), so the
    command says so in one line and exits 130 as an interrupted command does, without a traceback."""
    import shuangyu.tokenizer.train_bpe as train_bpe_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    module = prepare_module if command == "prepare" else train_bpe_module
    monkeypatch.setattr(module, "prepare" if command == "prepare" else "run", interrupted)
    out = tmp_path / "out"
    flags = ["--output_dir", str(out), "--files", str(write_jsonl(tmp_path / "a.jsonl", good_docs(5)))]
    if command == "prepare":
        flags += ["--tokenizer_name", str(tmp_path)]
    assert module.main(flags) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{module.PROG}: interrupted; nothing was written to {out}"], err  # not "left as it was": none was
    assert not out.exists()
    out.mkdir()  # an earlier output: kept as it is
    assert module.main(flags) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{module.PROG}: interrupted; {out} was left as it was"], err


@pytest.mark.parametrize(
    ("name", "content", "column"),
    [
        ("docs.jsonl", '{"text": "ok"}\n{"text": "a\tb"}\n', 12),  # a raw tab: json's reason ends "... at"
        ("docs.json", '[{"text": "ok"},\n {"text": "a\tb"}]', 13),
        ("chats.jsonl", '{"messages": []}\n{"messages": "a\tb"}\n', 16),
        ("chats.json", '[{"messages": []},\n {"messages": "a\tb"}]', 17),
    ],
)
def test_a_line_that_is_not_json_says_where_on_the_line(tmp_path, name, content, column):
    """The reason was json's message alone, cut mid-sentence ("Invalid control character at"): it ends with the column."""
    from shuangyu.text.conversations import iter_file_records
    from shuangyu.text.readers import DEFAULT_OPTIONS, ReadStats, iter_file_documents

    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    read = (
        iter_file_records(path) if name.startswith("chats") else iter_file_documents(path, DEFAULT_OPTIONS, ReadStats())
    )
    with pytest.raises(UsageError) as caught:
        list(read)
    message = str(caught.value)
    assert message.startswith(f"{path}:2: not valid JSON (Invalid control character at column {column})"), message


@pytest.mark.parametrize("name", ["docs.jsonl", "chats.jsonl"])
def test_a_string_left_open_is_called_unterminated(tmp_path, name):
    """json read the line's own newline as a control character inside the string left open."""
    from shuangyu.text.conversations import iter_file_records
    from shuangyu.text.readers import DEFAULT_OPTIONS, ReadStats, iter_file_documents

    path = tmp_path / name
    path.write_text('{"text": "fine"}\n{"text": "missing quote}\n', encoding="utf-8")
    read = (
        iter_file_records(path) if name.startswith("chats") else iter_file_documents(path, DEFAULT_OPTIONS, ReadStats())
    )
    with pytest.raises(UsageError, match=r":2: not valid JSON \(Unterminated string starting at column 10\)"):
        list(read)


def test_a_process_on_another_machine_without_the_prepared_folder_says_it_must_be_shared(tmp_path, data_tokenizer_dir):
    """Only the global main process prepares OUTPUT_DIR/data; a process on a machine whose disk does not hold it
    said "not a prepared data folder ... run prepare first". Simulated: a process that is not the main one."""
    from types import SimpleNamespace

    from shuangyu.training.arguments import DataArguments
    from shuangyu.training.training_data import open_training_data

    src = tmp_path / "a.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in good_docs()), encoding="utf-8")
    other = SimpleNamespace(is_main_process=False, process_index=1, num_processes=1)
    out = tmp_path / "out"
    with pytest.raises(UsageError) as err:
        open_training_data(DataArguments(block_size=16, train_files=[str(src)]), str(data_tokenizer_dir), None, 0,
                           str(out), other)  # fmt: skip
    assert str(err.value) == (
        f"process 1 does not find {out / 'data'}, which the main process prepared or found: on several machines "
        "--output_dir (or --data_dir) must be on a disk every machine sees"
    )
    assert not out.exists()


def test_a_process_on_another_machine_looks_again_for_the_prepared_folder(tmp_path, data_tokenizer_dir, monkeypatch):
    """NFS may answer "no such file" from its cache for up to a minute after another machine wrote the folder: a
    process that is not the main one failed at its first look. It looks again (each look a second, here none) where
    the main process sees the folder, for up to SHARED_FOLDER_WAIT_S; the main process never waits."""
    from types import SimpleNamespace

    import shuangyu.training.training_data as training_data
    from shuangyu.training.arguments import DataArguments
    from shuangyu.training.training_data import open_training_data

    src = tmp_path / "a.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in good_docs()), encoding="utf-8")
    out, args = tmp_path / "out", DataArguments(block_size=16, train_files=[str(src)])
    main = SimpleNamespace(is_main_process=True, is_local_main_process=False, process_index=0, num_processes=1)
    other = SimpleNamespace(is_main_process=False, process_index=1, num_processes=1)
    open_training_data(args, str(data_tokenizer_dir), None, 0, str(out), main)
    manifest, hidden = out / "data" / MANIFEST, tmp_path / "hidden"
    manifest.rename(hidden)  # what the other machine's cache answers at first

    looks, real_sleep = [], time.sleep

    def look_again(seconds):
        looks.append(seconds)
        if len(looks) == 2:
            hidden.rename(manifest)

    monkeypatch.setattr(training_data.time, "sleep", look_again)
    monkeypatch.setattr(training_data, "share_from_main", lambda accelerator, value: True)  # the main one sees it
    data = open_training_data(DataArguments(block_size=16), str(data_tokenizer_dir), None, 0, str(out), other)
    assert looks == [1.0, 1.0] and data.block_size == 16

    # never there: the message after the wait (shortened here), not at once
    manifest.rename(hidden)
    looks.clear()
    monkeypatch.setattr(training_data, "SHARED_FOLDER_WAIT_S", 0.2)
    monkeypatch.setattr(training_data, "SHARED_FOLDER_POLL_S", 0.05)
    monkeypatch.setattr(training_data.time, "sleep", lambda s: looks.append(s) or real_sleep(s))
    with pytest.raises(UsageError, match=r"^process 1 does not find .* must be on a disk every machine sees$"):
        open_training_data(DataArguments(block_size=16), str(data_tokenizer_dir), None, 0, str(out), other)
    assert len(looks) >= 3

    # the main process, or a process whose main one does not see the folder either, fails at once
    looks.clear()
    monkeypatch.setattr(training_data, "share_from_main", lambda accelerator, value: value)
    for process in (main, other):
        with pytest.raises(UsageError):
            open_training_data(DataArguments(block_size=16), str(data_tokenizer_dir), None, 0, str(out), process)
    assert looks == []
