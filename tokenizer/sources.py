"""Text sources: how users name them, and how documents are read from them.

One way of naming sources serves every tool that reads raw text (the tokenizer trainer, the data
pipeline):

    [NAME=]GLOB[,GLOB...][:WEIGHT]      local files, e.g.  zh=corpus/zh/*.jsonl:0.5
    [NAME=]DATASET[:CONFIG][:WEIGHT]    a Hub dataset (or a local dataset folder), streamed

A trailing `:WEIGHT` is a positive number; NAME labels the source in reports (default: the spec).
Files may be `.txt` (a document per line, or per file), `.jsonl`/`.json` (field `text_column`) or
`.parquet`, each optionally gzip-compressed (`.gz`).

The file readers are written by hand rather than through `datasets.load_dataset(..., streaming=True)`
because users need errors that name the file and line (bad UTF-8, a line that is not JSON, a missing
field) and a way to skip bad lines and count them; the Hub path does use `datasets`.
"""

from __future__ import annotations

import glob
import gzip
import json
import math
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
_NAME_RE = re.compile(r"^([A-Za-z0-9_.\-]+)=(.+)$")


SHORTFALL_OK = 0.95  # a sampled source may end this close below its byte budget: its share is reported


class SourceError(ValueError):
    """Bad input named by the user: the message names the file or flag and what to do."""


@dataclass(kw_only=True)
class SourceArguments:
    """The command-line flags that name text sources, shared by every tool that reads raw text."""

    files: list[str] = field(
        default_factory=list,
        metadata={"help": "Sources of local files: [NAME=]GLOB[,GLOB...][:WEIGHT], e.g. 'zh=data/zh/*.jsonl:0.5'."},
    )
    dataset: list[str] = field(
        default_factory=list,
        metadata={"help": "Hub datasets (or local dataset folders), streamed: [NAME=]DATASET[:CONFIG][:WEIGHT]."},
    )
    dataset_split: str = field(default="train", metadata={"help": "Split read from each --dataset."})
    exclude: list[str] = field(
        default_factory=list, metadata={"help": "Globs of files to leave out of --files, e.g. '*_val.jsonl'."}
    )
    text_column: str = field(default="text", metadata={"help": "Field holding the text in json/jsonl/parquet."})
    document_per_file: bool = field(
        default=False, metadata={"help": "Treat each .txt file as one document (default: one per line)."}
    )

    def resolve_sources(self) -> tuple[list[SourceSpec], list[list[Path]]]:
        """The named sources, checked, with each one's files (none for a dataset)."""
        specs = [parse_file_source(s) for s in self.files] + [parse_dataset_source(s) for s in self.dataset]
        if not specs:
            raise SourceError("no training text: give --files and/or --dataset")
        check_weights(specs)
        return specs, [[] if s.is_dataset else resolve_files(s, self.exclude) for s in specs]


@dataclass(frozen=True)
class SourceSpec:
    name: str
    weight: float | None = None
    patterns: tuple[str, ...] = ()  # local files
    dataset: str | None = None  # Hub dataset name or local dataset folder
    config: str | None = None

    @property
    def is_dataset(self) -> bool:
        return self.dataset is not None


def _split_weight(spec: str, flag: str) -> tuple[str, float | None]:
    head, sep, tail = spec.rpartition(":")
    if not sep:
        return spec, None
    try:
        weight = float(tail)
    except ValueError:
        return spec, None
    if not math.isfinite(weight) or weight <= 0:
        raise SourceError(f"{flag} {spec!r}: weight {tail!r} must be a positive number")
    return head, weight


def _split_name(spec: str) -> tuple[str | None, str]:
    match = _NAME_RE.match(spec)
    return (match.group(1), match.group(2)) if match else (None, spec)


def parse_file_source(spec: str, flag: str = "--files") -> SourceSpec:
    name, rest = _split_name(spec)
    rest, weight = _split_weight(rest, flag)
    patterns = tuple(p for p in rest.split(",") if p)
    if not patterns:
        raise SourceError(f"{flag} {spec!r}: no path or glob given")
    return SourceSpec(name=name or rest, weight=weight, patterns=patterns)


