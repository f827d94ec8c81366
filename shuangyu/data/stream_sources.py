"""Sources read as streams, for training on corpora larger than a disk cache (`train_clm.py --streaming`).

A source is opened with `datasets.load_dataset(..., streaming=True)`: a Hub dataset or local dataset folder
(`--dataset_name`), or local files through datasets' json, parquet and text builders (`--train_files`); its
shards are its files. `SourceReader` gives one process its documents, in a seeded order, and can be put back
exactly where it was:

- each pass over a source puts the shards in a new seeded order (the same on every process), then
  `datasets.distributed.split_dataset_by_node` gives each process its part: whole shards when the number of
  shards is a multiple of the number of processes, otherwise every process reads every shard and keeps one
  document in W (each document still goes to exactly one process);
- documents are read in windows of `window` rows (one Arrow batch) and each window is shuffled with a seeded
  permutation. A window is the shuffle buffer: unlike datasets' own buffer, whose content a resumed run
  loses, a window is read again from datasets' `state_dict()` at its start and shuffled the same way, so the
  position (pass, window, documents taken) resumes exactly;
- documents equal to a held-out validation document are skipped (held out by content, not position).

datasets' builders tell a bad line by a row of a chunk, or not at all (bytes that are not UTF-8 reach the text
column; a row without the text field is a null), so when a source fails or holds nulls its files are read again
with `prepare`'s own checks (shuangyu.text.readers), which name the file and line as `prepare` does.
"""

from __future__ import annotations

import codecs
import copy
import gzip
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shuangyu.data.documents import document_ids
from shuangyu.errors import UsageError
from shuangyu.text.readers import ReadOptions, ReadStats, has_text, iter_file_documents
from shuangyu.text.sources import (
    SourceSpec,
    check_weights,
    file_kind,
    parse_dataset_source,
    parse_file_source,
    resolve_files,
)

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}
ENCODE_CHUNK = 256  # documents tokenised at a time (the tokenizer's threads share a batch)


def files_digest(files, earlier: bool = False, sizes: bool = True) -> str:
    """sha256 of the files' paths below the folder they share, and their sizes (checkpoints carry it for every
    process; a corpus may have thousands of shards). Relative paths, because a corpus that moves is the same
    stream: jobs on a cluster often copy it to node-local disk, at another path each time. `earlier`: real paths,
    as checkpoints made before 2026-12-03 carry them. `sizes` False: the paths alone."""
    real = [os.path.realpath(f) for f in files]
    root = os.path.commonpath([os.path.dirname(f) for f in real]) if real and not earlier else ""
    listing = [[os.path.relpath(f, root) if root else f, *([os.path.getsize(f)] if sizes else [])] for f in real]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def text_digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


