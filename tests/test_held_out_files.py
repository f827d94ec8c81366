"""A validation file that a training glob also matches is refused (it would be trained on); --exclude matches a
file however it is written (as globbed, ./relative, absolute)."""

import json
import os
from types import SimpleNamespace

import pytest

from shuangyu.data.prepare import main as prepare_main
from shuangyu.errors import UsageError
from shuangyu.text.sources import SourceArguments
from shuangyu.tokenizer.train_bpe import main as train_bpe_main


def write_jsonl(path, n=50):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": f"第{i}行 some words {i}"}) + "\n" for i in range(n)), encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """lk/a.jsonl (training) and lk/a_val.jsonl (held out), named relative to the working folder."""
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "lk" / "a.jsonl")
    write_jsonl(tmp_path / "lk" / "a_val.jsonl", 20)
    return tmp_path


def test_prepare_refuses_a_validation_file_that_a_training_glob_matches(corpus, capsys, data_tokenizer_dir):
    """The QA repro: accepted, and the held-out file was packed into train.bin."""
    argv = ["--num_proc", "1", "--tokenizer_name", str(data_tokenizer_dir), "--block_size", "16"]
    held = ["--validation_files", "zh=lk/a_val.jsonl"]
    assert prepare_main([*argv, "--output_dir", "leak", "--files", "zh=lk/*.jsonl", *held]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "lk/a_val.jsonl is in both --files and --validation_files zh" in err and "--exclude" in err
    assert not (corpus / "leak").exists()
    # the same file written another way (absolute, through a link) is the same file
    os.symlink(corpus / "lk", corpus / "link")
    assert prepare_main([*argv, "--output_dir", "leak", "--files", f"zh={corpus}/lk/*.jsonl", *held]) == 2
    assert prepare_main([*argv, "--output_dir", "leak", "--files", "zh=link/*.jsonl", *held]) == 2
    assert "is in both --files" in capsys.readouterr().err and not (corpus / "leak").exists()
    # excluded (as the error says), it is held out only
    excluded = ["--exclude", "./lk/a_val.jsonl"]
    assert prepare_main([*argv, "--output_dir", "ok", "--files", "zh=lk/*.jsonl", *excluded, *held]) == 0
    inputs = json.loads((corpus / "ok" / "manifest.json").read_text())["inputs"]
    assert [f[0] for f in inputs["sources"][0]["files"]] == [os.path.realpath("lk/a.jsonl")]


def test_train_clm_and_the_tokenizer_trainer_refuse_it_too(corpus, capsys, data_tokenizer_dir):
    from transformers import AutoTokenizer

    from shuangyu.data.stream_sources import stream_sources
    from shuangyu.data.streaming import StreamedData
    from shuangyu.training.arguments import DataArguments
    from shuangyu.training.training_data import prepare_blocks_for

    said = "lk/a_val.jsonl is in both --train_files and --validation_files zh"
    data = DataArguments(block_size=16, train_files=["lk/*.jsonl"], validation_files=["zh=lk/a_val.jsonl"])
    main = SimpleNamespace(is_local_main_process=False)
    with pytest.raises(UsageError, match=said):
        prepare_blocks_for(data, str(corpus / "data"), str(data_tokenizer_dir), 0, main)
    assert not (corpus / "data").exists()
    tok = AutoTokenizer.from_pretrained(data_tokenizer_dir)
    with pytest.raises(UsageError, match=said):  # --streaming
        StreamedData(stream_sources(["lk/*.jsonl"], [], []), tok, 16, validation_files=["zh=lk/a_val.jsonl"])

    argv = ["--files", "lk/*.jsonl", "--validation_files", "zh=lk/a_val.jsonl", "--vocab_size", "300"]
    assert train_bpe_main([*argv, "--output_dir", "tok"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lk/a_val.jsonl is in both --files and --validation_files zh" in err
    assert not (corpus / "tok").exists()


def test_exclude_matches_a_file_however_it_is_written(corpus):
    """`--exclude ./lk/a_val.jsonl` or an absolute path excluded nothing: matched only as the glob returned it."""

    def trained(*exclude, files="lk/*.jsonl"):
        _, found = SourceArguments(files=[files], exclude=list(exclude)).resolve_sources()
        return [str(p) for p in found[0]]

    assert trained() == ["lk/a.jsonl", "lk/a_val.jsonl"]
    for exclude in ("./lk/a_val.jsonl", str(corpus / "lk" / "a_val.jsonl"), "lk/../lk/a_val.jsonl", "./lk/*_val*"):
        assert trained(exclude) == ["lk/a.jsonl"], exclude
    assert trained("*_val.jsonl") == ["lk/a.jsonl"]  # the demo's pattern, as before
    assert trained("lk/a_val.jsonl", files=f"{corpus}/lk/*.jsonl") == [f"{corpus}/lk/a.jsonl"]
    # a pattern as written is not tried on the absolute path: '*lk*' still means the files, not their folder
    assert trained("*tmp*") == ["lk/a.jsonl", "lk/a_val.jsonl"]
