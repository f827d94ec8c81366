"""The data pipeline: mixed zh/en text -> tokenized, packed, cached token blocks -> a resumable loader.

    python -m training.data prepare --tokenizer_name outputs/tokenizer --output_dir outputs/data \\
        --files "zh=corpus/zh/*.jsonl:0.5" "en=corpus/en/*.jsonl:0.5" --exclude "*_val.jsonl" \\
        --validation_files "zh=corpus/zh/*_val.jsonl" "en=corpus/en/*_val.jsonl" --block_size 1024

Sources are named as in the tokenizer trainer (tokenizer/sources.py). `prepare` reads every document
(hand-written readers: errors name file:line), tokenises through `datasets.map(batched=True, num_proc=N)`,
appends the `<|endoftext|>` id to each document, holds out whole documents for validation, mixes the
sources in *tokens* to their weights, shuffles documents and packs them end to end into rows of
`block_size` tokens (no padding; the tail shorter than a block is dropped and reported).

On disk (`--output_dir`): `manifest.json`, `train.bin`, `validation.bin`. The `.bin` files are flat
numpy arrays (uint16 when the vocabulary fits, else uint32) read through `np.memmap`: a batch is one
fancy-index into the page cache and one `torch.from_numpy`, which is what makes the loader far faster
than a GPU can eat; Arrow rows would cost a Python object per row or a format conversion per batch.
Arrow (through `datasets`) is used while preparing, where its multiprocess `map` is what we need.

The manifest holds a key: a hash of the tokenizer (its `tokenizer.json` serialisation), the sources
(every file's path, size and mtime), the weights, the validation rule, the seed and the block size. A
second `prepare` with the same key does no work; any change rebuilds. A folder is written to a temporary
sibling and renamed into place, so a failure never leaves a half-written cache.

Training reads it with `PreparedData.load(dir, tokenizer).train_loader(batch_size, accelerator=...)`:
seeded shuffling of blocks per epoch, disjoint blocks per rank, and `state_dict`/`load_state_dict`
(register the loader with `accelerator.register_for_checkpointing`) so a resumed run sees exactly the
batches an uninterrupted one would have. `StreamingBlocks` tokenises and packs on the fly from streamed
datasets, for corpora larger than the disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from tokenizer.sources import (
    ReadOptions,
    ReadStats,
    SourceArguments,
    SourceError,
    SourceSpec,
    check_weights,
    estimated_text_bytes,
    iter_dataset_documents,
    iter_file_documents,
    parse_file_source,
    resolve_files,
)

PROG = "python -m training.data"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TRAIN_FILE = "train.bin"
VALIDATION_FILE = "validation.bin"
EOS_TOKEN = "<|endoftext|>"


@dataclass(kw_only=True)
class PrepareArguments(SourceArguments):
    output_dir: str = field(
        metadata={"help": "Folder for the prepared blocks; also the cache: the same inputs again do no work."}
    )
    tokenizer_name: str = field(
        metadata={"help": "Trained fast tokenizer: a folder (train_bpe.py output) or Hub name."}
    )
    validation_files: list[str] = field(
        default_factory=list,
        metadata={"help": "Explicit held-out text, one source per language: NAME=GLOB[,GLOB...]. Replaces the split."},
    )
    validation_fraction: float = field(
        default=0.005,
        metadata={"help": "Without --validation_files: share of each source's documents held out (by seed)."},
    )
    block_size: int = field(default=1024, metadata={"help": "Tokens per packed row."})
    max_tokens: str | None = field(
        default=None,
        metadata={"help": "Training tokens to take in all, e.g. 500M (default: all the text the mix allows)."},
    )
    num_proc: int = field(default=os.cpu_count() or 1, metadata={"help": "Processes that tokenise."})
    seed: int = field(default=42, metadata={"help": "Seed for the validation split, mixing and document order."})
    skip_bad_lines: bool = field(
        default=False, metadata={"help": "Skip (and count) lines that are not UTF-8 or not JSON instead of stopping."}
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Replace an --output_dir that was prepared with another tokenizer."}
    )


# ---------------------------------------------------------------------------------------------------------
# Tokenizer identity and token storage


def carries_own_code(folder: str | Path) -> bool:
    """A local model folder saved with its code (config.json with auto_map), e.g. a checkpoint's model/.
    AutoTokenizer reads config.json too, and would ask whether to trust that code."""
    config = Path(folder) / "config.json"
    return config.is_file() and "auto_map" in json.loads(config.read_text(encoding="utf-8"))


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=carries_own_code(name))
    except Exception as err:  # OSError, ValueError, ... depending on what is wrong with the folder or name
        raise SourceError(f"--tokenizer_name {name!r}: could not load it ({type(err).__name__}: {err})") from None
    if getattr(tok, "backend_tokenizer", None) is None:
        raise SourceError(f"--tokenizer_name {name!r}: not a fast tokenizer; use the folder train_bpe.py writes")
    if tok.convert_tokens_to_ids(EOS_TOKEN) in (None, tok.unk_token_id):
        raise SourceError(f"--tokenizer_name {name!r}: has no {EOS_TOKEN} token to end documents with")
    return tok


def tokenizer_fingerprint(tok) -> str:
    """sha256 of the tokenizer's tokenizer.json serialisation: it is what maps text to ids, and hashing the
    serialisation rather than a file makes a folder and the same tokenizer from the Hub hash alike."""
    return hashlib.sha256(tok.backend_tokenizer.to_str().encode("utf-8")).hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _file_stat(path: str | Path) -> list:
    st = os.stat(path)
    return [os.path.realpath(path), st.st_size, st.st_mtime_ns]


def _dataset_fingerprint(spec: SourceSpec, split: str) -> dict:
    """A local dataset folder is keyed by its files; a Hub dataset only by name (its revision is not known
    offline), so re-prepare by hand, or pass a new --output_dir, when a Hub dataset changes."""
    entry = {"dataset": spec.dataset, "config": spec.config, "split": split}
    if os.path.isdir(spec.dataset):
        entry["files"] = [
            _file_stat(os.path.join(root, f)) for root, _, names in sorted(os.walk(spec.dataset)) for f in sorted(names)
        ]
    return entry


# ---------------------------------------------------------------------------------------------------------
# Planning: every check that needs no text, and the cache key


@dataclass
class Inputs:
    """What `prepare` reads: the training sources, then the explicit validation sources."""

    sources: list[SourceSpec]
    files: list[list[Path]]
    validation: list[SourceSpec]
    validation_files: list[list[Path]]
    opts: ReadOptions
    max_tokens: int | None

    @property
    def all(self) -> list[tuple[SourceSpec, list[Path]]]:
        return list(zip(self.sources + self.validation, self.files + self.validation_files, strict=True))


def plan_inputs(args: PrepareArguments) -> Inputs:
    from tokenizer.train_bpe import parse_size

    if args.block_size < 2:
        raise SourceError(f"--block_size {args.block_size} must be at least 2")
    if not 0 <= args.validation_fraction < 1:
        raise SourceError(f"--validation_fraction {args.validation_fraction} must be in [0, 1)")
    if args.num_proc < 1:
        raise SourceError(f"--num_proc {args.num_proc} must be at least 1")
    sources, files = args.resolve_sources()
    validation = [parse_file_source(s, "--validation_files") for s in args.validation_files]
    for spec in validation:
        if spec.weight is not None:
            raise SourceError(f"--validation_files {spec.name!r}: weights do not apply to held-out text")
    names = [s.name for s in validation]
    if len(set(names)) != len(names):
        raise SourceError("--validation_files: repeated names; label each NAME=GLOB")
    validation_files = [resolve_files(s, flag="--validation_files") for s in validation]
    opts = ReadOptions(
        text_column=args.text_column,
        document_per_file=args.document_per_file,
        on_decode_error="skip" if args.skip_bad_lines else "error",
        skip_flag="--skip_bad_lines",
    )
    max_tokens = parse_size(args.max_tokens, "--max_tokens") if args.max_tokens else None
    return Inputs(sources, files, validation, validation_files, opts, max_tokens)


def cache_key(args: PrepareArguments, inputs: Inputs, tokenizer_sha: str) -> str:
    """Everything the prepared blocks depend on; files by size and mtime (hashing the content of a
    corpus would cost about as much as reading it)."""

    def describe(spec: SourceSpec, files: list[Path]) -> dict:
        if spec.is_dataset:
            return {"name": spec.name, "weight": spec.weight, **_dataset_fingerprint(spec, args.dataset_split)}
        return {"name": spec.name, "weight": spec.weight, "files": [_file_stat(p) for p in files]}

    key = {
        "format": FORMAT_VERSION,
        "tokenizer": tokenizer_sha,
        "sources": [describe(s, f) for s, f in zip(inputs.sources, inputs.files, strict=True)],
        "validation_files": [describe(s, f) for s, f in zip(inputs.validation, inputs.validation_files, strict=True)],
        "validation_fraction": 0.0 if inputs.validation else args.validation_fraction,
        "text_column": args.text_column,
        "document_per_file": args.document_per_file,
        "skip_bad_lines": args.skip_bad_lines,
        "max_tokens": inputs.max_tokens,
        "block_size": args.block_size,
        "seed": args.seed,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Reading and tokenising


def _read_documents(inputs: list, opts: ReadOptions, split: str, seed: int, stats: list[ReadStats]):
    """Rows {text, source} for `Dataset.from_generator`. It runs in this process (no num_proc) so that
    errors keep their file:line message and skipped lines are counted; tokenising is the costly part and
    that runs on many processes.

    Local sources are interleaved in proportion to their (estimated) text size: `map(num_proc=N)` gives each
    process a contiguous 1/N of the rows, and source after source would hand one process all the short
    Chinese reviews and another all the long English books. Datasets (size unknown) come last."""
    sized, streamed = [], []
    for index, (spec, files) in enumerate(inputs):
        if spec.is_dataset:
            streamed.append((index, iter_dataset_documents(spec, split, opts, seed)))
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
    encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
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


def _unwrap_source_error(err: BaseException) -> SourceError | None:
    seen = err
    while seen is not None:
        if isinstance(seen, SourceError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


# ---------------------------------------------------------------------------------------------------------
# Mixing in tokens, and packing


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
            raise SourceError(f"source #{i + 1} yields no training tokens (all of it held out, or empty)")
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


def _flat_tokens(column) -> tuple[np.ndarray, np.ndarray]:
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


# ---------------------------------------------------------------------------------------------------------
# prepare


@dataclass
class PreparedData:
    """A prepared folder: its manifest, and datasets and loaders over its blocks."""

    path: Path
    manifest: dict
    reused: bool = False  # prepare found this folder up to date and did no work

    @classmethod
    def load(cls, path: str | Path, tokenizer=None) -> PreparedData:
        """Open a prepared folder; with `tokenizer`, check that the blocks were made with it."""
        path = Path(path)
        manifest = read_manifest(path)
        if manifest is None:
            raise SourceError(f"{path}: not a prepared data folder (no {MANIFEST}); run `{PROG} prepare` first")
        data = cls(path, manifest)
        if tokenizer is not None:
            data.check_tokenizer(tokenizer)
        return data

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def block_size(self) -> int:
        return self.manifest["block_size"]

    @property
    def eos_token_id(self) -> int:
        return self.manifest["tokenizer"]["eos_token_id"]

    def check_tokenizer(self, tokenizer) -> None:
        theirs = self.manifest["tokenizer"]
        sha = tokenizer_fingerprint(tokenizer)
        if sha != theirs["sha256"]:
            raise SourceError(
                f"{self.path}: prepared with tokenizer {theirs['name']} (vocab {theirs['vocab_size']:,}, sha256 "
                f"{theirs['sha256'][:12]}), not this one (vocab {len(tokenizer):,}, sha256 {sha[:12]}): "
                f"re-run prepare with this --tokenizer_name, or train with the tokenizer the data was made with"
            )

    def check_vocab_size(self, vocab_size: int) -> None:
        """A model must have an embedding row for every id in the blocks."""
        needed = self.manifest["tokenizer"]["vocab_size"]
        if vocab_size < needed:
            raise SourceError(
                f"{self.path}: the blocks hold ids up to {needed - 1} (tokenizer vocab {needed:,}) but the model's "
                f"vocab_size is {vocab_size:,}: set the model's vocab_size to at least {needed:,}"
            )

    def train_dataset(self) -> PackedBlocks:
        train = self.manifest["train"]
        return PackedBlocks(self.path / TRAIN_FILE, self.manifest["dtype"], self.block_size, 0, train["blocks"])

    def validation_datasets(self) -> dict[str, PackedBlocks]:
        """One dataset per validation source (language), for a loss per language. Wrap each in a DataLoader
        and `accelerator.prepare` it: accelerate's even batches and `gather_for_metrics` suit evaluation."""
        return {
            name: PackedBlocks(
                self.path / VALIDATION_FILE, self.manifest["dtype"], self.block_size, v["first_block"], v["blocks"]
            )
            for name, v in self.manifest["validation"].items()
            if v["blocks"] > 0
        }

    def validation_loaders(self, batch_size: int) -> dict[str, torch.utils.data.DataLoader]:
        """A DataLoader per validation source, in order, of `{"input_ids": [batch, block]}`; pass each to
        `accelerator.prepare` to split it over processes."""
        return {
            name: torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=_Collate(None))
            for name, ds in self.validation_datasets().items()
        }

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
    ) -> BlockLoader:
        """The training loader for this process. Ranks come from `accelerator` (or torch.distributed, or the
        arguments). Do not pass it to `accelerator.prepare` (that would shard it again); move batches to the
        device yourself and `accelerator.register_for_checkpointing(loader)` for exact resume."""
        if rank is None or world_size is None:
            if accelerator is not None:
                rank, world_size = accelerator.process_index, accelerator.num_processes
            elif torch.distributed.is_available() and torch.distributed.is_initialized():
                rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
            else:
                rank, world_size = 0, 1
        return BlockLoader(
            self.train_dataset(),
            batch_size,
            seed=seed,
            rank=rank,
            world_size=world_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            data_key=self.key,
            eos_token_id=self.eos_token_id if position_ids else None,
        )


