"""The tokenizer trainer: real training on slices of the shared corpus, reloading, losslessness, bad input."""

import gzip
import itertools
import json
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Regex, pre_tokenizers
from transformers import AutoTokenizer

from shuangyu.errors import UsageError
from shuangyu.files import parse_size
from shuangyu.text.readers import ReadOptions, ReadStats, iter_file_documents
from shuangyu.text.sampling import plan_mixture, sample_source
from shuangyu.text.sources import parse_dataset_source, parse_file_source, resolve_files
from shuangyu.tokenizer import bpe
from shuangyu.tokenizer.train_bpe import main

REPO = Path(__file__).resolve().parent.parent


def head_lines(path: Path, n: int) -> str:
    with open(path, encoding="utf-8") as fh:
        return "".join(itertools.islice(fh, n))


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, corpus_dir) -> Path:
    """About 0.6 MB of real zh + en text, with held-out files."""
    d = tmp_path_factory.mktemp("corpus")
    (d / "zh.jsonl").write_text(
        head_lines(corpus_dir / "zh/news_xinwenlianbo.jsonl", 150) + head_lines(corpus_dir / "zh/reviews.jsonl", 400),
        encoding="utf-8",
    )
    (d / "en.jsonl").write_text(head_lines(corpus_dir / "en/bbc_news.jsonl", 80), encoding="utf-8")
    (d / "zh_val.jsonl").write_text(head_lines(corpus_dir / "zh/news_xinwenlianbo_val.jsonl", 40), encoding="utf-8")
    (d / "en_val.jsonl").write_text(head_lines(corpus_dir / "en/bbc_news_val.jsonl", 15), encoding="utf-8")
    return d


