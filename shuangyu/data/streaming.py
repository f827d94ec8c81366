"""Training blocks tokenised, mixed and packed on the fly from streamed sources: `train_clm.py --streaming`, for
corpora larger than a disk cache. Nothing is written to disk.

`StreamedData` stands where a prepared folder (`PreparedData`) stands in training: block size, vocabulary check,
validation loaders, and a training loader, here a `StreamLoader` whose position each process saves in every
checkpoint and restores exactly:

- each process reads its own part of every source (stream_sources.SourceReader: shards in a seeded order per
  pass, split by `split_dataset_by_node`, shuffled in windows);
- the next document always comes from the source furthest below its weight's share of the tokens this process
  has taken (the mix is kept in tokens, as `prepare` keeps it), and a source that runs out begins a new pass;
- documents are packed end to end into blocks (packing.BlockPacker), the tail of a document carried into the
  next block;
- validation: `--validation_files` as in `prepare`, or else the first `--validation_docs` documents of each
  source, held out (training skips every document with the same text).

The position is the sources' positions, the tokens taken per source and the packer's carried tokens. A thread
reads ahead of the training loop; the loader keeps the position after each batch it hands over, so the position
saved between two steps resumes with exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Iterator

import numpy as np
import torch

from shuangyu.data.documents import document_ids
from shuangyu.data.loader import BlockCollator, DataChanged, ValidationShard, process_rank
from shuangyu.data.packing import BlockPacker
from shuangyu.data.stream_key import describe_key_change, stream_key
from shuangyu.data.stream_sources import (
    SourceReader,
    StreamSource,
    display_files,
    read_first_documents,
    text_digest,
)
from shuangyu.errors import UsageError
from shuangyu.text.readers import ReadOptions, ReadStats, iter_file_documents
from shuangyu.text.sources import check_not_held_out, resolve_validation_sources
from shuangyu.tokenizer.special_tokens import EOS_TOKEN


class StreamingBlocks:
    """One process's training blocks, endless: documents from its SourceReaders mixed in tokens by weight and
    packed end to end. `state_dict()` between two blocks resumes exactly."""

    def __init__(self, readers: list[SourceReader], weights: list[float], block_size: int):
        self.readers, self.packer = readers, BlockPacker(block_size)
        self.shares = [w / sum(weights) for w in weights]

    def next_block(self) -> np.ndarray:
        while not self.packer.has_block():
            taken = [r.tokens for r in self.readers]
            total = sum(taken)
            # the source furthest below its share of the tokens goes next (ties: the first)
            i = max(range(len(taken)), key=lambda j: self.shares[j] * (total + 1) - taken[j])
            self.packer.add(self.readers[i].next_document())
        return self.packer.take_block()

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            yield self.next_block()

    def achieved_mixture(self) -> dict[str, float]:
        total = sum(r.tokens for r in self.readers) or 1
        return {r.source.spec.name: r.tokens / total for r in self.readers}

    def position(self) -> dict:
        """The state as it is now, cheaply (a reader thread takes one after every batch): the carried tokens stay an
        array, which BlockPacker never changes in place."""
        return {"sources": [r.state_dict() for r in self.readers], "carry": self.packer.carry}

    @staticmethod
    def as_state(position: dict) -> dict:
        return {"sources": position["sources"], "packer": {"carry": position["carry"].tolist()}}

    def state_dict(self) -> dict:
        return self.as_state(self.position())

    def load_state_dict(self, state: dict) -> None:
        for reader, reader_state in zip(self.readers, state["sources"], strict=True):
            reader.load_state_dict(reader_state)
        self.packer.load_state_dict(state["packer"])


class StreamLoader:
    """Batches of `batch_size` blocks for one process, as {"input_ids": [batch, block] int64} (and position ids
    that restart at every document, with `eos_token_id`). Endless.

    A thread reads, tokenises and packs up to `prefetch` batches ahead of the loop (the tokenizer and Arrow work
    outside the GIL), so the training step does not wait for text; each batch comes with the stream's position
    right after it, and `state_dict()` is the position after the last batch the loop *received*, not the last
    one read. The state is this process's own: save every process's (train_clm.py writes them to the
    checkpoint's data_stream.json). Call `load_state_dict` before iterating, not during.

    A bad line met while reading ahead stops only the process that reads it, and the others would wait for it in
    their next collective. With `agree_every` N (a multiple of the batches in a step) and an `accelerator`, before
    the first batch and every N batches the processes wait until their thread is N batches ahead (or has
    stopped) and agree whether any stream failed: if one did, every process raises `StreamFailed` at the same step,
    and no process has taken a batch it could not match."""

    def __init__(
        self,
        blocks: StreamingBlocks,
        batch_size: int,
        *,
        key: dict,
        earlier_key: dict | None = None,
        pin_memory: bool = False,
        eos_token_id: int | None = None,
        prefetch: int = 4,
        accelerator=None,
        agree_every: int = 0,
    ):
        self.blocks, self.batch_size, self.key, self.prefetch = blocks, batch_size, key, prefetch
        self.earlier_key = earlier_key  # what older checkpoints carry for this same stream
        self.accelerator, self.agree_every = accelerator, agree_every
        self.pin_memory = pin_memory  # the loop copies with non_blocking=True only from pinned memory
        self.collate = BlockCollator(eos_token_id)
        self._position: dict | None = None  # after the last batch delivered; None: the blocks' own state

    def _next_batch(self) -> tuple[dict, dict]:
        rows = np.stack([self.blocks.next_block() for _ in range(self.batch_size)])
        batch = torch.from_numpy(rows.astype(np.int64))
        return self.collate(batch.pin_memory() if self.pin_memory else batch), self.blocks.position()

    def __iter__(self) -> Iterator[dict]:
        self._position = self.blocks.position()
        if not self.prefetch:
            while True:
                batch, self._position = self._next_batch()
                yield batch
        reader = _ReadAhead(self._next_batch, max(self.prefetch, self.agree_every + 1))
        try:
            for taken in itertools.count():
                if self.agree_every and taken % self.agree_every == 0:
                    self._agree(reader)
                batch, self._position = reader.get()
                yield batch
        finally:
            reader.stop()
            # the thread read past what the loop received: go back, so a new iteration continues exactly
            self.blocks.load_state_dict(StreamingBlocks.as_state(self._position))

    def _agree(self, reader: _ReadAhead) -> None:
        failure = reader.failure_ahead()
        accelerator = self.accelerator
        if accelerator is not None and accelerator.num_processes > 1:
            flag = torch.tensor(float(failure is not None), device=accelerator.device)
            if accelerator.reduce(flag, "max").item():  # a message is gathered only when there is one
                from accelerate.utils import gather_object

                failure = next(f for f in gather_object([failure]) if f)
        if failure:
            raise StreamFailed(failure)

    def check_sources(self) -> None:
        """Every source has documents for this process (read, then put back): checked before training, where one
        process's error would stop it alone."""
        for reader in self.blocks.readers:
            reader.check_first_pass()

    def state_dict(self) -> dict:
        position = self._position if self._position is not None else self.blocks.position()
        return {"key": self.key, "stream": StreamingBlocks.as_state(position)}

    def load_state_dict(self, state: dict) -> None:
        theirs = state["key"]
        if theirs != self.key and theirs != self.earlier_key:
            if theirs.get("world_size") != self.key["world_size"]:
                raise UsageError(
                    f"the checkpoint's stream positions are for {theirs.get('world_size')} processes, not "
                    f"{self.key['world_size']}: each process streams its own shards, so resume with "
                    f"{theirs.get('world_size')} processes"
                )
            # a checkpoint keyed as before 2026-12-03 (raw weights) is told apart from the key of its own kind
            earlier = self.earlier_key and any("weight" in e for e in theirs.get("sources", []))
            mine = self.earlier_key if earlier else self.key
            raise DataChanged(
                f"the checkpoint's stream position is for another stream ({describe_key_change(theirs, mine)} "
                "changed): resume with the flags the run started with"
            )
        self.blocks.load_state_dict(state["stream"])
        self._position = None


class StreamFailed(UsageError):
    """A bad line in some process's stream, raised on every process at the same step (StreamLoader.agree_every)."""


class _ReadAhead:
    """`make()` called over and over on a thread, its results queued (at most `depth`); an exception it raises is
    raised again by `get`, and a UsageError's is told by `failure_ahead` as soon as it is met."""

    def __init__(self, make, depth: int):
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stopping = threading.Event()
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(make,), name="shuangyu-stream", daemon=True)
        self.thread.start()

    def _run(self, make) -> None:
        while not self.stopping.is_set():
            try:
                item = make()
            except BaseException as err:  # noqa: BLE001 -- handed to the training loop, which raises it
                item = self.failure = err
            while not self.stopping.is_set():
                try:
                    self.queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def get(self):
        item = self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def failure_ahead(self) -> str | None:
        """The message of a UsageError the thread met, once the queue is full or the thread has stopped (so the next
        `depth - 1` batches are known to be good when it is None)."""
        while self.failure is None and not self.queue.full() and self.thread.is_alive():
            time.sleep(0.001)
        return str(self.failure) if isinstance(self.failure, UsageError) else None

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()