@dataclass(frozen=True)
class StreamSource:
    """A named source and what it reads: local files (sorted, all of one type) or a dataset."""

    spec: SourceSpec
    files: tuple[str, ...] = ()
    flag: str = "--train_files"

    @property
    def label(self) -> str:
        """The source as the user wrote it, for messages."""
        if self.spec.is_dataset:
            return f"--dataset_name {self.spec.dataset}" + (f":{self.spec.config}" if self.spec.config else "")
        return f"{self.flag} {','.join(self.spec.patterns)}"

    @property
    def builder(self) -> str | None:
        return BUILDERS[file_kind(self.files[0])[0]] if self.files else None

    def fingerprint(self, split: str, share: float, earlier: bool = False) -> dict:
        """What the source reads, for the check that a resumed run streams the same data: its share of the mix
        (weights 7 and 3 mix as 0.7 and 0.3 do), files by relative path and size (a file that grows or a new
        shard changes the stream), a dataset by name, config and split. `earlier`: the raw weight and real paths,
        as checkpoints made before 2026-12-03 carry them."""
        entry = {"name": self.spec.name}
        entry |= {"weight": self.spec.weight} if earlier else {"share": round(share, 12)}
        if self.spec.is_dataset:
            return entry | {"dataset": self.spec.dataset, "config": self.spec.config, "split": split}
        return entry | {"files": len(self.files), "files_sha256": files_digest(self.files, earlier)}

    def open(self, split: str, text_column: str):
        """The whole source as one `datasets.IterableDataset` with only its text column, in stored order; and
        the column's name. A missing column is a UsageError that lists the columns there are."""
        import datasets

        # the json builder logs pyarrow's error for a bad line before raising it; ours names the line instead
        logging.getLogger("datasets.packaged_modules.json.json").setLevel(logging.CRITICAL)
        try:
            if self.spec.is_dataset:
                ds = datasets.load_dataset(self.spec.dataset, self.spec.config, split=split, streaming=True)
            else:
                ds = datasets.load_dataset(self.builder, data_files=list(self.files), split="train", streaming=True)
        except StopIteration:  # datasets' json builder, when every file is empty
            raise self.empty() from None
        except Exception as err:  # connection, missing config or split, unreadable files: datasets raises many types
            raise self.read_error(text_column, err, "could not stream it") from None
        column = "text" if self.builder == "text" else text_column
        columns = ds.column_names
        if columns is None:  # features not known before reading (some json files): look at the first row
            try:
                columns = list(next(iter(ds.take(1)), {}))
            except Exception as err:
                raise self.read_error(column, err) from None
        if not columns and self.files:
            raise self.empty()
        if column not in columns:
            raise UsageError(
                f"{self.label}: no column {column!r} (columns: {', '.join(columns) or 'none'}); set --text_column"
            )
        return ds.select_columns([column]), column

    def empty(self) -> UsageError:
        return UsageError(f"{self.label}: empty (its files hold no rows); give it files with text, or leave it out")

    def bad_line(self, column: str, find_not_utf8: bool = False) -> UsageError | None:
        """The first line of the source's files that `prepare` refuses (not UTF-8, not JSON, no text field), read
        with its checks; None if there is none. `find_not_utf8`: only files that are not UTF-8 are read line by line
        (checking the bytes alone is fast)."""
        if not self.files or self.builder == "parquet":  # pyarrow checks a parquet file's text itself
            return None
        opts = ReadOptions(text_column=column, skip_flag=None)  # --streaming cannot skip a line: see check_streaming
        for path in self.files:
            if find_not_utf8 and is_utf8(path):
                continue
            try:
                for _ in iter_file_documents(Path(path), opts, ReadStats()):
                    pass
            except UsageError as err:
                return err
        return None

    def read_error(self, column: str, err: Exception, what: str = "could not read it") -> UsageError:
        """A datasets or pyarrow error while streaming, as the bad line behind it when there is one."""
        found = self.bad_line(column, find_not_utf8=isinstance(err, UnicodeDecodeError))
        if found is not None:
            return found
        first_line = (str(err).strip().splitlines() or [""])[0]
        return UsageError(f"{self.label}: {what} ({type(err).__name__}: {first_line})")


def is_utf8(path: str) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")()
    with gzip.open(path, "rb") if file_kind(path)[1] else open(path, "rb") as fh:
        try:
            while chunk := fh.read(1 << 24):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return False
    return True


def stream_sources(train_files: list[str], dataset_names: list[str], exclude: list[str]) -> list[StreamSource]:
    """The named sources, checked: every glob matches a file, a source's files are of one type, several
    sources carry weights."""
    specs = [parse_file_source(s, "--train_files") for s in train_files]
    specs += [parse_dataset_source(s, "--dataset_name") for s in dataset_names]
    if not specs:
        raise UsageError("--streaming needs sources: give --train_files and/or --dataset_name")
    check_weights(specs)
    if len(specs) > 1 and specs[0].weight is None:
        raise UsageError(
            "--streaming with several sources: give every source a :WEIGHT (the sizes of streamed sources are not "
            "known in advance, so there is no natural share to keep)"
        )
    sources = []
    for spec in specs:
        if spec.is_dataset:
            sources.append(StreamSource(spec))
            continue
        files = tuple(str(p) for p in resolve_files(spec, exclude, flag="--train_files"))
        kinds = sorted({BUILDERS[file_kind(f)[0]] for f in files})
        if len(kinds) > 1:
            raise UsageError(
                f"--train_files {','.join(spec.patterns)}: mixes {' and '.join(kinds)} files; --streaming reads a "
                "source with one builder, so make each file type its own NAME=GLOB source"
            )
        sources.append(StreamSource(spec, files))
    return sources