def train_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--files",
        f"zh={corpus}/zh.jsonl:0.5",
        f"en={corpus}/en.jsonl:0.5",
        "--validation_files",
        f"zh={corpus}/zh_val.jsonl",
        f"en={corpus}/en_val.jsonl",
        "--vocab_size",
        "3000",
        "--output_dir",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(small_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "tok"
    assert main(train_args(small_corpus, out)) == 0
    return out


@pytest.fixture(scope="module")
def tok(trained):
    return AutoTokenizer.from_pretrained(trained)


# --- the trained folder -----------------------------------------------------------------------------


def test_folder_loads_offline_as_fast_tokenizer_with_special_tokens(trained, tok):
    assert tok.is_fast
    assert len(tok) == 3000
    assert tok.eos_token == tok.bos_token == "<|endoftext|>"
    assert tok.pad_token == "<|pad|>"
    ids = tok.convert_tokens_to_ids(list(bpe.SPECIAL_TOKENS))
    assert sorted(ids) == [0, 1, 2, 3]  # special tokens come first, before the byte alphabet
    assert set(bpe.CHAT_TOKENS) <= set(tok.all_special_tokens)


def test_report_json_and_table(trained, small_corpus, tmp_path, capsys):
    report = json.loads((trained / "training_report.json").read_text())
    assert report["vocab_size"] == 3000
    by_name = {s["name"]: s for s in report["sources"]}
    assert set(by_name) == {"zh", "en"}
    # equal weights: the mix is 50/50 in bytes (the smaller source repeated as needed)
    zh, en = by_name["zh"]["bytes"], by_name["en"]["bytes"]
    assert abs(zh - en) / (zh + en) < 0.02
    assert report["peak_memory_mb"] > 0 and report["time_s"]["read_and_train"] > 0
    for lang in ("zh", "en"):
        c = report["validation"][lang]
        assert c["tokens"] > 0 and c["chars_per_token"] == pytest.approx(c["chars"] / c["tokens"], rel=1e-3)
    # Chinese packs more bytes per character than English, and the tokenizer must reach multi-char tokens
    assert report["validation"]["zh"]["chars_per_token"] > 1.0
    assert report["validation"]["en"]["bytes_per_token"] > 2.5

    assert main(train_args(small_corpus, tmp_path / "t2", "--max_bytes", "100KB")) == 0
    printed = capsys.readouterr().out
    for needle in ("source", "held-out", "chars/token", "bytes/token", "peak memory", "vocab size"):
        assert needle in printed


def test_chinese_words_are_single_tokens(tok):
    for word in ("中国", "发展", "我们"):
        assert len(tok.encode(word, add_special_tokens=False)) == 1, word


def _categories(text: str) -> set[str]:
    cats = set()
    for ch in text:
        if "\u4e00" <= ch <= "\u9fff":
            cats.add("han")
        elif ch.isdigit():
            cats.add("digit")
        elif ch.isalpha():
            cats.add("letter")
        elif unicodedata.category(ch)[0] in "PS":
            cats.add("punct")
    return cats


def test_vocabulary_respects_pretokenization_boundaries(tok):
    """No learned token crosses scripts or joins digits; a word (or Han run) may start with one space or
    punctuation mark, and nothing but its letters follows."""
    pieces = [tok.decode([i]) for i in range(len(bpe.SPECIAL_TOKENS), len(tok))]
    pieces = [p for p in pieces if "\ufffd" not in p]  # partial UTF-8 byte sequences
    assert sum("han" in _categories(p) and len(p) > 1 for p in pieces) > 100
    # Chinese marks lead Han runs often enough that some such tokens are learned (，但 。我们 ...)
    assert sum(p[0] in "，。、；：" and _categories(p[1:]) == {"han"} for p in pieces) > 5
    contractions = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"}
    for p in pieces:
        cats = _categories(p)
        if p.lower() in contractions:
            continue
        assert not {"han", "letter"} <= cats, p
        assert sum(ch.isdigit() for ch in p) <= 1, p
        if cats & {"han", "letter"}:
            rest = p[1:]
            assert not _categories(rest) & {"punct", "digit"} and not any(ch.isspace() for ch in rest), p


def test_pretokenizer_pieces():
    pieces = [p for p, _ in bpe.build_tokenizer().pre_tokenizer.pre_tokenize_str("iPhone手机 2023年, it's")]
    # byte-level pieces: Ġ stands for a leading space
    assert pieces[:2] == ["iPhone", bpe.build_tokenizer().pre_tokenizer.pre_tokenize_str("手机")[0][0]]
    assert [p for p in pieces if p.isdigit()] == ["2", "0", "2", "3"]
    assert "'s" in pieces and "Ġit" in pieces and "," in pieces
    # one leading space or mark joins a Han run or a word; a run of marks stays apart, as does a line break
    split = pre_tokenizers.Split(Regex(bpe.PRETOKENIZE_PATTERN), behavior="isolated").pre_tokenize_str
    text = "他说：“你好，世界。” 中文\n英文 f(x) ..."
    expected = ["他说", "：“", "你好", "，世界", "。”", " 中文", "\n", "英文", " f", "(x", ")", " ..."]
    assert [p for p, _ in split(text)] == expected


def test_special_tokens_never_come_from_ordinary_text(tok):
    text = "a <|endoftext|> b <|im_start|>user<|im_end|> <|pad|>"
    ids = tok(text)["input_ids"]
    assert not set(ids) & {tok.eos_token_id, tok.pad_token_id, *tok.convert_tokens_to_ids(list(bpe.CHAT_TOKENS))}
    assert tok.decode(ids) == text
    asked = tok(text, split_special_tokens=False)["input_ids"]  # when asked for, they are special
    assert tok.eos_token_id in asked and tok.pad_token_id in asked


MIXED = st.sampled_from(
    [
        "中文",
        "你好，世界！",
        "人工智能",
        "English",
        " the",
        "  ",
        "\t",
        "\n\n",
        "\r\n",
        "😀",
        "👨‍👩‍👧",
        "「引号」",
        "……",
        "１２３",
        "ｆｕｌｌ",
        "é",
        "e\u0301",
        "<|endoftext|>",
        "2024年",
        "\x00",
        "\x1b[0m",
        "\u200b",
        "ﬁ",
        "Ω",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.lists(st.one_of(MIXED, st.text(max_size=5))).map("".join)))
def test_decode_encode_round_trip_is_lossless(tok, text):
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_same_seed_same_tokenizer_other_seed_other_sample(small_corpus, tmp_path):
    def run(seed, name):
        out = tmp_path / name
        assert main(train_args(small_corpus, out, "--max_bytes", "150KB", "--seed", str(seed))) == 0
        return json.loads((out / "tokenizer.json").read_text())["model"]["vocab"], out

    vocab_a, out_a = run(1, "a")
    vocab_b, _ = run(1, "b")
    vocab_c, out_c = run(2, "c")
    assert vocab_a == vocab_b
    docs = lambda out: [s["docs"] for s in json.loads((out / "training_report.json").read_text())["sources"]]  # noqa: E731
    assert vocab_a != vocab_c or docs(out_a) != docs(out_c)


# --- reading and mixing sources ---------------------------------------------------------------------


DOCS = ["第一篇文档。", "second document", "第三 third", "多行\n文档 with lines"]


@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.gz", "d.json", "d-lines.json", "d.json.gz", "d.parquet"])
def test_every_format_yields_the_same_documents(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"id": list(range(4)), "text": DOCS}), path)
    else:
        records = [{"text": t, "meta": i} for i, t in enumerate(DOCS)]
        body = (
            json.dumps(records, ensure_ascii=False)
            if name in ("d.json", "d.json.gz")
            else "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        ).encode()
        path.write_bytes(gzip.compress(body) if name.endswith(".gz") else body)
    assert list(iter_file_documents(path, ReadOptions(), ReadStats())) == DOCS


def test_text_files_by_line_or_by_file(tmp_path):
    lines = [d.replace("\n", " ") for d in DOCS]
    (tmp_path / "a.txt").write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    (tmp_path / "b.txt.gz").write_bytes(gzip.compress(("\r\n".join(lines)).encode()))
    assert list(iter_file_documents(tmp_path / "a.txt", ReadOptions(), ReadStats())) == lines
    assert list(iter_file_documents(tmp_path / "b.txt.gz", ReadOptions(), ReadStats())) == lines
    whole = list(iter_file_documents(tmp_path / "a.txt", ReadOptions(document_per_file=True), ReadStats()))
    assert whole == ["\n".join(lines) + "\n\n"]


@pytest.mark.parametrize("blank", [b"\n", b"\r\n", b"  \n"])
def test_a_byte_order_mark_then_a_blank_line_is_a_blank_line(tmp_path, blank):
    """`\\ufeff` and a newline was decoded, not seen as blank, and failed as `:1: not valid JSON`."""
    from shuangyu.text.conversations import iter_file_records

    path = tmp_path / "bom_blank.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + blank + '{"text": "你好世界"}\n\n{"text": "hello"}\n'.encode())
    assert list(iter_file_documents(path, ReadOptions(), ReadStats())) == ["你好世界", "hello"]
    assert [where for where, _ in iter_file_records(path)] == [f"{path}:2", f"{path}:4"]  # conversations too
    bom_first = tmp_path / "bom.jsonl"
    bom_first.write_bytes(b'\xef\xbb\xbf{"text": "a"}\n')  # the mark before a record still goes
    assert list(iter_file_documents(bom_first, ReadOptions(), ReadStats())) == ["a"]


def test_source_specs():
    s = parse_file_source("zh=data/zh/*.jsonl,more/*.txt:0.25")
    assert (s.name, s.patterns, s.weight) == ("zh", ("data/zh/*.jsonl", "more/*.txt"), 0.25)
    assert parse_file_source("data/x.jsonl").weight is None
    d = parse_dataset_source("wiki=wikimedia/wikipedia:20231101.zh:2")
    assert (d.name, d.dataset, d.config, d.weight) == ("wiki", "wikimedia/wikipedia", "20231101.zh", 2.0)
    assert parse_dataset_source("HuggingFaceFW/fineweb-edu").config is None
    with pytest.raises(UsageError, match="weight"):
        parse_file_source("a.jsonl:-1")
    assert parse_size("1.5GB", "--max_bytes") == 1_500_000_000 and parse_size("2KiB", "x") == 2048


def test_source_spec_mistakes_say_what_is_wrong(tmp_path, monkeypatch):
    """Each of these said `no file matches (after --exclude)`, or was accepted and read twice."""
    from shuangyu.text.sources import SourceArguments

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "adir"
    folder.mkdir()
    zh = write_jsonl(folder / "zh.jsonl", ["一些文本"] * 3)
    write_jsonl(tmp_path / "c=d.jsonl", ["text"] * 3)

    def resolve(*files, exclude=()):
        return SourceArguments(files=list(files), exclude=list(exclude)).resolve_sources()

    cases = [
        ([str(folder)], (), f"--files '{folder}': a folder, not a file: name its files, e.g. '{folder}/*.jsonl'"),
        (["中文=adir/zh.jsonl:0.5"], (), "no file matches; a source NAME may hold only A-Z a-z 0-9 _ . -"),
        ([f"{folder}/*.jsonl"], ["*zh*"], "every file it matches (1) is left out by --exclude"),
        ([f"zh={zh}:1", f"again={folder}/*.jsonl:1"], (), f"--files: {zh} is in both source zh and source again"),
        (["c=d.jsonl"], (), "--files 'd.jsonl': no file matches"),  # NAME=c: the docs say ./c=d.jsonl
    ]
    for files, exclude, said in cases:
        with pytest.raises(UsageError, match=re.escape(said)):
            resolve(*files, exclude=exclude)
    with pytest.raises(UsageError, match=re.escape("--dataset '中文=org/set': a source NAME may hold only")):
        parse_dataset_source("中文=org/set", "--dataset")
    specs, files = resolve("./c=d.jsonl")
    assert [p.name for p in files[0]] == ["c=d.jsonl"]
    assert resolve("no_folder=adir/zh.jsonl")[0][0].name == "no_folder"  # a valid NAME= is still a name


def _read(plans, seed=0):
    out = []
    for plan in plans:
        stats = ReadStats()
        docs = list(sample_source(plan, ReadOptions(), stats, seed))
        out.append((stats, docs))
    return out


def test_weights_are_honoured_in_bytes_by_sampling_and_upsampling(tmp_path):
    big = write_jsonl(tmp_path / "big.jsonl", [f"大的文档{i} " * 20 for i in range(2000)])
    small = write_jsonl(tmp_path / "small.jsonl", [f"small doc {i} " * 10 for i in range(100)])
    specs = [parse_file_source(f"big={big}:1"), parse_file_source(f"small={small}:1")]
    files = [resolve_files(s) for s in specs]
    small_size = sum(len(d.encode()) for d in iter_file_documents(small, ReadOptions(), ReadStats()))

    big_size = sum(len(d.encode()) for d in iter_file_documents(big, ReadOptions(), ReadStats()))

    # no cap: the whole corpus's size, split 1:1; the big source is sampled down, the small one repeated
    (big_stats, _), (small_stats, small_docs) = _read(plan_mixture(specs, files, None))
    assert small_stats.passes >= 5 and len(set(small_docs)) == 100
    half = (big_size + small_size) / 2
    for s in (big_stats, small_stats):
        assert 0.95 * half <= s.bytes <= half + 500

    # a cap below the corpus: each source gets half of the cap
    cap = 6 * small_size
    (big_stats, _), (small_stats, _) = _read(plan_mixture(specs, files, cap))
    assert small_stats.passes == 3
    for s in (big_stats, small_stats):
        assert cap / 2 * 0.95 <= s.bytes <= cap / 2 + 500


def test_max_bytes_all_reads_every_document_once(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [f"文本 text {i}" for i in range(40)])
    out = tmp_path / "out"
    assert main(["--files", str(good), "--vocab_size", "300", "--max_bytes", "all", "--output_dir", str(out)]) == 0
    src = json.loads((out / "training_report.json").read_text())["sources"][0]
    assert (src["docs"], src["passes"]) == (40, 1)


def test_without_weights_sources_keep_their_natural_share(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [f"文档{i}" * 30 for i in range(300)])
    b = write_jsonl(tmp_path / "b.jsonl", [f"doc {i} " * 10 for i in range(100)])
    specs = [parse_file_source(str(a)), parse_file_source(str(b))]
    files = [resolve_files(s) for s in specs]
    (sa, da), (sb, db) = _read(plan_mixture(specs, files, None))
    assert (len(da), len(db), sa.passes, sb.passes) == (300, 100, 1, 1)
    total = sa.bytes + sb.bytes
    (sa2, _), (sb2, _) = _read(plan_mixture(specs, files, total // 4), seed=3)
    assert sa2.bytes + sb2.bytes <= total // 4 + 300 + 70  # each source may end one document past its share
    assert sa2.bytes / (sa2.bytes + sb2.bytes) == pytest.approx(sa.bytes / total, abs=0.05)


def test_a_lone_weighted_source_is_read_whole_whatever_its_size_estimate(tmp_path):
    """A weight on the only source weighs it against nothing. It set the source's budget to its size estimated from
    its first megabyte: a file whose first rows carry long fields beside short texts was cut short, silently."""
    import json as _json

    path = tmp_path / "skew.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(2000):
            meta = "x" * 2000 if i < 400 else ""  # the first rows' bytes are mostly a field that is not the text
            f.write(_json.dumps({"text": f"document {i} " + "words and more words " * 10, "meta": meta}) + "\n")
    whole = sum(1 for _ in iter_file_documents(path, ReadOptions(), ReadStats()))
    for spec in (parse_file_source(str(path)), parse_file_source(f"en={path}:1")):
        [(stats, read)] = _read(plan_mixture([spec], [resolve_files(spec)], None))
        assert (stats.passes, len(read)) == (1, whole), spec.weight


def test_hub_dataset_code_path_on_a_local_dataset_folder(tmp_path, corpus_dir):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text(head_lines(corpus_dir / "en/bbc_news.jsonl", 60), encoding="utf-8")
    out = tmp_path / "tok"
    assert (
        main(["--dataset", f"bbc={folder}", "--vocab_size", "600", "--max_bytes", "50KB", "--output_dir", str(out)])
        == 0
    )
    report = json.loads((out / "training_report.json").read_text())
    assert report["sources"][0]["dataset"] == str(folder)
    assert 50_000 <= report["sources"][0]["bytes"] < 50_000 + 20_000
    assert AutoTokenizer.from_pretrained(out).is_fast


def test_a_source_without_weight_is_read_once_however_far_below_the_cap(tmp_path, corpus_dir):
    """Its natural share is one pass: a small dataset (size unknown) or file is not read again up to the cap."""
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text(head_lines(corpus_dir / "en/bbc_news.jsonl", 20), encoding="utf-8")
    small = write_jsonl(tmp_path / "small.jsonl", [f"small doc {i} " * 10 for i in range(30)])
    for spec, docs in ((parse_dataset_source(f"en={folder}", "--dataset"), 20), (parse_file_source(str(small)), 30)):
        files = [] if spec.is_dataset else resolve_files(spec)
        [(stats, read)] = _read(plan_mixture([spec], [files], 20_000_000))
        assert (stats.passes, len(read), len(set(read))) == (1, docs, docs), spec.name
    # weights still repeat a small source to its share of a mix
    specs = [parse_dataset_source(f"en={folder}:1", "--dataset"), parse_file_source(f"s={small}:1")]
    (ds_stats, _), (small_stats, _) = _read(plan_mixture(specs, [[], resolve_files(specs[1])], 200_000))
    assert ds_stats.passes > 1 and small_stats.passes > 1


@pytest.mark.parametrize("kind", ["dataset", "dataset_dict"])
def test_a_save_to_disk_folder_is_refused_in_one_line_saying_what_to_do(tmp_path, capsys, kind):
    """datasets' own error advised load_from_disk, which no train_bpe flag can do."""
    import datasets

    ds = datasets.Dataset.from_dict({"text": ["hello world"] * 20})
    folder = tmp_path / "saved"
    (datasets.DatasetDict({"train": ds}) if kind == "dataset_dict" else ds).save_to_disk(str(folder))
    capsys.readouterr()  # datasets' progress bars
    out = tmp_path / "tok"
    argv = ["--dataset", str(folder), "--vocab_size", "600", "--output_dir", str(out)]
    assert_clean_failure(capsys, argv, out, f"--dataset {folder}: a datasets save_to_disk folder", "ds.to_json(")


# --- bad input: one line, exit status 2, nothing left behind ----------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "tokenizer/train_bpe.py"), *args], capture_output=True, text=True, timeout=120
    )


def assert_clean_failure(capsys, argv, out: Path, *needles: str):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train_bpe.py: error: "), err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_bad_utf8_names_file_and_line_and_can_be_skipped(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "fine"}\n{"text": "also fine"}\n{"text": "broken \xff\xfe"}\n{"text": "after"}\n')
    out = tmp_path / "out"
    assert_clean_failure(
        capsys,
        ["--files", str(bad), "--vocab_size", "300", "--output_dir", str(out)],
        out,
        f"{bad}:3",
        "UTF-8",
        "--on_decode_error skip",
    )
    argv = ["--files", str(bad), "--vocab_size", "300", "--output_dir", str(out), "--on_decode_error", "skip"]
    assert main(argv) == 0
    src = json.loads((out / "training_report.json").read_text())["sources"][0]
    assert (src["docs"], src["skipped_lines"]) == (3, 1)


def test_an_escaped_lone_surrogate_is_a_bad_line_for_the_tokenizer_too(tmp_path, capsys):
    """Valid JSON whose text escapes a lone surrogate has no UTF-8: it stopped the whole file (no line, not
    skippable) in the size probe; now it is named by line, or skipped and counted like a bad byte."""
    bad = tmp_path / "s.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "abc \\ud800 def"}\n{"text": "after"}\n', encoding="utf-8")
    out = tmp_path / "out"
    argv = ["--files", str(bad), "--vocab_size", "300", "--output_dir", str(out)]
    assert_clean_failure(capsys, argv, out, f"{bad}:2: not valid UTF-8", "\\ud800", "--on_decode_error skip")
    assert main([*argv, "--on_decode_error", "skip"]) == 0
    src = json.loads((out / "training_report.json").read_text())["sources"][0]
    assert (src["docs"], src["skipped_lines"]) == (2, 1)


def test_a_null_text_is_a_bad_line_for_the_tokenizer_too(tmp_path, capsys):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"text": "文本 text"}] * 20 + [{"text": None}]), encoding="utf-8")
    argv = ["--files", str(path), "--vocab_size", "300", "--output_dir", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "d.json: record 20: field 'text' is null, not a string" in capsys.readouterr().err
    assert main([*argv, "--on_decode_error", "skip"]) == 0
    report = json.loads((tmp_path / "out" / "training_report.json").read_text())
    assert report["sources"][0]["skipped_lines"] == 1


def test_bad_json_line_fails_midway_without_partial_output(tmp_path, capsys):
    bad = write_jsonl(tmp_path / "a.jsonl", ["好的文本"] * 50)
    with open(bad, "a") as fh:
        fh.write('{"text": "unterminated\n')
    out = tmp_path / "out"
    assert_clean_failure(capsys, ["--files", str(bad), "--output_dir", str(out)], out, f"{bad}:51", "not valid JSON")


def test_missing_text_field_lists_fields(tmp_path, capsys):
    bad = tmp_path / "a.jsonl"
    bad.write_text('{"content": "x", "id": 1}\n')
    out = tmp_path / "out"
    assert_clean_failure(
        capsys,
        ["--files", str(bad), "--output_dir", str(out)],
        out,
        f"{bad}:1",
        "'text'",
        "content, id",
        "--text_column",
    )


@pytest.mark.parametrize(
    "case",
    [
        "no_match",
        "empty",
        "vocab",
        "vocab_huge",
        "weights_partial",
        "weights_negative",
        "file_type",
        "max_bytes",
        "val_syntax",
    ],
)
def test_bad_input(tmp_path, capsys, case):
    good = write_jsonl(tmp_path / "good.jsonl", ["some text 一些文本"] * 20)
    empty = tmp_path / "empty.jsonl"
    empty.write_text('\n{"text": ""}\n\n')
    (tmp_path / "x.csv").write_text("text\nhello\n")
    out = tmp_path / "out"
    base = ["--output_dir", str(out)]
    argv, needles = {
        "no_match": (["--files", f"{tmp_path}/nothing/*.jsonl"], ["--files", "no file matches"]),
        "empty": (["--files", str(empty)], ["no text"]),
        "vocab": (["--files", str(good), "--vocab_size", "100"], ["--vocab_size 100", "260"]),
        "vocab_huge": (["--files", str(good), "--vocab_size", "99999999999"], ["--vocab_size 99999999999", "above"]),
        "weights_partial": (["--files", f"{good}:0.5", str(empty)], ["WEIGHT", "every source or to none"]),
        "weights_negative": (["--files", f"{good}:-2"], ["--files", "weight"]),
        "file_type": (["--files", str(tmp_path / "x.csv")], ["x.csv", "unsupported file type"]),
        "max_bytes": (["--files", str(good), "--max_bytes", "lots"], ["--max_bytes"]),
        "val_syntax": (["--files", str(good), "--validation_files", str(good)], ["--validation_files", "LANG=GLOB"]),
    }[case]
    assert_clean_failure(capsys, argv + base, out, *needles)


def test_existing_output_needs_overwrite_and_is_replaced_whole(tmp_path, capsys):
    good = write_jsonl(tmp_path / "good.jsonl", ["some text 一些文本"] * 20)
    out = tmp_path / "out"
    argv = ["--files", str(good), "--vocab_size", "300", "--output_dir", str(out)]
    assert main(argv) == 0
    (out / "tokenizer.json").write_text("{}")  # an earlier tokenizer: replaced with --overwrite only
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--output_dir" in err and "--overwrite" in err
    assert (out / "tokenizer.json").read_text() == "{}"
    assert main([*argv, "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "chat_template.jinja",  # the ChatML template every new tokenizer carries
        "tokenizer.json",
        "tokenizer_config.json",
        "training_report.json",
    ]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_overwrite_replaces_only_a_tokenizer_folder(tmp_path, capsys):
    """--overwrite deleted any folder given, a training run's (run_args.json, checkpoints/, final/) too."""
    good = write_jsonl(tmp_path / "good.jsonl", ["some text 一些文本"] * 20)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "final").mkdir()
    (run / "run_args.json").write_text("{}")
    argv = ["--files", str(good), "--vocab_size", "300", "--output_dir", str(run)]
    for overwrite in ([], ["--overwrite"]):
        assert main([*argv, *overwrite]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"--output_dir {run} holds other files than a tokenizer" in err
        assert "checkpoints, final, run_args.json" in err and "choose another --output_dir" in err
        assert "pass --overwrite" not in err
        assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "final", "run_args.json"]
    (run / "checkpoints").rmdir(), (run / "final").rmdir(), (run / "run_args.json").unlink()
    assert main([*argv, "--overwrite"]) == 0  # an empty folder is filled


@pytest.mark.parametrize("inside", ["files", "validation_files"])
def test_an_output_dir_that_holds_the_text_is_refused_even_with_overwrite(tmp_path, capsys, inside):
    """Replacing the folder whole deleted the corpus it was trained from."""
    proj = tmp_path / "proj"
    proj.mkdir()
    good = write_jsonl((proj if inside == "files" else tmp_path) / "zh.jsonl", ["some text 一些文本"] * 20)
    val = write_jsonl((proj if inside == "validation_files" else tmp_path) / "zh_val.jsonl", ["文本 text"] * 5)
    argv = ["--files", str(good), "--validation_files", f"zh={val}", "--vocab_size", "300"]
    assert main([*argv, "--output_dir", str(proj), "--overwrite"]) == 2
    err = capsys.readouterr().err
    held = good if inside == "files" else val
    assert len(err.strip().splitlines()) == 1 and f"--output_dir {proj} is or holds" in err and str(held) in err
    assert sorted(p.name for p in proj.iterdir()) == [held.name]


def test_a_full_disk_while_saving_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    """tokenizers reports a full disk as a plain Exception with the OS's text: it was a traceback, exit 1."""
    from transformers import PreTrainedTokenizerFast

    def full(self, folder, *args, **kwargs):
        (Path(folder) / "tokenizer.json").write_text('{"half": ')  # what a write cut short leaves
        raise Exception("No space left on device (os error 28)")  # noqa: TRY002 (as tokenizers raises it)

    good = write_jsonl(tmp_path / "good.jsonl", ["some text 一些文本"] * 20)
    out = tmp_path / "out"
    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", full)
    assert main(["--files", str(good), "--vocab_size", "300", "--output_dir", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"no space left on the device while writing {out}; nothing was written" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.jsonl"]  # no folder, no temporary one


def test_cli_exit_status_and_single_line_error(tmp_path):
    proc = run_cli("--files", f"{tmp_path}/*.jsonl", "--output_dir", str(tmp_path / "out"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no file matches" in lines[0]
    good = write_jsonl(tmp_path / "good.jsonl", ["text 文本 " * 5] * 30)
    proc = run_cli("--files", str(good), "--vocab_size", "400", "--output_dir", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "saved to" in proc.stdout


def test_model_tests_tokenizer_splits_as_ours():
    """tests/test_model_support.py builds its tokenizer without importing ours (the model tests stand alone):
    its copy of the pattern must stay ours."""
    from test_model_support import PRETOKENIZE_PATTERN

    assert PRETOKENIZE_PATTERN == bpe.PRETOKENIZE_PATTERN


# The counting processes are gone (Ctrl-C reached them too) while a batch larger than a pipe holds waits in a queue
# for one of them: its feeder thread is stuck writing it. Then the parent's KeyboardInterrupt arrives.
CTRL_C_WHILE_COUNTING = """
import multiprocessing, sys
from shuangyu.tokenizer import bpe
from shuangyu.tokenizer.train_bpe import main

counting = bpe.count_in_workers

def interrupted_counting(pattern, max_pretokens, batches, workers):
    def batches_then_ctrl_c():
        for worker in multiprocessing.active_children():
            worker.kill()
            worker.join()
        yield ["字" * 300_000]
        raise KeyboardInterrupt
    return counting(pattern, max_pretokens, batches_then_ctrl_c(), workers=2)

bpe.count_in_workers = interrupted_counting
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_while_counting_exits_even_with_a_batch_stuck_for_a_dead_worker(tmp_path):
    """multiprocessing joins each queue's feeder thread at exit: the one stuck writing to a dead counting process
    kept the command from exiting after its one line, forever."""
    good = write_jsonl(tmp_path / "good.jsonl", ["text 文本 " * 5] * 30)
    out = tmp_path / "out"
    argv = ["--files", str(good), "--vocab_size", "300", "--output_dir", str(out)]
    proc = subprocess.run(
        [sys.executable, "-c", CTRL_C_WHILE_COUNTING, *argv], capture_output=True, text=True, timeout=30, cwd=REPO
    )
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"train_bpe.py: interrupted; nothing was written to {out}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.jsonl"]


CTRL_C_TO_THE_GROUP_WHILE_COUNTING = """
import os, signal, sys, time
from shuangyu.tokenizer import bpe
from shuangyu.tokenizer.train_bpe import main

counting = bpe.count_in_workers

def interrupted_counting(pattern, max_pretokens, batches, workers):
    def batches_then_ctrl_c():
        yield ["text 文本 " * 50] * 20
        time.sleep(1)  # the workers run
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the workers' turn first: no race with the parent
        os.killpg(0, signal.SIGINT)  # as a terminal sends it: to every process of the group
        time.sleep(1)
        signal.signal(signal.SIGINT, handler)
        raise KeyboardInterrupt  # the parent's
    return counting(pattern, max_pretokens, batches_then_ctrl_c(), workers=2)

bpe.count_in_workers = interrupted_counting
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_to_the_whole_group_while_counting_is_one_line(tmp_path):
    """A terminal's Ctrl-C reaches the counting processes too: each printed a KeyboardInterrupt traceback."""
    good = write_jsonl(tmp_path / "good.jsonl", ["text 文本 " * 5] * 30)
    out = tmp_path / "out"
    argv = ["--files", str(good), "--vocab_size", "300", "--output_dir", str(out)]
    proc = subprocess.run(
        [sys.executable, "-c", CTRL_C_TO_THE_GROUP_WHILE_COUNTING, *argv],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        start_new_session=True,  # its own group: the Ctrl-C reaches no other process
    )
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"train_bpe.py: interrupted; nothing was written to {out}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.jsonl"]


def test_ctrl_c_while_main_imports_and_builds_its_parser_is_one_line(tmp_path, monkeypatch, capsys):
    """main() imports transformers (seconds) before parsing: Ctrl-C then was a KeyboardInterrupt traceback."""
    import transformers

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(transformers, "HfArgumentParser", ctrl_c)
    argv = ["--files", "a.jsonl", "--vocab_size", "300", "--output_dir", str(tmp_path / "out")]
    try:
        status = main(argv)
    except KeyboardInterrupt:  # caught here: else it would stop pytest itself
        pytest.fail("Ctrl-C escaped main() as a KeyboardInterrupt")
    assert status == 130
    assert capsys.readouterr().err.strip().splitlines() == ["train_bpe.py: interrupted; nothing was written"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("values", [[b"raw bytes", b"more"], [1, 2]], ids=["bytes", "integers"])
def test_a_parquet_text_column_that_holds_no_strings_is_one_line_for_both_tools(tmp_path, capsys, values):
    """It was an AttributeError traceback in train_bpe, and prepare's said a DatasetGenerationError (integers: 'the
    corpus is empty')."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from shuangyu.data.prepare import main as prepare

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": values * 50}), path)
    out = tmp_path / "out"
    assert_clean_failure(capsys, ["--files", str(path), "--output_dir", str(out)], out, str(path), "'text' holds")
    tok = tmp_path / "tok"
    good = write_jsonl(tmp_path / "good.jsonl", ["some text 一些文本"] * 20)
    assert main(["--files", str(good), "--vocab_size", "300", "--output_dir", str(tok)]) == 0
    capsys.readouterr()
    code = prepare(["--tokenizer_name", str(tok), "--output_dir", str(out), "--files", str(path), "--num_proc", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "'text' holds" in err[0] and "not text" in err[0], err
    assert not out.exists()


BPE_CLEANUP = """
import sys
from transformers import AutoTokenizer
from shuangyu.tokenizer.loading import load_tokenizer, save_tokenizer
tok = load_tokenizer(sys.argv[1])
print(tok.decode(tok("Hello , world !")["input_ids"]))
save_tokenizer(tok, sys.argv[2])
saved = AutoTokenizer.from_pretrained(sys.argv[2])
print(saved.decode(saved("Hello , world !")["input_ids"]))
"""


def test_gpt2s_cleanup_flag_is_false_in_training_and_in_the_folders_it_saves(gpt2_tokenizer_dir, tmp_path):
    """GPT-2's tokenizer says clean_up_tokenization_spaces: true; transformers ignores that for BPE and warned at
    the first decode of a run's samples, and of every pipeline() on a folder saved with it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", BPE_CLEANUP, str(gpt2_tokenizer_dir), str(tmp_path / "saved")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["Hello , world !"] * 2  # spaces before punctuation kept, as before
    assert "clean_up_tokenization" not in proc.stderr, proc.stderr
    assert (
        json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())["clean_up_tokenization_spaces"] is False
    )


def test_a_ctrl_c_that_rustbpe_swallows_still_stops_the_merges(monkeypatch):
    """rustbpe took a Ctrl-C during its training as an error it did not pass on: train_bpe.py trained to the end and
    exited 0. Here a stand-in swallows the KeyboardInterrupt as rustbpe did."""
    import signal
    import types

    from shuangyu.tokenizer.merges import learn_merges

    class Swallowing:
        def train_from_iterator(self, iterator, **kwargs):
            try:
                signal.raise_signal(signal.SIGINT)
            except KeyboardInterrupt:
                pass
            for _ in iterator:
                pass

        def get_mergeable_ranks(self):
            return [(bytes([b]), b) for b in range(256)]

    monkeypatch.setitem(sys.modules, "rustbpe", types.SimpleNamespace(Tokenizer=Swallowing))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (conftest restores it)
    with pytest.raises(KeyboardInterrupt):
        learn_merges([("hello", 3), ("world", 2)], num_merges=10)