def parse_dataset_source(spec: str, flag: str = "--dataset") -> SourceSpec:
    name, rest = _split_name(spec)
    rest, weight = _split_weight(rest, flag)
    dataset, _, config = rest.partition(":")
    if not dataset:
        raise SourceError(f"{flag} {spec!r}: no dataset name given")
    return SourceSpec(name=name or rest, weight=weight, dataset=dataset, config=config or None)


def check_weights(sources: list[SourceSpec]) -> None:
    weighted = [s.weight is not None for s in sources]
    if any(weighted) and not all(weighted):
        missing = ", ".join(s.name for s in sources if s.weight is None)
        raise SourceError(f"give a :WEIGHT to every source or to none (missing on: {missing})")
    names = [s.name for s in sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SourceError(f"source names must be unique, repeated: {', '.join(dupes)} (label them NAME=...)")


def file_kind(path: str | Path) -> tuple[str, bool]:
    """('.jsonl', True) for data.jsonl.gz; raises for an unsupported type."""
    name = str(path).lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    for suffix in TEXT_SUFFIXES:
        if name.endswith(suffix):
            return suffix, gz
    raise SourceError(f"{path}: unsupported file type; use {', '.join(TEXT_SUFFIXES)} (optionally .gz)")


def resolve_files(spec: SourceSpec, exclude: list[str] | tuple[str, ...] = (), flag: str = "--files") -> list[Path]:
    """Expand a source's globs to a sorted, de-duplicated file list; every glob must match a file."""
    found: dict[str, Path] = {}
    for pattern in spec.patterns:
        expanded = os.path.expanduser(pattern)
        matches = sorted(glob.glob(expanded, recursive=True)) if glob.has_magic(expanded) else [expanded]
        matches = [m for m in matches if os.path.isfile(m) and not any(fnmatch(m, ex) for ex in exclude)]
        if not matches:
            raise SourceError(f"{flag} {pattern!r}: no file matches (after --exclude)")
        for match in matches:
            file_kind(match)
            found.setdefault(os.path.realpath(match), Path(match))
    return sorted(found.values())


@dataclass
class ReadStats:
    """What reading a source saw; shared by all files of the source."""

    docs: int = 0
    bytes: int = 0
    skipped_lines: int = 0
    passes: int = 0  # passes begun over the source (more than 1: upsampled to meet its weight)
    files: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class ReadOptions:
    text_column: str = "text"
    document_per_file: bool = False
    on_decode_error: str = "error"  # or "skip"
    skip_flag: str = "--on_decode_error skip"  # the calling tool's flag that skips bad lines, named in errors


def _open_binary(path: Path, gz: bool):
    return gzip.open(path, "rb") if gz else open(path, "rb")


def _decode_line(raw: bytes, path: Path, lineno: int, opts: ReadOptions, stats: ReadStats) -> str | None:
    try:
        # utf-8-sig on the first line drops a byte-order mark that some editors write
        return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as err:
        if opts.on_decode_error == "skip":
            stats.skipped_lines += 1
            return None
        raise SourceError(
            f"{path}:{lineno}: not valid UTF-8 ({err.reason} at byte {err.start}); "
            f"fix the file or pass {opts.skip_flag}"
        ) from None


def _decode_whole(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        lineno = data.count(b"\n", 0, err.start) + 1
        raise SourceError(f"{path}:{lineno}: not valid UTF-8 ({err.reason}); fix the file") from None


def _text_field(record: object, path: Path, where: str, column: str) -> str | None:
    if not isinstance(record, dict):
        raise SourceError(f"{where}: expected a JSON object with field {column!r}, got {type(record).__name__}")
    if column not in record:
        fields = ", ".join(map(str, record)) or "none"
        raise SourceError(f"{where}: no field {column!r} (fields: {fields}); set --text_column")
    value = record[column]
    if value is None:
        return None
    if not isinstance(value, str):
        raise SourceError(f"{where}: field {column!r} is {type(value).__name__}, not a string")
    return value


def iter_file_documents(path: Path, opts: ReadOptions, stats: ReadStats, keep=lambda: True) -> Iterator[str]:
    """Yield the documents of one file, lazily. `keep()` is asked before a line is decoded or parsed, so
    that sampling a small share of a large file skips most of the work (skipped lines are not checked)."""
    suffix, gz = file_kind(path)
    stats.files.add(str(path))
    if suffix == ".parquet":
        yield from _iter_parquet(path, opts, keep)
        return
    with _open_binary(path, gz) as fh:
        if opts.document_per_file and suffix == ".txt":
            if keep():
                text = _decode_whole(fh.read(), path)
                if text:
                    yield text
            return
        if suffix == ".json":
            head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
            fh.seek(0)
            if head.startswith(b"["):  # a JSON array of records: must be parsed whole
                yield from _iter_json_array(path, fh.read(), opts, keep)
                return
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip() or not keep():
                continue
            line = _decode_line(raw, path, lineno, opts, stats)
            if line is None:
                continue
            if suffix == ".txt":
                text = line.rstrip("\r\n")
            else:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    if opts.on_decode_error == "skip":
                        stats.skipped_lines += 1
                        continue
                    raise SourceError(
                        f"{path}:{lineno}: not valid JSON ({err.msg}); fix or remove the line, or pass {opts.skip_flag}"
                    ) from None
                text = _text_field(record, path, f"{path}:{lineno}", opts.text_column)
            if text:
                yield text


def _iter_json_array(path: Path, data: bytes, opts: ReadOptions, keep) -> Iterator[str]:
    try:
        records = json.loads(_decode_whole(data, path))
    except json.JSONDecodeError as err:
        raise SourceError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    for i, record in enumerate(records):
        if keep():
            text = _text_field(record, path, f"{path}: record {i}", opts.text_column)
            if text:
                yield text


def _iter_parquet(path: Path, opts: ReadOptions, keep) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a file that is not parquet
        raise SourceError(f"{path}: not a readable parquet file ({err})") from None
    names = pf.schema_arrow.names
    if opts.text_column not in names:
        raise SourceError(f"{path}: no column {opts.text_column!r} (columns: {', '.join(names)}); set --text_column")
    for batch in pf.iter_batches(batch_size=1024, columns=[opts.text_column]):
        for text in batch.column(0).to_pylist():
            if keep() and text:
                yield text


def iter_dataset_documents(spec: SourceSpec, split: str, opts: ReadOptions, seed: int) -> Iterator[str]:
    """Stream a Hub dataset (or a local dataset folder) through `datasets`, shuffled with a buffer."""
    import datasets

    try:
        ds = datasets.load_dataset(spec.dataset, spec.config, split=split, streaming=True)
    except Exception as err:  # datasets raises many types (connection, missing config, missing split)
        raise SourceError(f"--dataset {spec.dataset!r}: could not open it ({type(err).__name__}: {err})") from None
    ds = ds.shuffle(seed=seed, buffer_size=10_000)
    for i, record in enumerate(ds):
        text = _text_field(record, Path(spec.dataset), f"--dataset {spec.dataset}: row {i}", opts.text_column)
        if text:
            yield text


def _probe_text(raw_line: bytes, suffix: str, column: str) -> str:
    try:
        line = raw_line.decode("utf-8")
        if suffix == ".txt":
            return line
        text = json.loads(line).get(column) if line.strip() else ""
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return ""  # bad lines are reported when the file is read for real
    return text if isinstance(text, str) else ""


def estimated_text_bytes(path: Path, opts: ReadOptions, probe_bytes: int = 1 << 20) -> int:
    """Text bytes in a file, estimated from its first ~1 MB: JSON keys, escapes and compression make the
    size on disk a poor guide, and a poor guide means sampling rates that miss the byte budget."""
    suffix, gz = file_kind(path)
    size = path.stat().st_size
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path).metadata
        names = [meta.schema.column(i).name for i in range(meta.num_columns)]
        if opts.text_column not in names:
            return size
        col = names.index(opts.text_column)
        return sum(meta.row_group(r).column(col).total_uncompressed_size for r in range(meta.num_row_groups))
    if suffix == ".json" or (opts.document_per_file and suffix == ".txt"):
        return int(size * (3.0 if gz else 1.0))
    with open(path, "rb") as raw:
        fh = gzip.GzipFile(fileobj=raw) if gz else raw
        text_bytes = consumed = 0
        for raw_line in fh:
            consumed += len(raw_line)
            text_bytes += len(_probe_text(raw_line, suffix, opts.text_column).encode("utf-8"))
            if consumed >= probe_bytes:
                break
        on_disk = raw.tell() if gz else consumed
    return int(size * text_bytes / max(on_disk, 1))


@dataclass
class SourcePlan:
    """How much to take from one source, and at which sampling rate."""

    spec: SourceSpec
    files: list[Path]
    estimated_bytes: int | None  # None: unknown (a streamed dataset)
    budget: float  # bytes of text to take; math.inf: all of it, once


def plan_mixture(
    sources: list[SourceSpec], files: list[list[Path]], max_bytes: int | None, opts: ReadOptions = ReadOptions()
) -> list[SourcePlan]:
    """Split the byte budget over sources.

    The total is the corpus size, capped at `max_bytes` (None: no cap). Without weights every source
    keeps its natural share of it. With weights each source gets its weight's share of the total, in
    bytes of text: a larger source is sampled down, a smaller one is read again (upsampled), so that one
    language cannot crowd the other out. A source of unknown size (a streamed dataset) needs weights
    and a cap whenever it is mixed with others.
    """
    check_weights(sources)
    estimates = [
        None if s.is_dataset else sum(estimated_text_bytes(p, opts) for p in f)
        for s, f in zip(sources, files, strict=True)
    ]
    unknown = [s.name for s, e in zip(sources, estimates, strict=True) if e is None]
    if unknown and len(sources) > 1 and (sources[0].weight is None or max_bytes is None):
        raise SourceError(
            f"the size of {', '.join(unknown)} is unknown: to mix it with other sources give every source"
            " a :WEIGHT and set --max_bytes"
        )
    cap = math.inf if max_bytes is None else float(max_bytes)
    if unknown:
        total = cap
    else:
        total = min(cap, float(sum(estimates)))
    if sources[0].weight is not None:
        weight_sum = sum(s.weight for s in sources)
        budgets = [total * s.weight / weight_sum for s in sources]
    elif unknown:
        budgets = [total]
    elif total >= sum(estimates):
        budgets = [math.inf] * len(sources)  # everything, once
    else:
        budgets = [total * e / max(sum(estimates), 1) for e in estimates]
    return [SourcePlan(s, f, e, b) for s, f, e, b in zip(sources, files, estimates, budgets, strict=True)]


def sample_source(
    plan: SourcePlan, opts: ReadOptions, stats: ReadStats, seed: int, split: str = "train"
) -> Iterator[str]:
    """Yield documents of one source until its byte budget is met, sampling documents at a rate planned
    from the source's size, and passing over the source again if it is smaller than its budget."""
    rng = random.Random(f"{seed}:{plan.spec.name}")
    budget = plan.budget
    passes = 0
    while stats.bytes < budget:
        stats.passes += 1
        remaining = budget - stats.bytes
        size = plan.estimated_bytes
        # aim 3% high: sampling is random, and a short first pass would need a whole second pass
        rate = 1.0 if size is None or math.isinf(budget) else min(1.0, 1.03 * remaining / max(size, 1))
        keep = (lambda: True) if rate >= 1.0 else (lambda r=rate: rng.random() < r)
        before = stats.bytes
        if plan.spec.is_dataset:
            docs = iter_dataset_documents(plan.spec, split, opts, seed + passes)
        else:
            order = list(plan.files)
            rng.shuffle(order)
            docs = (doc for path in order for doc in iter_file_documents(path, opts, stats, keep))
        for doc in docs:
            stats.docs += 1
            stats.bytes += len(doc.encode("utf-8"))
            yield doc
            if stats.bytes >= budget:
                return
        passes += 1
        if stats.bytes == before and (rate >= 1.0 or math.isinf(budget)):
            raise SourceError(f"source {plan.spec.name!r} holds no text (check the files and --text_column)")
        if math.isinf(budget) or stats.bytes >= SHORTFALL_OK * budget:
            return  # close enough: a second pass for the last few percent would only add repeats
        # a whole pass tells the source's real size: plan the next pass on it
        plan.estimated_bytes = max(1, int((stats.bytes - before) / rate))