def read_first_documents(source: StreamSource, dataset, column: str, count: int) -> list[str]:
    """The first `count` documents with text of a source, in stored order (its held-out validation slice)."""
    texts: list[str] = []
    tables = dataset.with_format("arrow").iter(batch_size=min(count, 1000))
    while (table := next_table(tables, source, column)) is not None:
        texts += [t for t in column_texts(table, column, source) if has_text(t)][: count - len(texts)]
        if len(texts) >= count:
            return texts
    if not texts:
        raise UsageError(
            f"{source.label}: no document with text (empty, or only whitespace); give it text, or leave it out"
        )
    raise UsageError(
        f"{source.label}: holds {len(texts):,} documents, and --validation_docs {count:,} would hold out all of "
        "them for validation: lower --validation_docs, or give --validation_files"
    )


def next_table(tables, source: StreamSource, column: str):
    """The next Arrow table of a stream (None at its end); a bad line in it as a UsageError."""
    try:
        return next(tables, None)
    except UsageError:
        raise
    except Exception as err:  # pyarrow's ArrowInvalid for a line that is not JSON, and the other types datasets raises
        raise source.read_error(column, err) from None


_NULLS_CHECKED: set[tuple[StreamSource, str]] = set()  # sources whose nulls were found to be JSON nulls, not gaps


def column_texts(table, column: str, source: StreamSource) -> list:
    import pyarrow as pa

    values = table.column(column)
    if values.null_count and (source, column) not in _NULLS_CHECKED:
        # a null is a missing field or a JSON null: `prepare` refuses both, naming the line
        if (found := source.bad_line(column)) is not None:
            raise found
        _NULLS_CHECKED.add((source, column))
    if pa.types.is_null(values.type):  # a shard whose text is all null (json): no documents
        return []
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        # json: some line's field is not a string (a number, a list), which prepare's checks name by line and type
        if (found := source.bad_line(column)) is not None:
            raise found
        raise UsageError(f"{source.label}: column {column!r} holds {values.type}, not strings of text")
    try:
        texts = values.to_pylist()
    except UnicodeDecodeError as err:  # pyarrow's json reader lets bytes that are not UTF-8 through
        raise source.read_error(column, err) from None
    if source.builder == "text":
        # datasets' text reader keeps a file's byte-order mark as U+FEFF; prepare drops it (utf-8-sig on a file's
        # first line). Rows do not say which file they began, so a line starting with one anywhere loses it.
        texts = [t[1:] if t and t[0] == "\ufeff" else t for t in texts]
    return texts


