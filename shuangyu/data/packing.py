"""Mixing documents in tokens to the sources' weights, and packing them end to end into fixed-size blocks: all at
once into a file (`write_packed`, for `prepare`), or one document at a time (`BlockPacker`, for streaming). Both
put documents end to end with no padding; a document may continue into the next block."""

from __future__ import annotations

import numpy as np

from shuangyu.errors import UsageError


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def mix_documents(
    doc_source: np.ndarray,
    doc_tokens: np.ndarray,
    num_sources: int,
    weights: list[float] | None,
    max_tokens: int | None,
    seed: int,
) -> tuple[np.ndarray, list[dict]]:
    """Choose training documents so that each source's share of *tokens* matches its weight.

    With weights the total is `max_tokens`, or else the largest total that repeats no source (as in the
    tokenizer trainer); a source short of its share is taken again in a fresh order (upsampled), a larger
    one is sampled down, by whole documents, in a seeded order. Without weights every source keeps its
    natural share (scaled down to `max_tokens`). Returns the chosen documents (indices into the arrays,
    repeats allowed) in a seeded shuffled order, and a report per source.
    """
    available = np.bincount(doc_source, weights=doc_tokens, minlength=num_sources).astype(np.int64)
    for i in range(num_sources):
        if available[i] == 0:
            raise UsageError(f"source #{i + 1} yields no training tokens (all of it held out, or empty)")
    if weights is not None:
        shares = np.asarray(weights, dtype=np.float64) / sum(weights)
        total = max_tokens if max_tokens is not None else float(np.min(available / shares))
        targets = np.floor(total * shares + 0.5).astype(np.int64)
    else:
        total = int(available.sum())
        scale = 1.0 if max_tokens is None else min(1.0, max_tokens / total)
        targets = np.floor(available * scale + 0.5).astype(np.int64)
    rng = np.random.default_rng([seed, 1])
    chosen, report = [], []
    for i in range(num_sources):
        docs = np.flatnonzero(doc_source == i)
        remaining, taken_docs, passes = int(targets[i]), 0, 0
        while remaining > 0:
            order = rng.permutation(docs)
            cum = np.cumsum(doc_tokens[order])
            k = min(int(np.searchsorted(cum, remaining)) + 1, len(order))  # first k docs reaching the target
            chosen.append(order[:k])
            remaining -= int(cum[k - 1])
            taken_docs += k
            passes += 1
        report.append(
            {
                "tokens_available": int(available[i]),
                "tokens_target": int(targets[i]),
                "docs_taken": taken_docs,
                "passes": passes,
            }
        )
    order = rng.permutation(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    taken = np.bincount(doc_source[order], weights=doc_tokens[order], minlength=num_sources).astype(np.int64)
    for i, entry in enumerate(report):
        entry["tokens_taken"] = int(taken[i])
        entry["share"] = round(float(taken[i] / max(taken.sum(), 1)), 6)
        entry["share_asked"] = None if weights is None else round(float(weights[i] / sum(weights)), 6)
    return order, report


def write_packed(
    order: np.ndarray, offsets: np.ndarray, values: np.ndarray, block_size: int, out, chunk_tokens: int = 1 << 24
) -> tuple[int, int]:
    """Write the documents `order` end to end as whole blocks to the open file `out`; the tail shorter than a
    block is dropped. Gathers a chunk of documents at a time with one numpy index, never a Python loop over
    tokens. Returns (blocks written, tokens dropped)."""
    lengths = offsets[order + 1] - offsets[order]
    total = int(lengths.sum())
    keep = total // block_size * block_size
    written, start_doc = 0, 0
    ends = np.cumsum(lengths)
    while written < keep:
        stop_doc = int(np.searchsorted(ends, written + chunk_tokens, side="right"))
        stop_doc = max(stop_doc, start_doc + 1)
        docs = order[start_doc:stop_doc]
        lens = lengths[start_doc:stop_doc]
        n = int(lens.sum())
        # index of every token: each document's start, repeated over its length, plus a running offset
        index = np.repeat(offsets[docs] - (np.cumsum(lens) - lens), lens) + np.arange(n)
        chunk = values[index[: keep - written]]
        chunk.tofile(out)
        written += len(chunk)
        start_doc = stop_doc
    return keep // block_size, total - keep


def flat_tokens(column) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, values) of a list<uint> Arrow column, so documents are slices of one array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        chunks = column.chunks
    else:
        chunks = [column]
    lengths = np.concatenate([pc.list_value_length(c).to_numpy(zero_copy_only=False) for c in chunks] or [[]])
    values = np.concatenate([c.flatten().to_numpy() for c in chunks]) if chunks else np.zeros(0)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, values


class BlockPacker:
    """Documents in, blocks of `block_size` tokens out, end to end: the streaming counterpart of `write_packed`.

    The tokens not yet in a block (`carry`: the tail of the last document, which may be several blocks long) are
    its whole state, so `state_dict` taken between two blocks resumes the packing exactly. `carry` is replaced,
    never changed in place, so a reference to it is a snapshot."""

    def __init__(self, block_size: int):
        self.block_size = block_size
        self.carry = np.zeros(0, dtype=np.int32)

    def add(self, ids: np.ndarray) -> None:
        self.carry = np.concatenate([self.carry, ids.astype(np.int32, copy=False)])

    def has_block(self) -> bool:
        return len(self.carry) >= self.block_size

    def take_block(self) -> np.ndarray:
        block, self.carry = self.carry[: self.block_size], self.carry[self.block_size :]
        return block

    def pack(self, documents) -> np.ndarray:
        """Every whole block of `documents` (an iterable of id arrays) as a [blocks, block_size] array; the tail
        shorter than a block stays in `carry`."""
        blocks = []
        for ids in documents:
            self.add(ids)
            while self.has_block():
                blocks.append(self.take_block())
        return np.stack(blocks) if blocks else np.zeros((0, self.block_size), dtype=np.int32)

    def state_dict(self) -> dict:
        return {"carry": self.carry.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.carry = np.asarray(state["carry"], dtype=np.int32)
