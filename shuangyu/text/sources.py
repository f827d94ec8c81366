"""Naming text sources: how users name them on the command line, and which files each one means.

One way of naming sources serves every tool that reads raw text (the tokenizer trainer, the data pipeline):

    [NAME=]GLOB[,GLOB...][:WEIGHT]      local files, e.g.  zh=corpus/zh/*.jsonl:0.5
    [NAME=]DATASET[:CONFIG][:WEIGHT]    a Hub dataset (or a local dataset folder), streamed

A trailing `:WEIGHT` is a positive number; NAME labels the source in reports (default: the spec) and is made of
A-Z a-z 0-9 _ . - only, so that a path such as data/x=y.jsonl is not read as NAME=...; a file whose name has an
`=` in it and no folder part is named ./x=y.jsonl. A comma always separates globs: a path with a comma in it
cannot be named (rename or link the file). Reading the
documents is `shuangyu.text.readers`; sampling a byte budget from several sources is `shuangyu.text.sampling`.
"""

from __future__ import annotations

import glob
import math
import os
import re
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import ClassVar

from shuangyu.errors import UsageError

TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
_NAME_RE = re.compile(r"^([A-Za-z0-9_.\-]+)=(.+)$")


@dataclass(kw_only=True)
class SourceArguments:
    """The command-line flags that name text sources, shared by every tool that reads raw text."""

    files: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Sources of local files: [NAME=]GLOB[,GLOB...][:WEIGHT], e.g. 'zh=data/zh/*.jsonl:0.5'.",
            "aliases": ["--train_files"],  # train_clm.py's name for them
        },
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

    # The calling command's name for a flag, where it is not this command's (train_clm.py prepares its data with
    # --train_files, --dataset_name, ...): errors name the flag the user typed.
    flag_names: ClassVar[dict[str, str]] = {}

    def flag(self, name: str) -> str:
        return self.flag_names.get(name, name)

    def resolve_sources(self) -> tuple[list[SourceSpec], list[list[Path]]]:
        """The named sources, checked, with each one's files (none for a dataset)."""
        files, dataset = self.flag("--files"), self.flag("--dataset")
        specs = [parse_file_source(s, files) for s in self.files] + [
            parse_dataset_source(s, dataset) for s in self.dataset
        ]
        if not specs:
            raise UsageError(f"no training text: give {files} and/or {dataset}")
        check_weights(specs)
        resolved = [[] if s.is_dataset else resolve_files(s, self.exclude, files) for s in specs]
        check_no_file_twice(specs, resolved, files)
        return specs, resolved


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
        raise UsageError(f"{flag} {spec!r}: weight {tail!r} must be a positive number")
    return head, weight


def _split_name(spec: str) -> tuple[str | None, str]:
    match = _NAME_RE.match(spec)
    return (match.group(1), match.group(2)) if match else (None, spec)


def _looks_like_a_name(spec: str) -> bool:
    """`中文=zh.jsonl`: an = after something with no folder part, meant as NAME= but not a valid name."""
    head, sep, _ = spec.partition("=")
    return bool(sep and head) and "/" not in head and os.sep not in head and not _NAME_RE.match(spec)


NAME_RULE = "a source NAME may hold only A-Z a-z 0-9 _ . - (write ./PATH for a file with = in its name)"


def parse_file_source(spec: str, flag: str = "--files") -> SourceSpec:
    name, rest = _split_name(spec)
    rest, weight = _split_weight(rest, flag)
    patterns = tuple(p for p in rest.split(",") if p)
    if not patterns:
        raise UsageError(f"{flag} {spec!r}: no path or glob given")
    return SourceSpec(name=name or rest, weight=weight, patterns=patterns)


def parse_dataset_source(spec: str, flag: str = "--dataset") -> SourceSpec:
    name, rest = _split_name(spec)
    rest, weight = _split_weight(rest, flag)
    dataset, _, config = rest.partition(":")
    if not dataset:
        raise UsageError(f"{flag} {spec!r}: no dataset name given")
    if name is None and _looks_like_a_name(dataset) and not os.path.exists(dataset):
        raise UsageError(f"{flag} {spec!r}: {NAME_RULE}")
    if is_saved_dataset(dataset):  # datasets' own error says "use load_from_disk", which no flag here can do
        raise UsageError(
            f"{flag} {dataset}: a datasets save_to_disk folder, which this command does not read; export it with "
            "ds.to_json('data.jsonl') (or ds.to_parquet) and give that file instead"
        )
    return SourceSpec(name=name or rest, weight=weight, dataset=dataset, config=config or None)