class SourceReader:
    """One source's training documents for one process, as token ids ending in the end-of-text id.

    Endless: when the source runs out on this process a new pass begins (shards and windows in a new order).
    `state_dict()` between two documents is everything needed to continue exactly: the pass, the window's
    index and datasets' `state_dict()` at its start, and the documents already taken from it."""

    def __init__(
        self,
        source: StreamSource,
        index: int,
        dataset,
        column: str,
        tokenizer,
        eos_token_id: int,
        *,
        rank: int,
        world_size: int,
        seed: int,
        window: int,
        held_out: frozenset[bytes] = frozenset(),
        say=print,
    ):
        self.source, self.index, self.base, self.column = source, index, dataset, column
        self.tokenizer, self.eos_token_id = tokenizer, eos_token_id
        self.rank, self.world_size, self.seed, self.window = rank, world_size, seed, window
        self.held_out, self.say = held_out, say
        # the position (state_dict): pass, window in the pass, datasets' state at its start, documents taken
        self.pass_, self.window_index, self.window_start, self.taken = 0, 0, None, 0
        self.docs, self.tokens, self.docs_in_pass = 0, 0, 0
        self._dataset = self._batches = self._after = None  # the open pass, its windows, the state after this one
        self._texts: list[str] | None = None  # the current window, shuffled
        self._encoded: list[np.ndarray] = []
        self._encoded_from = 0

    def state_dict(self) -> dict:
        return {
            "pass": self.pass_,
            "window": self.window_index,
            "window_start": self.window_start,
            "taken": self.taken,
            "docs": self.docs,
            "tokens": self.tokens,
            "docs_in_pass": self.docs_in_pass,
        }

    def load_state_dict(self, state: dict) -> None:
        self.pass_, self.window_index, self.window_start = state["pass"], state["window"], state["window_start"]
        self.taken, self.docs, self.tokens = state["taken"], state["docs"], state["tokens"]
        self.docs_in_pass = state["docs_in_pass"]
        self._dataset = self._batches = self._texts = None  # reopened at the next document

    def check_first_pass(self) -> None:
        """Read up to this process's first document (a UsageError if it has none), then return to the start."""
        start = self.state_dict()
        self.next_document()
        self.load_state_dict(start)

    def next_document(self) -> np.ndarray:
        while self._texts is None or self.taken >= len(self._texts):
            if self._texts is not None:  # this window is used up: the next one starts where it ended
                self.window_index, self.window_start, self.taken = self.window_index + 1, self._after, 0
            self._read_window()
        if not self._encoded_from <= self.taken < self._encoded_from + len(self._encoded):
            chunk = self._texts[self.taken : self.taken + ENCODE_CHUNK]
            self._encoded, self._encoded_from = document_ids(self.tokenizer, chunk, self.eos_token_id), self.taken
        ids = self._encoded[self.taken - self._encoded_from]
        self.taken += 1
        self.docs, self.tokens, self.docs_in_pass = self.docs + 1, self.tokens + len(ids), self.docs_in_pass + 1
        return ids

    def no_training_text(self) -> str:
        """Why a source read whole on one process gave no training document."""
        if self.held_out:
            return (
                f"{self.source.label}: every document with text is held out for validation ({len(self.held_out):,} "
                "distinct): lower --validation_docs, or give --validation_files"
            )
        return f"{self.source.label}: no document with text (empty, or only whitespace); give it text, or leave it out"

    def _open_pass(self):
        """This pass's stream for this process: the shards in the pass's seeded order, split by node."""
        import datasets
        from datasets.distributed import split_dataset_by_node

        ds = self.base
        shards = ds.num_shards
        if shards > 1:
            order = np.random.default_rng([self.seed, self.index, self.pass_]).permutation(shards)
            ds = datasets.concatenate_datasets([ds.shard(num_shards=shards, index=int(i)) for i in order])
        if self.world_size > 1:
            ds = split_dataset_by_node(ds, rank=self.rank, world_size=self.world_size)
        return ds.with_format("arrow")

    def _read_window(self) -> None:
        """Read the window at the position (reopening the stream at its start after a resume), or begin the next
        pass when the source is used up on this process."""
        if self._batches is None:
            self._dataset = self._open_pass()
            if self.window_start is not None:  # a copy: datasets keeps the dict it is given
                self._dataset.load_state_dict(copy.deepcopy(self.window_start))
            self._batches = self._dataset.iter(batch_size=self.window)
        table = next_table(self._batches, self.source, self.column)
        if table is None:
            if self.docs_in_pass == 0 and self.pass_ == 0:  # later passes give each process other shards
                if self.world_size == 1:
                    raise UsageError(self.no_training_text())
                raise UsageError(
                    f"{self.source.label}: no training documents for process {self.rank} of {self.world_size} "
                    f"in its part of the {self.base.num_shards} shard(s) (empty, or all held out for validation): "
                    "give the source more shards, or fewer processes"
                )
            self.pass_, self.window_index, self.window_start, self.taken, self.docs_in_pass = (
                self.pass_ + 1, 0, None, 0, 0
            )  # fmt: skip
            self._batches, self._texts = None, None
            self.say(
                f"source {self.source.spec.name}: used up, pass {self.pass_ + 1} begins (seen again in a new order)"
            )
            return
        self._after = self._dataset.state_dict()
        texts = [t for t in column_texts(table, self.column, self.source) if has_text(t)]
        if self.held_out:
            texts = [t for t in texts if text_digest(t) not in self.held_out]
        order = np.random.default_rng([self.seed, self.index, self.rank, self.pass_, self.window_index]).permutation(
            len(texts)
        )
        self._texts = [texts[i] for i in order]
        self._encoded, self._encoded_from = [], 0


def source_names(sources: list[StreamSource]) -> list[str]:
    return [s.spec.name for s in sources]


def display_files(source: StreamSource) -> list[str]:
    """The source's globs by their last part, for the model card (the files may be thousands; the card never
    names the machine's folders)."""
    return [Path(p).name for p in source.spec.patterns]