class StreamedData:
    """What training needs of its data, streamed: opened (and checked: every source has the text column) on
    every process, with the validation blocks in memory."""

    is_conversations = False

    def __init__(
        self,
        sources: list[StreamSource],
        tokenizer,
        block_size: int,
        *,
        split: str = "train",
        text_column: str = "text",
        window: int = 4096,
        validation_files: list[str] | tuple[str, ...] = (),
        validation_docs: int = 1000,
        say=print,
    ):
        if window < 1:
            raise UsageError(f"--shuffle_window {window} must be at least 1")
        self.sources, self.tokenizer, self.block_size = sources, tokenizer, block_size
        self.split, self.text_column, self.window, self.say = split, text_column, window, say
        self.eos_token_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
        self.opened = [source.open(split, text_column) for source in sources]  # (dataset, column) each
        self.held_out: list[frozenset[bytes]] = [frozenset()] * len(sources)
        if validation_files:
            self.validation_files = self.read_validation_files(list(validation_files), text_column)
            self.validation_rule = {"files": None}  # the files' digests: in key()
        else:
            if validation_docs < 1:
                raise UsageError(
                    f"--validation_docs {validation_docs}: hold out at least 1 document per source, or give "
                    "--validation_files"
                )
            self.validation_rule = {"first_docs": validation_docs}
            self.validation = {}
            for i, (source, (ds, column)) in enumerate(zip(sources, self.opened, strict=True)):
                texts = read_first_documents(source, ds, column, validation_docs)
                self.held_out[i] = frozenset(text_digest(t) for t in texts)
                self.validation[source.spec.name] = self.pack(texts)
        self.positions: list[dict] = []  # every process's loader state, as last recorded (for the model card)

    def read_validation_files(self, values: list[str], text_column: str) -> list[tuple[str, list]]:
        """Reads the files into `self.validation`; returns each source's name and files."""
        specs, files = resolve_validation_sources(values)
        check_not_held_out([s.files for s in self.sources], [s.name for s in specs], files, "--train_files")
        opts, self.validation = ReadOptions(text_column=text_column), {}
        for spec, paths in zip(specs, files, strict=True):
            texts = [doc for path in paths for doc in iter_file_documents(path, opts, ReadStats())]
            self.validation[spec.name] = self.pack(texts)
        return [(spec.name, paths) for spec, paths in zip(specs, files, strict=True)]

    def pack(self, texts: list[str]) -> torch.Tensor:
        packer = BlockPacker(self.block_size)
        return torch.from_numpy(packer.pack(document_ids(self.tokenizer, texts, self.eos_token_id)).astype(np.int64))

    def check_vocab_size(self, vocab_size: int) -> None:
        if vocab_size < len(self.tokenizer):
            raise UsageError(
                f"--tokenizer_name has {len(self.tokenizer):,} tokens but the model's vocab_size is {vocab_size:,}: "
                f"set the model's vocab_size to at least {len(self.tokenizer):,}"
            )

    def weights(self) -> list[float]:
        """Each source's weight in the mix (a source without one weighs 1)."""
        return [s.spec.weight or 1.0 for s in self.sources]

    def validation_datasets(self) -> dict[str, torch.Tensor]:
        """Blocks per validation source ([blocks, block_size] int64); a source with less than a block is left out."""
        return {name: blocks for name, blocks in self.validation.items() if len(blocks)}

    def validation_shards(
        self, batch_size: int, rows: int, rank: int, world_size: int, *, position_ids: bool = False
    ) -> dict[str, ValidationShard]:
        """This process's share of each validation source's first `rows` rows (0: all), in batches of
        `{"input_ids": [batch, block]}`; `position_ids`: with positions restarting per document, as training's."""
        collate = BlockCollator(self.eos_token_id if position_ids else None)
        return {
            name: ValidationShard(blocks, lambda batch: collate(torch.stack(batch)), batch_size, rows, rank, world_size)
            for name, blocks in self.validation_datasets().items()
        }

    def key(self, seed: int, world_size: int, *, earlier: bool = False) -> dict:
        """What the stream's positions depend on; a checkpoint made with another is refused on resume.
        `earlier`: the key as checkpoints made before 2026-12-03 carry it."""
        validation = {"files": self.validation_files} if "files" in self.validation_rule else self.validation_rule
        return stream_key(
            self.sources, self.tokenizer, self.block_size, split=self.split, text_column=self.text_column,
            window=self.window, validation=validation, seed=seed, world_size=world_size, earlier=earlier,
        )  # fmt: skip

    def train_loader(
        self,
        batch_size: int,
        *,
        accelerator=None,
        rank: int | None = None,
        world_size: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        position_ids: bool = False,
        agree_every: int = 0,
    ) -> StreamLoader:
        """This process's training loader. Do not pass it to `accelerator.prepare` (it already streams this
        process's part); save its `state_dict()` per process. `agree_every`: see StreamLoader."""
        if num_workers:
            raise UsageError(
                f"--dataloader_num_workers {num_workers} with --streaming: the stream is read in the training "
                "process, where its position is known at every step; set --dataloader_num_workers 0"
            )
        rank, world_size = process_rank(accelerator, rank, world_size)
        readers = [
            SourceReader(
                source, i, ds, column, self.tokenizer, self.eos_token_id, rank=rank, world_size=world_size,
                seed=seed, window=self.window, held_out=self.held_out[i], say=self.say,
            )
            for i, (source, (ds, column)) in enumerate(zip(self.sources, self.opened, strict=True))
        ]  # fmt: skip
        blocks = StreamingBlocks(readers, self.weights(), self.block_size)
        return StreamLoader(
            blocks,
            batch_size,
            key=self.key(seed, world_size),
            earlier_key=self.key(seed, world_size, earlier=True),
            pin_memory=pin_memory,
            eos_token_id=self.eos_token_id if position_ids else None,
            accelerator=accelerator,
            agree_every=agree_every,
        )

    def record_positions(self, positions: list[dict]) -> None:
        """Every process's loader state (gathered when a checkpoint is saved): the documents, tokens and passes
        per source that the model card reports."""
        self.positions = positions

    @property
    def manifest(self) -> dict:
        """The sources and the tokenizer in the shape of a prepared folder's manifest, for the model card: documents
        and tokens taken summed over processes, passes the most any process began."""
        states = [p["stream"]["sources"] for p in self.positions]
        sources = []
        for i, source in enumerate(self.sources):
            spec = source.spec
            mine = [s[i] for s in states]
            sources.append(
                {
                    "name": spec.name,
                    "files": display_files(source) if not spec.is_dataset else [],
                    "dataset": (spec.dataset + (f":{spec.config}" if spec.config else "")) if spec.is_dataset else None,
                    "weight": spec.weight,
                    "docs_taken": sum(s["docs"] for s in mine) if mine else None,
                    "tokens_taken": sum(s["tokens"] for s in mine) if mine else None,
                    "passes": max(s["pass"] + 1 for s in mine) if mine else None,
                    "streamed": True,
                }
            )
        return {
            "sources": sources,
            "tokenizer": {"vocab_size": len(self.tokenizer), "eos_token_id": self.eos_token_id},
            "block_size": self.block_size,
        }

    def report(self, world_size: int) -> str:
        """What the run streams, for the first lines of its output."""
        w = max([8, *(len(s.spec.name) for s in self.sources), *map(len, self.validation)])
        lines = [f"{'source':<{w}} {'weight':>6} {'shards':>6}  split over {world_size} process(es)"]
        for source, (ds, _) in zip(self.sources, self.opened, strict=True):
            shards = ds.num_shards
            if world_size == 1:
                how = "all of it"
            elif shards % world_size == 0:
                how = f"{shards // world_size} whole shard(s) each"
            else:
                how = f"every process reads all {shards} shard(s) and keeps 1 document in {world_size}"
            weight = "-" if source.spec.weight is None else f"{source.spec.weight:g}"
            lines.append(f"{source.spec.name:<{w}} {weight:>6} {shards:>6}  {how}")
        rule = self.validation_rule
        held = "--validation_files" if "files" in rule else f"the first {rule['first_docs']:,} documents of each source"
        lines.append(f"validation: {held}; shuffled in windows of {self.window:,} documents")
        for name, blocks in self.validation.items():
            lines.append(f"validation   {name}: {len(blocks):,} blocks of {self.block_size}")
        return "\n".join(lines)