def read_manifest(path: Path) -> dict | None:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as err:
        raise SourceError(f"{path / MANIFEST}: unreadable ({err}); delete {path} and prepare again") from None
    if manifest.get("format") != FORMAT_VERSION:
        return None
    return manifest


def _check_existing(out: Path, tokenizer_sha: str, overwrite: bool) -> dict | None:
    """The manifest of an existing --output_dir, after refusing to replace what the user may need."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise SourceError(f"--output_dir {out} is a file, not a folder")
    manifest = read_manifest(out)
    if manifest is None:
        if any(out.iterdir()) and not overwrite:
            raise SourceError(f"--output_dir {out} exists and holds no prepared data; pass --overwrite to replace it")
        return None
    if manifest["tokenizer"]["sha256"] != tokenizer_sha and not overwrite:
        theirs = manifest["tokenizer"]
        raise SourceError(
            f"--output_dir {out} holds blocks of another tokenizer ({theirs['name']}, vocab {theirs['vocab_size']:,}); "
            "pass --overwrite to replace them, or choose another --output_dir"
        )
    return manifest


def prepare(args: PrepareArguments, show_progress: bool = True) -> PreparedData:
    """Tokenise, split, mix and pack the sources into `args.output_dir`, unless it is already up to date."""
    import datasets

    inputs = plan_inputs(args)
    tok = load_tokenizer(args.tokenizer_name)
    sha = tokenizer_fingerprint(tok)
    key = cache_key(args, inputs, sha)
    out = Path(args.output_dir)
    existing = _check_existing(out, sha, args.overwrite)
    if existing is not None and existing["key"] == key:
        return PreparedData(out, existing, reused=True)

    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if not show_progress:
        datasets.disable_progress_bars()
    try:
        tmp.mkdir()
        arrow_dir = tmp / "arrow"
        vocab_size = len(tok)
        dtype = token_dtype(vocab_size)
        eos_id = tok.convert_tokens_to_ids(EOS_TOKEN)
        stats = [ReadStats() for _ in inputs.all]
        try:
            texts = datasets.Dataset.from_generator(
                _read_documents,
                # tuples, not lists: datasets splits list arguments into shards, one generator call each
                gen_kwargs={
                    "inputs": tuple(inputs.all),
                    "opts": inputs.opts,
                    "split": args.dataset_split,
                    "seed": args.seed,
                    "stats": tuple(stats),
                },
                features=datasets.Features({"text": datasets.Value("string"), "source": datasets.Value("int16")}),
                cache_dir=str(arrow_dir),
                fingerprint=f"{key[:32]}-text",  # our key already names the inputs; skip datasets' hashing of them
            )
        except Exception as err:  # datasets wraps what the generator raised
            source_error = _unwrap_source_error(err)
            if source_error is None:
                raise
            raise source_error from None
        read_time = time.perf_counter() - start
        fraction = 0.0 if inputs.validation else args.validation_fraction
        tokenized = texts.with_format("arrow").map(
            tokenize_documents,
            batched=True,
            batch_size=1000,
            num_proc=args.num_proc if args.num_proc > 1 else None,
            remove_columns=["text"],
            fn_kwargs={
                "tokenizer": tok,
                "eos_token_id": eos_id,
                "seed": args.seed,
                "fraction": fraction,
                "first_validation": len(inputs.sources),
                "dtype": dtype.name,
            },
            features=datasets.Features(
                {
                    "source": datasets.Value("int16"),
                    "input_ids": datasets.List(datasets.Value(dtype.name)),
                    "held_out": datasets.Value("bool"),
                }
            ),
            new_fingerprint=f"{key[:32]}-tokens",
            desc="tokenizing",
        )
        table = tokenized.data
        doc_source = table.column("source").to_numpy().astype(np.int64)
        doc_held = table.column("held_out").to_numpy(zero_copy_only=False)
        offsets, values = _flat_tokens(table.column("input_ids"))
        doc_tokens = np.diff(offsets)
        tokenize_time = time.perf_counter() - start - read_time

        n_train = len(inputs.sources)
        is_train = ~doc_held
        weights = [s.weight for s in inputs.sources] if inputs.sources[0].weight is not None else None
        train_docs = np.flatnonzero(is_train)
        order, mix = mix_documents(
            doc_source[train_docs], doc_tokens[train_docs], n_train, weights, inputs.max_tokens, args.seed
        )
        order = train_docs[order]
        with open(tmp / TRAIN_FILE, "wb") as fh:
            train_blocks, dropped = write_packed(order, offsets, values, args.block_size, fh)
        if train_blocks == 0:
            taken = int(doc_tokens[order].sum())
            raise SourceError(
                f"the corpus yields {taken:,} training tokens, fewer than one block of --block_size "
                f"{args.block_size}: add text or lower --block_size"
            )

        validation, first_block = {}, 0
        groups = (
            [(s.name, n_train + i) for i, s in enumerate(inputs.validation)]
            if inputs.validation
            else [(s.name, i) for i, s in enumerate(inputs.sources)]
        )
        with open(tmp / VALIDATION_FILE, "wb") as fh:
            for name, src in groups:
                docs = np.flatnonzero(doc_held & (doc_source == src))
                blocks, val_dropped = write_packed(docs, offsets, values, args.block_size, fh)
                validation[name] = {
                    "docs": len(docs),
                    "tokens": int(doc_tokens[docs].sum()),
                    "first_block": first_block,
                    "blocks": blocks,
                    "tokens_dropped": val_dropped,
                }
                first_block += blocks
        del texts, tokenized, table, values  # release the Arrow memory maps before deleting their files
        shutil.rmtree(arrow_dir, ignore_errors=True)

        sources = []
        for i, (spec, plan) in enumerate(zip(inputs.sources, mix, strict=True)):
            sources.append(
                {
                    "name": spec.name,
                    "weight": spec.weight,
                    "files": [str(p) for p in inputs.files[i]],
                    "dataset": spec.dataset,
                    "config": spec.config,
                    "docs": stats[i].docs,
                    "text_bytes": stats[i].bytes,
                    "skipped_lines": stats[i].skipped_lines,
                    "validation_docs": int(np.count_nonzero(doc_held & (doc_source == i))),
                    **plan,
                }
            )
        total_time = time.perf_counter() - start
        text_bytes = sum(s.bytes for s in stats)
        manifest = {
            "format": FORMAT_VERSION,
            "key": key,
            "tokenizer": {
                "name": args.tokenizer_name,
                "sha256": sha,
                "vocab_size": vocab_size,
                "eos_token_id": eos_id,
            },
            "dtype": dtype.name,
            "block_size": args.block_size,
            "seed": args.seed,
            "train": {
                "file": TRAIN_FILE,
                "blocks": train_blocks,
                "tokens": train_blocks * args.block_size,
                "tokens_dropped": dropped,
            },
            "sources": sources,
            "validation": validation,
            "validation_rule": "files" if inputs.validation else f"hash of text < {fraction} (seed {args.seed})",
            "skipped_lines": sum(s.skipped_lines for s in stats),
            "text_bytes": text_bytes,
            "time_s": {"read": round(read_time, 2), "tokenize": round(tokenize_time, 2), "total": round(total_time, 2)},
            "text_mb_per_s": round(text_bytes / 1e6 / max(total_time, 1e-9), 3),
            "arguments": asdict(args),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        if not show_progress:
            datasets.enable_progress_bars()
    return PreparedData(out, manifest)


# ---------------------------------------------------------------------------------------------------------
# The loader


class PackedBlocks(torch.utils.data.Dataset):
    """Rows `[first, first + count)` of a flat token file, as int64 tensors of `block_size` tokens."""

    def __init__(self, path: str | Path, dtype: str, block_size: int, first: int, count: int):
        self.path, self.dtype, self.block_size, self.first, self.count = str(path), dtype, block_size, first, count
        self._blocks = None

    def blocks(self) -> np.ndarray:
        # opened lazily, and per process: a pickled memmap would be copied into the DataLoader's workers
        if self._blocks is None:
            flat = np.memmap(self.path, dtype=self.dtype, mode="r")
            self._blocks = flat.reshape(-1, self.block_size)[self.first : self.first + self.count]
        return self._blocks

    def __getstate__(self):
        return {**self.__dict__, "_blocks": None}

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.blocks()[index].astype(np.int64))

    def __getitems__(self, indices: list[int]) -> torch.Tensor:
        # a whole batch in one fancy index: DataLoader calls this instead of __getitem__ per row
        return torch.from_numpy(self.blocks()[np.asarray(indices)].astype(np.int64))


def document_position_ids(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Positions that restart after every end-of-text, for attention limited to each packed document."""
    seq = input_ids.shape[-1]
    index = torch.arange(seq, device=input_ids.device).expand_as(input_ids)
    starts = torch.zeros_like(input_ids, dtype=torch.bool)
    starts[..., 1:] = input_ids[..., :-1] == eos_token_id
    last_start = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=-1).values
    return index - last_start


