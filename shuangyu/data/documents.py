"""Reading the sources' documents into Arrow rows, and tokenising them (in `datasets.map` worker processes)."""

from __future__ import annotations

import hashlib
from itertools import chain

import numpy as np

from shuangyu.errors import UsageError
from shuangyu.text.readers import (
    ReadOptions,
    ReadStats,
    estimated_text_bytes,
    iter_dataset_documents,
    iter_file_documents,
)


def read_documents_for_arrow(inputs: list, opts: ReadOptions, split: str, seed: int, stats: list[ReadStats]):
    """Rows {text, source} for `Dataset.from_generator`. It runs in this process (no num_proc) so that
    errors keep their file:line message and skipped lines are counted; tokenising is the costly part and
    that runs on many processes.

    Local sources are interleaved in proportion to their (estimated) text size: `map(num_proc=N)` gives each
    process a contiguous 1/N of the rows, and source after source would hand one process all the short
    Chinese reviews and another all the long English books. Datasets (size unknown) come last."""
    sized, streamed = [], []
    for index, (spec, files) in enumerate(inputs):
        if spec.is_dataset:
            streamed.append((index, iter_dataset_documents(spec, split, opts, seed, stats[index])))
        else:
            docs = (doc for path in files for doc in iter_file_documents(path, opts, stats[index]))
            sized.append([0.0, index, docs, max(1, sum(estimated_text_bytes(p, opts) for p in files))])
    while sized:
        entry = min(sized)  # the source least far through its files
        _, index, docs, size = entry
        doc = next(docs, None)
        if doc is None:
            sized.remove(entry)
            continue
        yield _count(doc, index, stats[index])
        entry[0] = stats[index].bytes / size
    for index, docs in streamed:
        for doc in docs:
            yield _count(doc, index, stats[index])


def _count(doc: str, index: int, st: ReadStats) -> dict:
    st.docs += 1
    st.bytes += len(doc.encode("utf-8"))
    return {"text": doc, "source": index}


def held_out(text: str, seed: int, fraction: float) -> bool:
    """Whether a document goes to validation: a keyed hash of its text, so the choice is deterministic by
    seed, independent of order and processes, and identical copies of a text land on the same side."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "little") < fraction * 2.0**64


def encode_texts(tokenizer, texts: list[str]) -> list:
    """The tokenizer's encodings of documents (without the end-of-text id, which callers append as an id): the
    one way documents are encoded, for `prepare` and for streaming. Special-token text in a document is text,
    whatever the tokenizer's setting (a chat model's folder saves split_special_tokens=False for the tools that
    tokenize its chat template: shuangyu/tokenizer/chat_template.py)."""
    backend = tokenizer.backend_tokenizer
    backend.encode_special_tokens = True
    return backend.encode_batch(texts, add_special_tokens=False)


def document_ids(tokenizer, texts: list[str], eos_token_id: int) -> list[np.ndarray]:
    """Token ids of each document with the end-of-text id appended (int32), for packing on the fly."""
    return [np.array([*enc.ids, eos_token_id], dtype=np.int32) for enc in encode_texts(tokenizer, texts)]


def tokenize_documents(
    batch, tokenizer, eos_token_id: int, seed: int, fraction: float, first_validation: int, dtype: str
):
    """`datasets.map` function over Arrow batches: token ids of each document with the end-of-text id
    appended, and whether the document is held out. The id is appended rather than the text
    `<|endoftext|>`, which the tokenizer (split_special_tokens=True) would encode as plain characters.
    Returns an Arrow table built from one flat numpy array: letting Arrow convert Python lists of ints to
    uint16 costs a third of the tokenising time."""
    import pyarrow as pa

    texts = batch.column("text").to_pylist()
    sources = batch.column("source").to_pylist()
    encodings = encode_texts(tokenizer, texts)
    lengths = np.fromiter((len(enc.ids) + 1 for enc in encodings), dtype=np.int32, count=len(encodings))
    offsets = np.zeros(len(encodings) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter(
        chain.from_iterable(chain(enc.ids, (eos_token_id,)) for enc in encodings), dtype=dtype, count=int(offsets[-1])
    )
    held = [src >= first_validation or held_out(text, seed, fraction) for text, src in zip(texts, sources, strict=True)]
    return pa.table(
        {
            "source": batch.column("source"),
            "input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)),
            "held_out": pa.array(held, type=pa.bool_()),
        }
    )


def unwrap_usage_error(err: BaseException) -> UsageError | None:
    seen = err
    while seen is not None:
        if isinstance(seen, UsageError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
