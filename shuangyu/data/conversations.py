"""Conversations -> rows of tokens with per-token flags, in a prepared folder that PreparedData and BlockLoader serve
as {"input_ids", "labels", "position_ids"} batches: the instruction-tuning (SFT) counterpart of prepare.py.

Each conversation (read and checked by shuangyu.text.conversations) is encoded with Shuangyu's chat format
(shuangyu.tokenizer.chat_template.encode_chat): the tokens, and which of them the loss trains (the assistants'
replies and their <|im_end|>, nothing else). Examples are then laid into rows of `block_size` tokens:

* packing (default): whole examples one after another, in a seeded shuffled order, a row closed (padded) when
  the next example does not fit. Positions restart at every example, so with them the model's attention stays
  inside each example (the packed-document path of pretraining); an example is never split across rows, so no
  reply is trained without its prompt.
* no packing: one example per row; the loader cuts each batch to its longest row (padding per batch).

An example longer than a block is truncated after the last whole assistant turn that fits (`overlong="truncate"`,
the default: a multi-turn conversation keeps its first exchanges) or skipped (`"skip"`); one whose first reply
does not fit is skipped either way. Both are counted per source in the manifest and the report. The folder is a
cache keyed like prepare.py's (tokenizer, chat template, files by size and mtime, block size, packing, seed), and
written whole or not at all; like prepare.py's, its manifest holds a hash of the rows, which is what a checkpoint's
data position is for.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shuangyu.data.inputs import (
    FORMAT_VERSION,
    _dataset_fingerprint,
    _file_stat,
    check_reads_nothing_inside,
    hash_key,
    say_why_prepared_again,
)
from shuangyu.data.loader import FLAG_LOSS, FLAG_PAD, FLAG_START
from shuangyu.data.packing import token_dtype
from shuangyu.data.prepared import (
    FLAGS_SUFFIX,
    MANIFEST,
    TRAIN_FILE,
    VALIDATION_FILE,
    PreparedData,
    read_manifest,
    record_blocks,
)
from shuangyu.errors import UsageError
from shuangyu.files import atomic_folder
from shuangyu.text.conversations import iter_conversations
from shuangyu.text.sources import (
    SourceSpec,
    check_not_held_out,
    parse_dataset_source,
    parse_file_source,
    resolve_files,
)
from shuangyu.tokenizer.chat_template import CHAT_TEMPLATE, check_chat_tokenizer, encode_chat
from shuangyu.tokenizer.loading import load_tokenizer, tokenizer_fingerprint
from shuangyu.tokenizer.special_tokens import EOS_TOKEN


@dataclass
class ConversationArguments:
    output_dir: str
    tokenizer_name: str
    files: list[str] = field(default_factory=list)  # [NAME=]GLOB[,GLOB...]
    dataset: list[str] = field(default_factory=list)  # [NAME=]DATASET[:CONFIG]
    dataset_split: str = "train"
    exclude: list[str] = field(default_factory=list)
    validation_files: list[str] = field(default_factory=list)  # NAME=GLOB, one per language
    block_size: int = 1024
    packing: bool = True
    overlong: str = "truncate"  # or "skip"
    seed: int = 42


@dataclass
class Example:
    ids: list[int]
    trained: list[bool]


@dataclass
class SourceReport:
    name: str
    files: list[str]
    dataset: str | None
    examples: int = 0
    truncated: int = 0
    skipped: int = 0
    tokens: int = 0
    trained_tokens: int = 0

    def as_dict(self) -> dict:
        return dict(vars(self))


def plan_sources(args: ConversationArguments):
    if args.block_size < 8:
        raise UsageError(f"--block_size {args.block_size} is too small for a conversation")
    if args.overlong not in ("truncate", "skip"):
        raise UsageError(f"--sft_overlong {args.overlong!r}: choose truncate or skip")
    specs = [parse_file_source(s, "--train_files") for s in args.files]
    specs += [parse_dataset_source(s, "--dataset_name") for s in args.dataset]
    if not specs:
        raise UsageError("no conversations: give --train_files (or --dataset_name)")
    for spec in specs:
        if spec.weight is not None:
            raise UsageError(
                f"--train_files {spec.name!r}: weights do not apply to conversations (every example is used once "
                "per epoch); list a file twice under two names to repeat it"
            )
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise UsageError("--train_files: repeated source names; label each NAME=GLOB")
    files = [[] if s.is_dataset else resolve_files(s, args.exclude, "--train_files") for s in specs]
    validation = [parse_file_source(s, "--validation_files") for s in args.validation_files]
    validation_files = [resolve_files(s, flag="--validation_files") for s in validation]
    # a held-out conversation that is also trained on scores memory, not generalisation (as pretraining refuses it)
    check_not_held_out(files, [s.name for s in validation], validation_files, "--train_files")
    return specs, files, validation, validation_files


def key_inputs(args: ConversationArguments, specs, files, validation, validation_files, tokenizer_sha: str) -> dict:
    """What the rows depend on (hashed into the folder's key, and recorded in its manifest)."""

    def describe(spec: SourceSpec, paths: list[Path]) -> dict:
        if spec.is_dataset:
            return {"name": spec.name, **_dataset_fingerprint(spec, args.dataset_split)}
        return {"name": spec.name, "files": [_file_stat(p) for p in paths]}

    return {
        "format": FORMAT_VERSION,
        "kind": "conversations",
        "tokenizer": tokenizer_sha,
        "chat_template": hashlib.sha256(CHAT_TEMPLATE.encode()).hexdigest(),
        "sources": [describe(s, f) for s, f in zip(specs, files, strict=True)],
        "validation": [describe(s, f) for s, f in zip(validation, validation_files, strict=True)],
        "block_size": args.block_size,
        "packing": args.packing,
        "overlong": args.overlong,
        "seed": args.seed,
    }


def fit_to_block(example: Example, block_size: int, overlong: str, im_end: int) -> tuple[Example | None, bool]:
    """(the example as it goes into a row, or None to skip it; whether it was truncated)."""
    if len(example.ids) <= block_size:
        return example, False
    if overlong == "skip":
        return None, False
    # after the last whole assistant turn (its <|im_end|>) that fits
    ends = [i + 1 for i, (t, m) in enumerate(zip(example.ids, example.trained, strict=True)) if t == im_end and m]
    cut = max((e for e in ends if e <= block_size), default=0)
    if cut == 0:
        return None, False
    return Example(example.ids[:cut], example.trained[:cut]), True


def encode_source(tokenizer, spec, paths, split, block_size, overlong, im_end) -> tuple[list[Example], SourceReport]:
    report = SourceReport(spec.name, [str(p) for p in paths], spec.dataset)
    examples = []
    for messages in iter_conversations(spec, paths, split):
        ids, trained = encode_chat(tokenizer, messages)
        example, truncated = fit_to_block(Example(ids, trained), block_size, overlong, im_end)
        if example is None:
            report.skipped += 1
            continue
        report.examples += 1
        report.truncated += truncated
        report.tokens += len(example.ids)
        report.trained_tokens += sum(example.trained)
        examples.append(example)
    return examples, report


def check_has_examples(report: SourceReport, spec: SourceSpec, flag: str, block_size: int) -> None:
    """Refuse a source that gives no example, saying why: it holds no conversation (an empty file), or none of its
    conversations has a first reply that fits in a block."""
    if report.examples:
        return
    if spec.is_dataset:
        flag, where = "--dataset_name", f"{spec.dataset}{':' + spec.config if spec.config else ''}"
    else:
        where = ",".join(spec.patterns)
    if not report.skipped:
        raise UsageError(f"{flag} {spec.name}: {where} holds no conversations; give it some, or leave the source out")
    raise UsageError(
        f"{flag} {spec.name}: no conversation fits in --block_size {block_size} ({report.skipped:,} skipped as longer); "
        "raise --block_size, or leave the source out"
    )


def lay_out_rows(examples: list[Example], block_size: int, packing: bool, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, flags), each [rows, block_size]: examples packed whole into rows (or one per row), padded."""
    rows: list[list[Example]] = []
    used = block_size + 1  # no open row yet
    for example in examples:
        if packing and used + len(example.ids) <= block_size:
            rows[-1].append(example)
            used += len(example.ids)
        else:
            rows.append([example])
            used = len(example.ids)
    tokens = np.full((len(rows), block_size), pad_id, dtype=np.int64)
    flags = np.full((len(rows), block_size), FLAG_PAD, dtype=np.uint8)
    for r, row in enumerate(rows):
        at = 0
        for example in row:
            n = len(example.ids)
            tokens[r, at : at + n] = example.ids
            flags[r, at : at + n] = np.where(np.asarray(example.trained, dtype=bool), FLAG_LOSS, 0)
            flags[r, at] |= FLAG_START
            at += n
    return tokens, flags


def write_rows(tokens: np.ndarray, flags: np.ndarray, dtype: np.dtype, path: Path, append: bool = False) -> None:
    mode = "ab" if append else "wb"
    with open(path, mode) as fh:
        tokens.astype(dtype).tofile(fh)
    with open(str(path) + FLAGS_SUFFIX, mode) as fh:
        flags.tofile(fh)


def prepare_conversations(args: ConversationArguments, say=print) -> PreparedData:
    """Encode, lay out and write the conversations into `args.output_dir`, unless it is already up to date; `say`
    tells why an existing folder is prepared again."""
    specs, files, validation, validation_files = plan_sources(args)
    check_reads_nothing_inside(
        args.output_dir, "--data_dir", specs + validation, files + validation_files, args.tokenizer_name,
        "--dataset_name",
    )  # fmt: skip
    tok = load_tokenizer(args.tokenizer_name)
    _, im_end = check_chat_tokenizer(tok, args.tokenizer_name)
    sha = tokenizer_fingerprint(tok)
    recorded = key_inputs(args, specs, files, validation, validation_files, sha)
    key = hash_key(recorded)
    out = Path(args.output_dir)
    existing = read_manifest(out) if out.is_dir() else None
    if existing is not None and existing.get("key") == key:
        return PreparedData(out, existing, reused=True)
    if existing is None and out.is_dir() and any(out.iterdir()):
        raise UsageError(f"--data_dir {out} exists and holds no prepared data; choose another folder")
    because = say_why_prepared_again(out, existing, recorded, say)

    dtype = token_dtype(len(tok))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.convert_tokens_to_ids(EOS_TOKEN)
    train_examples, reports = [], []
    for spec, paths in zip(specs, files, strict=True):
        examples, report = encode_source(tok, spec, paths, args.dataset_split, args.block_size, args.overlong, im_end)
        check_has_examples(report, spec, "--train_files", args.block_size)
        train_examples += examples
        reports.append(report)
    order = np.random.default_rng([args.seed, 2]).permutation(len(train_examples))
    train_tokens, train_flags = lay_out_rows([train_examples[i] for i in order], args.block_size, args.packing, pad_id)

    held_out_sources = []
    for spec, paths in zip(validation, validation_files, strict=True):
        examples, report = encode_source(tok, spec, paths, "validation", args.block_size, args.overlong, im_end)
        check_has_examples(report, spec, "--validation_files", args.block_size)  # else its language drops out unsaid
        held_out_sources.append((spec, examples, report))

    with atomic_folder(out) as tmp:
        write_rows(train_tokens, train_flags, dtype, tmp / TRAIN_FILE)
        (tmp / VALIDATION_FILE).touch()
        (tmp / (VALIDATION_FILE + FLAGS_SUFFIX)).touch()
        held_out, first = {}, 0
        for spec, examples, report in held_out_sources:
            tokens, flags = lay_out_rows(examples, args.block_size, args.packing, pad_id)
            write_rows(tokens, flags, dtype, tmp / VALIDATION_FILE, append=True)
            held_out[spec.name] = {
                "docs": report.examples,
                "tokens": report.tokens,
                "trained_tokens": report.trained_tokens,
                "skipped": report.skipped,
                "first_block": first,
                "blocks": len(tokens),
            }
            first += len(tokens)
        manifest = {
            "format": FORMAT_VERSION,
            "kind": "conversations",
            "key": key,
            "tokenizer": {
                "name": args.tokenizer_name,
                "sha256": sha,
                "vocab_size": len(tok),
                "eos_token_id": tok.convert_tokens_to_ids(EOS_TOKEN),
            },
            "dtype": dtype.name,
            "block_size": args.block_size,
            "packing": args.packing,
            "overlong": args.overlong,
            "seed": args.seed,
            "train": {
                "file": TRAIN_FILE,
                "blocks": len(train_tokens),
                "examples": len(train_examples),
                "tokens": int(train_tokens.size),
                "trained_tokens": int((train_flags & FLAG_LOSS != 0).sum()),
                "padding": round(float((train_flags & FLAG_PAD != 0).mean()), 4),
            },
            "sources": [r.as_dict() for r in reports],
            "validation": held_out,
            "arguments": dict(vars(args)),
            "inputs": recorded,
        }
        record_blocks(manifest, tmp, existing, out)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return PreparedData(out, manifest, rebuilt_because=because)


def format_report(data: PreparedData) -> str:
    m = data.manifest
    w = max([8, *(len(s["name"]) for s in m["sources"]), *map(len, m["validation"])])
    lines = [f"{'source':<{w}} {'examples':>9} {'truncated':>9} {'skipped':>8} {'tokens':>11} {'trained':>11}"]
    for s in m["sources"]:
        lines.append(
            f"{s['name']:<{w}} {s['examples']:>9,} {s['truncated']:>9,} {s['skipped']:>8,} {s['tokens']:>11,} "
            f"{s['trained_tokens']:>11,}"
        )
    t = m["train"]
    layout = "packed" if m["packing"] else "one example per row"
    lines.append(
        f"train        {t['blocks']:,} rows of {m['block_size']} ({layout}): {t['examples']:,} conversations, "
        f"{t['trained_tokens']:,} trained tokens, {t['padding']:.1%} padding"
    )
    for name, v in m["validation"].items():
        lines.append(f"validation   {name}: {v['docs']:,} conversations, {v['trained_tokens']:,} trained tokens")
    return "\n".join(lines)