class _Collate:
    """Batches arrive as one tensor from `PackedBlocks.__getitems__`; name it (and add position ids)."""

    def __init__(self, eos_token_id: int | None):
        self.eos_token_id = eos_token_id

    def __call__(self, input_ids: torch.Tensor) -> dict:
        batch = {"input_ids": input_ids}
        if self.eos_token_id is not None:
            batch["position_ids"] = document_position_ids(input_ids, self.eos_token_id)
        return batch


class BlockSampler(torch.utils.data.Sampler):
    """Batches of block indices for one rank, over a seeded permutation per epoch.

    Global batch k of an epoch is positions [k*W*B, (k+1)*W*B) of the permutation, and rank r takes its
    r-th slice of B: ranks are disjoint, together they see every block once per epoch except the last
    `num_blocks % (W*B)` of the permutation (a different few each epoch), so every step has full batches on
    every rank, which DDP's lock-step and compiled static shapes need. `start_block` skips the blocks
    already consumed (set by BlockLoader on resume) without touching the data.
    """

    def __init__(self, num_blocks: int, batch_size: int, *, seed: int, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.num_blocks, self.batch_size, self.seed, self.rank, self.world_size = (
            num_blocks,
            batch_size,
            seed,
            rank,
            world_size,
        )
        self.global_batch = batch_size * world_size
        self.batches_per_epoch = num_blocks // self.global_batch
        if self.batches_per_epoch == 0:
            raise SourceError(
                f"{num_blocks} training blocks cannot fill one global batch of {self.global_batch} "
                f"(batch size {batch_size} x {world_size} processes): lower the batch size or add data"
            )
        self.epoch = 0
        self.start_block = 0

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_blocks)

    def __iter__(self) -> Iterator[list[int]]:
        perm = self.permutation(self.epoch)
        used = perm[: self.batches_per_epoch * self.global_batch].reshape(self.batches_per_epoch, self.world_size, -1)
        for k in range(self.start_block // self.global_batch, self.batches_per_epoch):
            yield used[k, self.rank].tolist()

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_block // self.global_batch


class BlockLoader:
    """A DataLoader over packed blocks whose position survives checkpoints.

    The position counts the batches *delivered to the training loop* (not those the DataLoader's workers
    prefetched), so `state_dict()` taken between steps resumes at exactly the next batch. Each `iter()`
    runs the rest of the current epoch; the next one starts a new permutation. The state is the same on
    every rank (accelerate saves custom state from the main process only).
    """

    def __init__(
        self,
        dataset: PackedBlocks,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
        data_key: str | None = None,
        eos_token_id: int | None = None,
    ):
        self.dataset = dataset
        self.data_key = data_key
        self.sampler = BlockSampler(len(dataset), batch_size, seed=seed, rank=rank, world_size=world_size)
        self.epoch = 0
        self.blocks_seen = 0  # global blocks delivered this epoch, over all ranks
        self.dataloader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=pin_memory,
            collate_fn=_Collate(eos_token_id),
            persistent_workers=False,
        )

    @property
    def batch_size(self) -> int:
        return self.sampler.batch_size

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return self.sampler.batches_per_epoch

    def __iter__(self) -> Iterator[dict]:
        self.sampler.epoch, self.sampler.start_block = self.epoch, self.blocks_seen
        for batch in self.dataloader:
            self.blocks_seen += self.sampler.global_batch
            yield batch
        self.epoch += 1
        self.blocks_seen = 0

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "blocks_seen": self.blocks_seen,
            "seed": self.sampler.seed,
            "num_blocks": self.sampler.num_blocks,
            "data_key": self.data_key,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["num_blocks"] != self.sampler.num_blocks or state.get("data_key") != self.data_key:
            raise SourceError(
                f"the checkpoint's data position is for other data ({state['num_blocks']} blocks, key "
                f"{str(state.get('data_key'))[:12]}), not these ({self.sampler.num_blocks} blocks, key "
                f"{str(self.data_key)[:12]}): resume with the prepared folder the run started with"
            )
        if state["seed"] != self.sampler.seed:
            raise SourceError(f"the checkpoint's data seed is {state['seed']}, not {self.sampler.seed}: resume with it")
        if state["blocks_seen"] % self.sampler.global_batch:
            raise SourceError(
                f"the checkpoint stopped after {state['blocks_seen']} blocks of this epoch, not a multiple of the "
                f"global batch {self.sampler.global_batch}: resume with the global batch size it was saved with"
            )
        self.epoch, self.blocks_seen = state["epoch"], state["blocks_seen"]


