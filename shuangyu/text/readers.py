"""Reading documents from text files and Hub datasets.

Files may be `.txt` (a document per line, or per file), `.jsonl`/`.json` (field `text_column`), each optionally
gzip-compressed (`.gz`), or `.parquet`. The file readers are written by hand rather than through
`datasets.load_dataset(..., streaming=True)` because users need errors that name the file and line (bad UTF-8,
a line that is not JSON, a missing field) and a way to skip bad lines and count them; the Hub path does use
`datasets`.
"""

from __future__ import annotations

import codecs
import gzip
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shuangyu.errors import UsageError
from shuangyu.text.sources import SourceSpec, file_kind


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
    skip_flag: str | None = "--on_decode_error skip"  # the calling tool's flag that skips bad lines (None: it has none)
    dataset_flag: str = "--dataset"  # the calling tool's flag for Hub datasets


DEFAULT_OPTIONS = ReadOptions()


def _open_binary(path: Path, gz: bool):
    return gzip.open(path, "rb") if gz else open(path, "rb")


def numbered_lines(fh) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of a binary file, without the byte-order mark some editors write at its start, so that
    a first line holding only the mark is blank like any other."""
    for lineno, raw in enumerate(fh, start=1):
        yield lineno, raw.removeprefix(codecs.BOM_UTF8) if lineno == 1 else raw


def _decode_line(raw: bytes, path: Path, lineno: int, opts: ReadOptions, stats: ReadStats) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        if opts.on_decode_error == "skip":
            stats.skipped_lines += 1
            return None
        raise UsageError(
            f"{path}:{lineno}: not valid UTF-8 ({err.reason} at byte {err.start}); fix the file{_or_skip(opts, ' or')}"
        ) from None


def _or_skip(opts: ReadOptions, joint: str) -> str:
    return f"{joint} pass {opts.skip_flag}" if opts.skip_flag else ""


def json_reason(err: json.JSONDecodeError) -> str:
    """The reason with its column: some of json's messages end mid-sentence ("Invalid control character at") and
    expect the position after them, which `str(err)` adds in a form that repeats the line and char offset."""
    joint = " " if err.msg.endswith(" at") else " at "
    return f"{err.msg}{joint}column {err.colno}"


def _decode_whole(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        lineno = data.count(b"\n", 0, err.start) + 1
        raise UsageError(f"{path}:{lineno}: not valid UTF-8 ({err.reason}); fix the file") from None


def _text_field(record: object, where: str, opts: ReadOptions, stats: ReadStats | None) -> str | None:
    column = opts.text_column
    if not isinstance(record, dict):
        raise UsageError(f"{where}: expected a JSON object with field {column!r}, got {type(record).__name__}")
    if column not in record:
        fields = ", ".join(map(str, record)) or "none"
        raise UsageError(f"{where}: no field {column!r} (fields: {fields}); set --text_column")
    value = record[column]
    if not isinstance(value, str):  # a null too: dropping it uncounted hid how much of a file was read
        if opts.on_decode_error == "skip" and stats is not None:
            stats.skipped_lines += 1
            return None
        kind = "null" if value is None else type(value).__name__
        raise UsageError(f"{where}: field {column!r} is {kind}, not a string; fix or remove it{_or_skip(opts, ', or')}")
    if (surrogate := lone_surrogate(value)) is not None:  # JSON's "\ud800" escape: no UTF-8 for it, like a bad byte
        if opts.on_decode_error == "skip" and stats is not None:
            stats.skipped_lines += 1
            return None
        raise UsageError(
            f"{where}: not valid UTF-8 (field {column!r} holds a lone surrogate, escaped \\u{ord(surrogate):04x}); "
            f"fix the file{_or_skip(opts, ' or')}"
        )
    return value


def lone_surrogate(text: str) -> str | None:
    """The first lone surrogate in TEXT (what JSON's "\\ud800" escape decodes to: no UTF-8 for it, and a tokenizer
    refuses it), or None."""
    if text.isascii():  # most lines: no encoding needed to know
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return text[err.start]
    return None


def iter_file_documents(path: Path, opts: ReadOptions, stats: ReadStats, keep=lambda: True) -> Iterator[str]:
    """Yield the documents of one file, lazily. `keep()` is asked before a line is decoded or parsed, so
    that sampling a small share of a large file skips most of the work (skipped lines are not checked).
    Documents that are empty or only whitespace are passed over."""
    try:
        yield from _iter_file_documents(path, opts, stats, keep)
    except UsageError:
        raise
    except (OSError, EOFError, ValueError, zlib.error) as err:  # a damaged gzip stream, a bad parquet page, ...
        raise UsageError(f"{path}: could not be read ({type(err).__name__}: {err}); fix or remove the file") from None


def has_text(text) -> bool:
    return bool(text) and not text.isspace()


def _iter_file_documents(path: Path, opts: ReadOptions, stats: ReadStats, keep) -> Iterator[str]:
    suffix, gz = file_kind(path)
    stats.files.add(str(path))
    if suffix == ".parquet":
        yield from _iter_parquet(path, opts, keep)
        return
    with _open_binary(path, gz) as fh:
        if opts.document_per_file and suffix == ".txt":
            if keep():
                text = _decode_whole(fh.read(), path)
                if has_text(text):
                    yield text
            return
        if suffix == ".json":
            head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
            fh.seek(0)
            if head.startswith(b"["):  # a JSON array of records: must be parsed whole
                yield from _iter_json_array(path, fh.read(), opts, stats, keep)
                return
        for lineno, raw in numbered_lines(fh):
            if not raw.strip() or not keep():
                continue
            line = _decode_line(raw, path, lineno, opts, stats)
            if line is None:
                continue
            if suffix == ".txt":
                text = line.rstrip("\r\n")
            else:
                try:
                    record = json.loads(line.rstrip("\r\n"))  # an unclosed string: "Unterminated", not the newline
                except json.JSONDecodeError as err:
                    if opts.on_decode_error == "skip":
                        stats.skipped_lines += 1
                        continue
                    raise UsageError(
                        f"{path}:{lineno}: not valid JSON ({json_reason(err)}); fix or remove the line{_or_skip(opts, ', or')}"
                    ) from None
                text = _text_field(record, f"{path}:{lineno}", opts, stats)
            if has_text(text):
                yield text


def _iter_json_array(path: Path, data: bytes, opts: ReadOptions, stats: ReadStats, keep) -> Iterator[str]:
    try:
        records = json.loads(_decode_whole(data, path))
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}:{err.lineno}: not valid JSON ({json_reason(err)})") from None
    for i, record in enumerate(records):
        if keep():
            text = _text_field(record, f"{path}: record {i}", opts, stats)
            if has_text(text):
                yield text


def _iter_parquet(path: Path, opts: ReadOptions, keep) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a file that is not parquet
        raise UsageError(f"{path}: not a readable parquet file ({err})") from None
    names = pf.schema_arrow.names
    if opts.text_column not in names:
        raise UsageError(f"{path}: no column {opts.text_column!r} (columns: {', '.join(names)}); set --text_column")
    kind = pf.schema_arrow.field(opts.text_column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise UsageError(
            f"{path}: column {opts.text_column!r} holds {kind}, not text; set --text_column to a column of strings"
        )
    for batch in pf.iter_batches(batch_size=1024, columns=[opts.text_column]):
        for text in batch.column(0).to_pylist():
            if keep() and has_text(text):
                yield text


def iter_dataset_documents(
    spec: SourceSpec, split: str, opts: ReadOptions, seed: int, stats: ReadStats | None = None
) -> Iterator[str]:
    """Stream a Hub dataset (or a local dataset folder) through `datasets`, shuffled with a buffer."""
    import datasets

    try:
        ds = datasets.load_dataset(spec.dataset, spec.config, split=split, streaming=True)
    except Exception as err:  # datasets raises many types (connection, missing config, missing split)
        raise UsageError(
            f"{opts.dataset_flag} {spec.dataset!r}: could not open it ({type(err).__name__}: {err})"
        ) from None
    ds = ds.shuffle(seed=seed, buffer_size=10_000)
    for i, record in enumerate(ds):
        where = f"{opts.dataset_flag} {spec.dataset}: row {i}"
        text = _text_field(record, where, opts, stats)
        if has_text(text):
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
    try:
        return _estimated_text_bytes(path, opts, probe_bytes)
    except (OSError, EOFError, ValueError, zlib.error) as err:
        raise UsageError(f"{path}: could not be read ({type(err).__name__}: {err}); fix or remove the file") from None


def _estimated_text_bytes(path: Path, opts: ReadOptions, probe_bytes: int) -> int:
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
            # surrogatepass: a lone surrogate (an escaped \ud800) is the reading's to report, with its line
            text_bytes += len(_probe_text(raw_line, suffix, opts.text_column).encode("utf-8", "surrogatepass"))
            if consumed >= probe_bytes:
                break
        on_disk = raw.tell() if gz else consumed
    return int(size * text_bytes / max(on_disk, 1))


def read_documents(files: Iterable[Path], opts: ReadOptions = DEFAULT_OPTIONS, max_bytes: int = 0) -> list[str]:
    """The documents of `files` in order, up to about `max_bytes` of text (0: all of it)."""
    docs, size, stats = [], 0, ReadStats()
    for path in files:
        for doc in iter_file_documents(Path(path), opts, stats):
            docs.append(doc)
            size += len(doc.encode("utf-8"))
            if max_bytes and size >= max_bytes:
                return docs
    return docs
