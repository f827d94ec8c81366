"""Blocks tokenised and packed on the fly from streamed datasets, for corpora larger than a disk cache.

Not yet reached by `train_clm.py`: the planner issue wires it in as `--streaming` (with exact resume of the
stream position); until then it is a library class, tested in tests/test_data_streaming.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from shuangyu.errors import UsageError
from shuangyu.text.sources import SourceSpec, check_weights, resolve_files
from shuangyu.tokenizer.special_tokens import EOS_TOKEN


class StreamingBlocks(torch.utils.data.IterableDataset):
    """Blocks of `block_size` tokens packed on the fly from streamed datasets, mixed in tokens.

    Each source is opened with `datasets.load_dataset(..., streaming=True)` (a Hub dataset, a local
    dataset folder, or --files through datasets' json/text/parquet builders), split per rank with
    `split_dataset_by_node` (and per DataLoader worker by datasets itself, so give it at least as many
    shards as workers), shuffled with a seeded buffer and tokenised with a
    batched `map`. `datasets.interleave_datasets` mixes by documents, not tokens, so the mix is done here:
    the next document always comes from the source furthest below its share of tokens. Without
    `max_tokens` the stream ends when a source runs out (no source is repeated, as in `prepare`); with it,
    a source that runs out starts again in a new shuffled order.
    """

    def __init__(
        self,
        sources: list[SourceSpec],
        tokenizer,
        block_size: int,
        *,
        split: str = "train",
        text_column: str = "text",
        max_tokens: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 10_000,
    ):
        check_weights(sources)
        if len(sources) > 1 and sources[0].weight is None:
            raise UsageError("streaming several sources: give every source a :WEIGHT")
        self.sources, self.tokenizer, self.block_size = sources, tokenizer, block_size
        self.split, self.text_column, self.max_tokens, self.seed = split, text_column, max_tokens, seed
        self.rank, self.world_size, self.shuffle_buffer = rank, world_size, shuffle_buffer
        self.eos_token_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
        weights = [s.weight or 1.0 for s in sources]
        self.shares = [w / sum(weights) for w in weights]
        self.tokens_taken = [0] * len(sources)  # this process's stream, for the achieved mixture

    def _open(self, spec: SourceSpec, node: int, nodes: int, epoch: int):
        import datasets
        from datasets.distributed import split_dataset_by_node

        try:
            if spec.is_dataset:
                ds = datasets.load_dataset(spec.dataset, spec.config, split=self.split, streaming=True)
            else:
                files = [str(p) for p in resolve_files(spec)]
                builder = {".txt": "text", ".parquet": "parquet"}.get(Path(files[0].removesuffix(".gz")).suffix, "json")
                ds = datasets.load_dataset(builder, data_files=files, split="train", streaming=True)
        except Exception as err:  # connection, missing config or split, unreadable files
            raise UsageError(f"source {spec.name!r}: could not stream it ({type(err).__name__}: {err})") from None
        columns = ds.column_names
        if columns is not None and self.text_column not in columns:
            raise UsageError(
                f"source {spec.name!r}: no column {self.text_column!r} (columns: {', '.join(columns)}); set --text_column"
            )
        ds = split_dataset_by_node(ds, node, nodes)
        if self.shuffle_buffer:
            ds = ds.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
            ds.set_epoch(epoch)
        return ds.map(
            _tokenize_stream,
            batched=True,
            remove_columns=columns,
            fn_kwargs={"tokenizer": self.tokenizer, "eos_token_id": self.eos_token_id, "column": self.text_column},
        )

    def _documents(self, index: int, node: int, nodes: int) -> Iterator[list[int]]:
        epoch = 0
        while True:
            empty = True
            for row in self._open(self.sources[index], node, nodes, epoch):
                empty = False
                yield row["input_ids"]
            if empty:
                raise UsageError(f"source {self.sources[index].name!r} yields no documents for this process")
            if self.max_tokens is None:
                return
            epoch += 1

    def __iter__(self) -> Iterator[torch.Tensor]:
        # split by rank here; inside a DataLoader worker, datasets itself splits each rank's shards by worker
        info = torch.utils.data.get_worker_info()
        workers = info.num_workers if info else 1
        limit = None if self.max_tokens is None else self.max_tokens // (self.world_size * workers)
        streams = [self._documents(i, self.rank, self.world_size) for i in range(len(self.sources))]
        taken = [0] * len(streams)
        buffer: list[int] = []
        while limit is None or sum(taken) < limit:
            total = sum(taken)
            # the source furthest below its share of tokens goes next
            i = max(range(len(streams)), key=lambda j: self.shares[j] * (total + 1) - taken[j])
            doc = next(streams[i], None)
            if doc is None:
                break
            taken[i] += len(doc)
            self.tokens_taken[i] += len(doc)
            buffer.extend(doc)
            while len(buffer) >= self.block_size:
                yield torch.tensor(buffer[: self.block_size], dtype=torch.long)
                del buffer[: self.block_size]

    def achieved_mixture(self) -> dict[str, float]:
        total = sum(self.tokens_taken) or 1
        return {s.name: t / total for s, t in zip(self.sources, self.tokens_taken, strict=True)}


def _tokenize_stream(batch: dict, tokenizer, eos_token_id: int, column: str) -> dict:
    if column not in batch:
        raise UsageError(f"no column {column!r} (columns: {', '.join(batch)}); set --text_column")
    texts = [t or "" for t in batch[column]]
    encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    return {"input_ids": [enc.ids + [eos_token_id] for enc, t in zip(encodings, texts, strict=True) if t]}