# ---------------------------------------------------------------------------------------------------------
# Streaming: tokenise and pack on the fly


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
            raise SourceError("streaming several sources: give every source a :WEIGHT")
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
            raise SourceError(f"source {spec.name!r}: could not stream it ({type(err).__name__}: {err})") from None
        columns = ds.column_names
        if columns is not None and self.text_column not in columns:
            raise SourceError(
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
                raise SourceError(f"source {self.sources[index].name!r} yields no documents for this process")
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
        raise SourceError(f"no column {column!r} (columns: {', '.join(batch)}); set --text_column")
    texts = [t or "" for t in batch[column]]
    encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    return {"input_ids": [enc.ids + [eos_token_id] for enc, t in zip(encodings, texts, strict=True) if t]}


# ---------------------------------------------------------------------------------------------------------
# The command line


def format_report(data: PreparedData) -> str:
    m = data.manifest
    w = max([8, *(len(s["name"]) for s in m["sources"]), *map(len, m["validation"])])
    lines = [
        "",
        f"{'source':<{w}} {'docs':>9} {'tokens':>13} {'taken':>13} {'passes':>6} {'asked':>6} {'share':>6} {'skipped':>7}",
    ]
    for s in m["sources"]:
        asked = "-" if s["share_asked"] is None else f"{s['share_asked']:.1%}"
        lines.append(
            f"{s['name']:<{w}} {s['docs']:>9,} {s['tokens_available']:>13,} {s['tokens_taken']:>13,} "
            f"{s['passes']:>6} {asked:>6} {s['share']:>6.1%} {s['skipped_lines']:>7}"
        )
    t = m["train"]
    lines += [
        "",
        f"train        {t['blocks']:,} blocks of {m['block_size']} = {t['tokens']:,} tokens "
        f"({t['tokens_dropped']:,} dropped at the end), {m['dtype']}",
    ]
    for name, v in m["validation"].items():
        lines.append(f"validation   {name}: {v['docs']:,} docs, {v['tokens']:,} tokens, {v['blocks']:,} blocks")
    lines.append(
        f"time         {m['time_s']['total']:.1f} s ({m['text_bytes'] / 1e6:,.1f} MB of text, {m['text_mb_per_s']:.2f} MB/s)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "prepare":
        print(f"usage: {PROG} prepare --tokenizer_name DIR --output_dir DIR --files ... (see --help)", file=sys.stderr)
        return 2
    parser = HfArgumentParser(PrepareArguments, prog=f"{PROG} prepare", description=__doc__.split("\n\n")[0])
    (args,) = parser.parse_args_into_dataclasses(args=argv[1:])
    try:
        data = prepare(args)
    except SourceError as err:
        print(f"{PROG} prepare: error: {err}", file=sys.stderr)
        return 2
    if data.reused:
        print(f"{data.path} is up to date (same tokenizer, sources, weights and block size): nothing to do")
    print(format_report(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