def is_saved_dataset(path: str) -> bool:
    """A folder written by datasets' save_to_disk (a Dataset's or a DatasetDict's)."""
    folder = Path(os.path.expanduser(path))
    saved = (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    return saved or (folder / "dataset_dict.json").is_file()


def check_no_file_twice(specs: list[SourceSpec], files: list[list[Path]], flag: str = "--files") -> None:
    """A file in two sources would be read, and trained on, twice without a word."""
    owner: dict[str, str] = {}
    for spec, paths in zip(specs, files, strict=True):
        for path in paths:
            first = owner.setdefault(os.path.realpath(path), spec.name)
            if first != spec.name:
                raise UsageError(
                    f"{flag}: {path} is in both source {first} and source {spec.name}; name it in one of them"
                )


def check_weights(sources: list[SourceSpec]) -> None:
    weighted = [s.weight is not None for s in sources]
    if any(weighted) and not all(weighted):
        missing = ", ".join(s.name for s in sources if s.weight is None)
        raise UsageError(f"give a :WEIGHT to every source or to none (missing on: {missing})")
    names = [s.name for s in sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(
            f"source names must be unique, repeated: {', '.join(dupes)} (one NAME=GLOB[,GLOB...] per source; "
            "label unnamed ones NAME=...)"
        )


def file_kind(path: str | Path) -> tuple[str, bool]:
    """('.jsonl', True) for data.jsonl.gz; raises for an unsupported type."""
    name = str(path).lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    for suffix in TEXT_SUFFIXES:
        if name.endswith(suffix):
            if gz and suffix == ".parquet":  # parquet needs random access, and compresses inside the file anyway
                raise UsageError(f"{path}: a gzipped parquet file; gunzip it (parquet is compressed inside)")
            return suffix, gz
    raise UsageError(f"{path}: unsupported file type; use {', '.join(TEXT_SUFFIXES)} (text ones optionally .gz)")


def resolve_files(spec: SourceSpec, exclude: list[str] | tuple[str, ...] = (), flag: str = "--files") -> list[Path]:
    """Expand a source's globs to a sorted, de-duplicated file list; every glob must match a file."""
    found: dict[str, Path] = {}
    for pattern in spec.patterns:
        expanded = os.path.expanduser(pattern)
        matches = sorted(glob.glob(expanded, recursive=True)) if glob.has_magic(expanded) else [expanded]
        files = [m for m in matches if os.path.isfile(m)]
        matches = [m for m in files if not any(is_excluded(m, ex) for ex in exclude)]
        if not matches:
            raise UsageError(f"{flag} {pattern!r}: {why_nothing_matches(pattern, expanded, files, spec)}")
        for match in matches:
            file_kind(match)
            found.setdefault(os.path.realpath(match), Path(match))
    return sorted(found.values())


def is_excluded(path: str, pattern: str) -> bool:
    """`path` (as the glob returned it) matches the --exclude `pattern` as written, or the two match as absolute
    paths: ./data/a_val.jsonl, /abs/data/a_val.jsonl or a link's target must leave out data/a_val.jsonl too.
    The pattern as written is not tried on the absolute path: '*val*' would then match every file below a
    folder named val."""
    if fnmatch(path, pattern):
        return True
    pattern = os.path.expanduser(pattern)
    paths = {os.path.abspath(path), os.path.realpath(path)}
    return any(fnmatch(p, pat) for p in paths for pat in {os.path.abspath(pattern), os.path.realpath(pattern)})


def check_not_held_out(
    train: list[list[Path]],
    names: list[str],
    held_out: list[list[Path]],
    train_flag: str = "--files",
    exclude_flag: str | None = "--exclude",
) -> None:
    """A held-out file that a training glob also matches would be trained on, and its loss would measure
    memory, not generalisation: refuse it (real paths, so ./x and a link to x are the same file). `exclude_flag`:
    None where the command has no --exclude (DPO), so the message says what to do instead."""
    trained = {os.path.realpath(path) for paths in train for path in paths}
    for name, paths in zip(names, held_out, strict=True):
        for path in paths:
            if os.path.realpath(path) in trained:
                fix = f"with {exclude_flag} '{path}'" if exclude_flag else "by naming only other files there"
                raise UsageError(
                    f"{path} is in both {train_flag} and --validation_files {name}, so held-out text would be trained "
                    f"on; leave it out of {train_flag} {fix}"
                )


def local_paths(specs: list[SourceSpec], files: list[list[Path]], dataset_flag: str = "--dataset") -> list[tuple]:
    """Every local path the sources read (their files, local dataset folders), each with what it is: for
    files.check_holds_no_input, since an output folder replaced whole must hold none of them."""
    paths = [(f"source {spec.name}'s file", path) for spec, found in zip(specs, files, strict=True) for path in found]
    paths += [(f"the {dataset_flag} folder", s.dataset) for s in specs if s.is_dataset and os.path.isdir(s.dataset)]
    return paths


def why_nothing_matches(pattern: str, expanded: str, files: list[str], spec: SourceSpec) -> str:
    if files:
        return f"every file it matches ({len(files)}) is left out by --exclude"
    if os.path.isdir(expanded):
        return f"a folder, not a file: name its files, e.g. '{os.path.join(pattern, '*.jsonl')}'"
    if spec.name == ",".join(spec.patterns) and _looks_like_a_name(pattern):  # no NAME= was recognised
        return f"no file matches; {NAME_RULE}"
    return "no file matches"


def resolve_validation_sources(
    values: list[str], flag: str = "--validation_files"
) -> tuple[list[SourceSpec], list[list[Path]]]:
    """Held-out text, one source per language (NAME=GLOB[,GLOB...]): no weights, unique names, every glob matching."""
    specs = [parse_file_source(s, flag) for s in values]
    for spec in specs:
        if spec.weight is not None:
            raise UsageError(f"{flag} {spec.name!r}: weights do not apply to held-out text")
    names = [s.name for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:  # refused, not merged: the second would have replaced the first without a word
        raise UsageError(f"{flag}: {', '.join(repeated)} given twice; give each name once: NAME=GLOB[,GLOB...]")
    return specs, [resolve_files(s, flag=flag) for s in specs]
