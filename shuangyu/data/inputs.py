"""What `prepare` reads, checked before any text is read, and the cache key that says when to prepare again."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from shuangyu.errors import UsageError
from shuangyu.files import check_holds_no_input, parse_count
from shuangyu.text.readers import ReadOptions
from shuangyu.text.sources import (
    SourceArguments,
    SourceSpec,
    check_not_held_out,
    local_paths,
    resolve_validation_sources,
)

FORMAT_VERSION = 1  # of the prepared folder; part of the key, so a new layout prepares again


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
        default=False,
        metadata={"help": "Skip (and count) lines that are not UTF-8, not JSON, or whose text is not a string."},
    )
    overwrite: bool = field(
        default=False,
        metadata={"help": "Replace an --output_dir prepared with another tokenizer (never a folder of other files)."},
    )


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
    if args.block_size < 2:
        raise UsageError(f"--block_size {args.block_size} must be at least 2")
    if not 0 <= args.validation_fraction < 1:
        raise UsageError(f"--validation_fraction {args.validation_fraction} must be in [0, 1)")
    if args.num_proc < 1:
        raise UsageError(f"{args.flag('--num_proc')} {args.num_proc} must be at least 1")
    sources, files = args.resolve_sources()
    validation, validation_files = resolve_validation_sources(args.validation_files)
    check_not_held_out(files, [s.name for s in validation], validation_files, args.flag("--files"))
    opts = ReadOptions(
        text_column=args.text_column,
        document_per_file=args.document_per_file,
        on_decode_error="skip" if args.skip_bad_lines else "error",
        skip_flag=args.flag("--skip_bad_lines"),
        dataset_flag=args.flag("--dataset"),
    )
    max_tokens = parse_count(args.max_tokens, "--max_tokens") if args.max_tokens else None
    check_reads_nothing_inside(
        args.output_dir, args.flag("--output_dir"), sources + validation, files + validation_files,
        args.tokenizer_name, args.flag("--dataset"),
    )  # fmt: skip
    return Inputs(sources, files, validation, validation_files, opts, max_tokens)


def check_reads_nothing_inside(
    output_dir: str, output_flag: str, specs: list, files: list, tokenizer_name: str, dataset_flag: str
) -> None:
    """The output folder is replaced whole: it must hold none of the sources' files, local datasets or the
    tokenizer."""
    named = local_paths(specs, files, dataset_flag)
    named += [("the tokenizer", tokenizer_name)] if Path(tokenizer_name).exists() else []
    check_holds_no_input(output_dir, named, output_flag)


def normalised_weights(sources: list[SourceSpec]) -> list[float] | None:
    """The mix as shares of 1 (0.7/0.3 and 7/3 are one mix): what the key holds and what the mixing uses, so the
    same shares always give the same blocks. Rounded, so that sums like 0.1 + 0.2 do not tell them apart."""
    if sources[0].weight is None:
        return None
    total = sum(s.weight for s in sources)
    return [round(s.weight / total, 12) for s in sources]


def key_inputs(args: PrepareArguments, inputs: Inputs, tokenizer_sha: str) -> dict:
    """Everything the prepared blocks depend on; files by size and mtime (hashing the content of a
    corpus would cost about as much as reading it). The manifest records it, to say what changed."""
    weights = normalised_weights(inputs.sources) or [None] * len(inputs.sources)

    def describe(spec: SourceSpec, files: list[Path], weight: float | None) -> dict:
        if spec.is_dataset:
            return {"name": spec.name, "weight": weight, **_dataset_fingerprint(spec, args.dataset_split)}
        return {"name": spec.name, "weight": weight, "files": [_file_stat(p) for p in files]}

    return {
        "format": FORMAT_VERSION,
        "tokenizer": tokenizer_sha,
        "sources": [describe(s, f, w) for s, f, w in zip(inputs.sources, inputs.files, weights, strict=True)],
        "validation_files": [
            describe(s, f, None) for s, f in zip(inputs.validation, inputs.validation_files, strict=True)
        ],
        "validation_fraction": 0.0 if inputs.validation else args.validation_fraction,
        "text_column": args.text_column,
        "document_per_file": args.document_per_file,
        "skip_bad_lines": args.skip_bad_lines,
        "max_tokens": inputs.max_tokens,
        "block_size": args.block_size,
        "seed": args.seed,
    }


def hash_key(inputs: dict) -> str:
    """The cache key: a hash of `key_inputs` (or of conversations' own)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


# What a change of each input is called, in the line that says why a folder is prepared again, in the order said;
# the sources' entries say which file changed, or the weights
CHANGE_NAMES = {
    "format": "the prepared folder's format",
    "tokenizer": "the tokenizer",
    "chat_template": "the chat template",
    "sources": None,
    "validation_files": None,  # prepare's
    "validation": None,  # conversations'
    "block_size": "the block size",
    "seed": "the seed",
}


def say_why_prepared_again(out: Path, existing: dict | None, recorded: dict, say) -> str | None:
    """When an existing folder (its manifest `existing`) is prepared again from `recorded` inputs: `say` what
    changed, and return it; None for a new folder."""
    if existing is None:
        return None
    because = describe_changes(existing.get("inputs"), recorded)
    say(f"{out}: preparing it again, since what it was prepared from changed: {because}")
    return because


def describe_changes(before: dict | None, now: dict) -> str:
    """What differs between two `key_inputs` (None: a manifest from before they were recorded), in words: the
    tokenizer, the first file that changed, the weights, the block size, the seed, or the other options."""
    if before is None:
        return "its manifest does not record what it was prepared from (an earlier version wrote it)"
    changed = {name for name in now.keys() | before.keys() if before.get(name) != now.get(name)}
    said = []
    for name, words in CHANGE_NAMES.items():
        if name in changed:
            entries = before.get(name) or [], now.get(name) or []
            said.append(words or _sources_change(*entries, validation=name != "sources"))
    options = sorted(f"--{name}" for name in changed - CHANGE_NAMES.keys())
    if options:
        said.append("other options (" + ", ".join(options) + ")")
    return "; ".join(said)


def _sources_change(before: list[dict], now: list[dict], validation: bool) -> str:
    what = "the validation sources" if validation else "the sources"
    if [s["name"] for s in before] != [s["name"] for s in now]:
        return f"{what} ({', '.join(s['name'] for s in before)} -> {', '.join(s['name'] for s in now)})"
    if [s.get("weight") for s in before] != [s.get("weight") for s in now]:
        return "the weights"
    for old, new in zip(before, now, strict=True):
        if old == new:
            continue
        if "files" not in new or "files" not in old:
            return f"the dataset of source {new['name']}"
        old_files = {f[0]: f for f in old["files"]}
        new_files = {f[0]: f for f in new["files"]}
        for path, stat in new_files.items():
            if path not in old_files:
                return f"the files: {path} is new"
            if stat[1] != old_files[path][1]:
                return f"the files: {path} changed size"
            if stat != old_files[path]:
                return f"the files: {path} was modified (its modification time changed)"
        gone = next((p for p in old_files if p not in new_files), None)
        return f"the files: {gone} is no longer read" if gone else "the order of the files"
    return what
