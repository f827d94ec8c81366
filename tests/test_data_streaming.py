"""Streaming mode: tokenise and pack on the fly from local dataset folders read with datasets streaming."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from shuangyu.data.streaming import StreamingBlocks
from shuangyu.errors import UsageError
from shuangyu.text.sources import parse_dataset_source, parse_file_source


@pytest.fixture(scope="module")
def tok(data_tokenizer_dir):
    return AutoTokenizer.from_pretrained(str(data_tokenizer_dir))


def dataset_folder(root, name, texts, shards=2, column="text"):
    """A local dataset folder as on the Hub: data/train-0000X-of-0000N.jsonl."""
    folder = root / name / "data"
    folder.mkdir(parents=True)
    for s in range(shards):
        lines = [json.dumps({column: t, "id": i}, ensure_ascii=False) for i, t in enumerate(texts) if i % shards == s]
        (folder / f"train-{s:05d}-of-{shards:05d}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder.parent


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|endoftext|>")]


def test_stream_packs_documents_end_to_end(tmp_path, tok):
    texts = [f"流式读取的第{i}个文档。 Streamed document {i}." for i in range(120)]
    folder = dataset_folder(tmp_path, "one", texts, shards=1)
    stream = StreamingBlocks([parse_dataset_source(str(folder))], tok, 24, shuffle_buffer=0)
    blocks = list(stream)
    assert blocks and all(b.shape == (24,) and b.dtype == torch.long for b in blocks)
    expected = [t for text in texts for t in ids(tok, text)]
    got = torch.cat(blocks).tolist()
    assert got == expected[: len(got)] and len(expected) - len(got) < 24  # end to end, only the tail left


def test_stream_mixes_in_tokens(tmp_path, tok):
    zh = dataset_folder(tmp_path, "zh", [f"这是一个比较长的中文文档，编号{i}，" * (1 + i % 5) for i in range(400)])
    en = dataset_folder(tmp_path, "en", [f"A short English document number {i}." for i in range(2000)])
    sources = [parse_dataset_source(f"zh={zh}:0.25"), parse_dataset_source(f"en={en}:0.75")]
    stream = StreamingBlocks(sources, tok, 64, seed=1)
    blocks = list(stream)
    mix = stream.achieved_mixture()
    assert mix["zh"] == pytest.approx(0.25, abs=0.01) and mix["en"] == pytest.approx(0.75, abs=0.01)
    # the stream ended when a source ran out (no repeats): every English document was used once
    en_tokens = sum(len(ids(tok, f"A short English document number {i}.")) for i in range(2000))
    assert stream.tokens_taken[1] == en_tokens
    assert len(blocks) == sum(stream.tokens_taken) // 64

    # with max_tokens, a source that runs out starts over, and the stream stops at the budget
    capped = StreamingBlocks(sources, tok, 64, seed=1, max_tokens=3 * sum(stream.tokens_taken))
    n = sum(1 for _ in capped)
    assert n == pytest.approx(3 * len(blocks), rel=0.01)
    assert capped.achieved_mixture()["zh"] == pytest.approx(0.25, abs=0.01)


def test_stream_ranks_and_workers_read_disjoint_documents(tmp_path, tok):
    texts = [f"document {i} of the shared stream" for i in range(200)]
    folder = dataset_folder(tmp_path, "shards", texts, shards=4)
    spec = parse_dataset_source(str(folder))
    eos = tok.convert_tokens_to_ids("<|endoftext|>")

    def docs(rank, world):
        stream = torch.cat(list(StreamingBlocks([spec], tok, 8, rank=rank, world_size=world, seed=3))).tolist()
        out, cur = [], []
        for t in stream:
            cur.append(t)
            if t == eos:
                out.append(tok.decode(cur[:-1]))
                cur = []
        return out

    r0, r1 = docs(0, 2), docs(1, 2)
    assert r0 and r1 and not set(r0) & set(r1)
    assert len(set(r0) | set(r1)) > 180  # all but the documents cut by each rank's tail

    # under a DataLoader with 2 workers each worker streams its own shards: still no document twice
    loader = torch.utils.data.DataLoader(StreamingBlocks([spec], tok, 8, seed=3), batch_size=4, num_workers=2)
    flat = torch.cat([b.reshape(-1) for b in loader])
    assert 200 - 2 <= (flat == eos).sum() <= 200  # each worker drops only its tail


def test_stream_local_files_and_missing_column(tmp_path, tok):
    (tmp_path / "a.jsonl").write_text(
        "".join(json.dumps({"body": f"file line {i}"}) + "\n" for i in range(50)), encoding="utf-8"
    )
    spec = parse_file_source(str(tmp_path / "a.jsonl"))
    assert len(list(StreamingBlocks([spec], tok, 16, text_column="body"))) > 5
    with pytest.raises(UsageError, match=r"no column 'text' \(columns: body\); set --text_column"):
        list(StreamingBlocks([spec], tok, 16))
    folder = dataset_folder(tmp_path, "ds", ["x y z"] * 10, column="content")
    with pytest.raises(UsageError, match=r"no column 'text' \(columns: content, id\)"):
        list(StreamingBlocks([parse_dataset_source(str(folder))], tok, 16))
    with pytest.raises(UsageError, match="WEIGHT"):
        StreamingBlocks([spec, parse_dataset_source(str(folder))], tok, 16)
