"""Reading the sources' documents into Arrow rows, and tokenising them (in `datasets.map` worker processes)."""

from __future__ import annotations

import hashlib
import os
import signal

import numpy as np

from shuangyu.errors import UsageError, exception_chain
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


# A document longer than this (characters) is tokenised in pieces of about this size: the tokenizer holds a few
# hundred bytes per token of a text it encodes (offsets, token strings, the pre-tokenizer's alignments), so a
# 46 MB one-line document took gigabytes at once.
PIECE_CHARS = 1 << 16


def split_at_pretoken_starts(text: str, piece_chars: int = PIECE_CHARS) -> list[str]:
    """`text` cut into pieces of at most about `piece_chars` characters, each cut where the pre-tokenizer starts a
    new pre-token anyway, so that tokenising the pieces gives exactly the ids of tokenising the whole (byte-level BPE
    never merges across pre-tokens). Cuts are, by preference, right after a line break that precedes a
    non-space, or right before a single space between two non-spaces: Shuangyu's pattern (tokenizer/bpe.py), GPT-2's
    and Llama 3's all start a pre-token there and let none cross it (no alternative holds a line break followed by
    text, or a space after a non-space). A stretch of `piece_chars` with neither (no whitespace at all) is cut where
    it reaches the size: only the tokens of the one run cut in two may differ."""
    if len(text) <= piece_chars:
        return [text]
    pieces, start = [], 0
    while len(text) - start > piece_chars:
        low, high = start + piece_chars // 2, start + piece_chars
        cut = _last_cut_after_line_break(text, low, high) or _last_cut_before_space(text, low, high) or high
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def _last_cut_after_line_break(text: str, low: int, high: int) -> int:
    at = high
    while (at := text.rfind("\n", low, at)) > 0:
        if not text[at + 1].isspace():  # at + 1 < high <= len(text) - 1
            return at + 1
    return 0


def _last_cut_before_space(text: str, low: int, high: int) -> int:
    at = high
    while (at := text.rfind(" ", low, at)) > 0:
        if not text[at - 1].isspace() and not text[at + 1].isspace():
            return at
    return 0


def encode_texts(tokenizer, texts: list[str]) -> list:
    """The token ids of each document (without the end-of-text id, which callers append as an id): a list, or for a
    document longer than PIECE_CHARS an int32 array joined from its pieces. The one way documents are encoded, for
    `prepare` and for streaming. Special-token text in a document is text, whatever the tokenizer's setting (a chat
    model's folder saves split_special_tokens=False for the tools that tokenize its chat template:
    shuangyu/tokenizer/chat_template.py)."""
    backend = tokenizer.backend_tokenizer
    backend.encode_special_tokens = True
    long = [i for i, text in enumerate(texts) if len(text) > PIECE_CHARS]
    if not long:
        return [enc.ids for enc in backend.encode_batch(texts, add_special_tokens=False)]
    ids = [
        enc.ids
        for enc in backend.encode_batch([t if len(t) <= PIECE_CHARS else "" for t in texts], add_special_tokens=False)
    ]
    for i in long:
        pieces = split_at_pretoken_starts(texts[i], PIECE_CHARS)
        parts = []
        for first in range(0, len(pieces), 16):  # a few pieces at a time, each's encodings dropped as soon as read
            encodings = backend.encode_batch(pieces[first : first + 16], add_special_tokens=False)
            parts += [np.asarray(enc.ids, dtype=np.int32) for enc in encodings]
        ids[i] = np.concatenate(parts)
    return ids


def document_ids(tokenizer, texts: list[str], eos_token_id: int) -> list[np.ndarray]:
    """Token ids of each document with the end-of-text id appended (int32), for packing on the fly."""
    return [
        np.append(np.asarray(ids, dtype=np.int32), np.int32(eos_token_id)) for ids in encode_texts(tokenizer, texts)
    ]


def ignore_ctrl_c_in_workers(parent_pid: int) -> None:
    """In a `datasets.map` worker process, leave Ctrl-C to the parent: the terminal sends SIGINT to every process, and
    a worker stopped by it prints its own traceback; the parent stops the pool (datasets terminates it). Forked
    workers ignore it from birth (errors.forks_leave_ctrl_c_to_this_process); this is for spawned ones (macOS)."""
    if os.getpid() != parent_pid:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def tokenize_documents(
    batch, tokenizer, eos_token_id: int, seed: int, fraction: float, first_validation: int, dtype: str, parent_pid: int
):
    """`datasets.map` function over Arrow batches: token ids of each document with the end-of-text id
    appended, and whether the document is held out. The id is appended rather than the text
    `<|endoftext|>`, which the tokenizer (split_special_tokens=True) would encode as plain characters.
    Returns an Arrow table built from one flat numpy array: letting Arrow convert Python lists of ints to
    uint16 costs a third of the tokenising time."""
    import pyarrow as pa

    ignore_ctrl_c_in_workers(parent_pid)
    texts = batch.column("text").to_pylist()
    sources = batch.column("source").to_pylist()
    encoded = encode_texts(tokenizer, texts)
    lengths = np.fromiter((len(ids) + 1 for ids in encoded), dtype=np.int32, count=len(encoded))
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.empty(int(offsets[-1]), dtype=dtype)
    for ids, end in zip(encoded, offsets[1:], strict=True):
        flat[end - 1 - len(ids) : end - 1] = ids
    flat[offsets[1:] - 1] = eos_token_id
    held = [src >= first_validation or held_out(text, seed, fraction) for text, src in zip(texts, sources, strict=True)]
    return pa.table(
        {
            "source": batch.column("source"),
            "input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)),
            "held_out": pa.array(held, type=pa.bool_()),
        }
    )


def unwrap_usage_error(err: BaseException) -> UsageError | None:
    return next((seen for seen in exception_chain(err) if isinstance(seen, UsageError)), None)
