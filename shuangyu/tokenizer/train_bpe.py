"""Train Shuangyu's byte-level BPE tokenizer on Chinese + English text.

    python tokenizer/train_bpe.py --output_dir outputs/tokenizer \\
        --files "zh=corpus/zh/*.jsonl:0.5" "en=corpus/en/*.jsonl:0.5" --exclude "*_val.jsonl" \\
        --validation_files "zh=corpus/zh/*_val.jsonl" "en=corpus/en/*_val.jsonl" --max_bytes 200MB

Writes a folder that `AutoTokenizer.from_pretrained` loads as a fast tokenizer, plus
`training_report.json`, and prints a report. Source syntax: see shuangyu/text/sources.py. Also runs as
`python -m shuangyu.tokenizer.train_bpe`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from shuangyu.errors import (
    UsageError,
    ctrl_c_is_one_line,
    left_whole,
    print_error,
    print_interrupted,
    refuse_in_one_line,
)
from shuangyu.files import (
    atomic_folder,
    atomic_write_text,
    check_holds_no_input,
    check_writable_folder,
    disk_full_is_one_line,
    parse_size,
)
from shuangyu.text.readers import ReadOptions, ReadStats, read_documents
from shuangyu.text.sampling import plan_mixture, sample_source
from shuangyu.text.sources import (
    SourceArguments,
    check_not_held_out,
    local_paths,
    parse_file_source,
    resolve_files,
)
from shuangyu.tokenizer import bpe
from shuangyu.tokenizer.counting import peak_memory_kib

PROG = "train_bpe.py"


@dataclass(kw_only=True)
class TrainBPEArguments(SourceArguments):
    output_dir: str = field(metadata={"help": "Folder to write the tokenizer to (created; see --overwrite)."})
    validation_files: list[str] = field(
        default_factory=list,
        metadata={"help": "Held-out text for the compression report, per language: LANG=GLOB[,GLOB...]."},
    )
    # Memory is bounded by --max_pretokens, not by the amount of text; time grows with the text (30-35 s per
    # 200 MB on 2 cores), so the cap is there to keep a run on a huge dataset from reading forever.
    max_bytes: str = field(
        default="2GB",
        metadata={
            "help": "Cap on sampled training text, e.g. 200MB, 2GB, or 'all' (time grows with it, memory does not)."
        },
    )
    max_pretokens: int = field(
        default=bpe.DEFAULT_MAX_PRETOKENS,
        metadata={
            "help": "Distinct pre-tokens held while counting (in each counting process); beyond it the light "
            "Chinese (Han) runs are sampled, other pre-tokens are always counted exactly. Bounds memory "
            "(at the default, with 2 counting processes: 0.9 GB for 2 GB of text, training included)."
        },
    )
    validation_max_bytes: str = field(default="16MB", metadata={"help": "Cap on held-out text per language."})
    vocab_size: int = field(default=32000, metadata={"help": "Vocabulary size, special tokens included."})
    min_frequency: int = field(default=2, metadata={"help": "A pair must occur this often to be merged."})
    max_token_length: int | None = field(
        default=None, metadata={"help": "Longest token in byte-level characters (default: no limit)."}
    )
    on_decode_error: Literal["error", "skip"] = field(
        default="error",
        metadata={
            "help": "On a line that is not UTF-8, not JSON or without a string text: stop, or skip and count it."
        },
    )
    seed: int = field(default=42, metadata={"help": "Seed for sampling documents and shuffling datasets."})
    overwrite: bool = field(
        default=False, metadata={"help": "Replace an earlier tokenizer in --output_dir (never other files)."}
    )


def read_options(args: TrainBPEArguments) -> ReadOptions:
    return ReadOptions(args.text_column, args.document_per_file, args.on_decode_error)


MAX_VOCAB_SIZE = 2**20  # the trainer's counts overflow far above this; no vocabulary in use comes near

# What a tokenizer folder holds (this tool's, or one saved by transformers): --overwrite replaces only such a folder
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "training_report.json", "vocab.json", "merges.txt", "added_tokens.json"}  # fmt: skip


def check_replaceable_tokenizer_folder(out: Path, overwrite: bool) -> None:
    """--overwrite means "replace my earlier tokenizer", not "delete whatever is there": a folder holding anything
    else (a training run, a model, a corpus) is refused even with it."""
    if not out.is_dir():
        return
    names = {p.name for p in out.iterdir()}
    if names and ("tokenizer.json" not in names or not names <= TOKENIZER_FILES):
        shown = ", ".join(sorted(names - TOKENIZER_FILES)[:3] or sorted(names)[:3])
        raise UsageError(
            f"--output_dir {out} holds other files than a tokenizer ({shown}): not replaced, even with --overwrite; "
            "choose another --output_dir"
        )
    if not overwrite:
        raise UsageError(f"--output_dir {out} already exists; pass --overwrite to replace it")


def validate(args: TrainBPEArguments):
    """Check every flag and input that can be checked before reading any text."""
    if args.vocab_size < bpe.MIN_VOCAB_SIZE:
        raise UsageError(
            f"--vocab_size {args.vocab_size} is smaller than the byte alphabet plus special tokens "
            f"({bpe.BYTE_ALPHABET_SIZE} + {len(bpe.SPECIAL_TOKENS)} = {bpe.MIN_VOCAB_SIZE})"
        )
    if args.vocab_size > MAX_VOCAB_SIZE:
        raise UsageError(
            f"--vocab_size {args.vocab_size} is above {MAX_VOCAB_SIZE:,}: no model's vocabulary is near that "
            "(the largest in use hold about 256k tokens)"
        )
    if args.min_frequency < 1:
        raise UsageError(f"--min_frequency {args.min_frequency} must be at least 1")
    if args.max_pretokens < 1000:
        raise UsageError(f"--max_pretokens {args.max_pretokens} is too small to learn from (at least 1000)")
    if args.max_token_length is not None and args.max_token_length < 2:
        raise UsageError(f"--max_token_length {args.max_token_length} must be at least 2")
    out = Path(args.output_dir)
    check_writable_folder(out, "--output_dir")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output_dir {out} is a file, not a folder")
    specs, files = args.resolve_sources()
    max_bytes = None if args.max_bytes.strip().lower() == "all" else parse_size(args.max_bytes, "--max_bytes")
    plans = plan_mixture(specs, files, max_bytes, read_options(args))
    validation = {}
    for item in args.validation_files:
        lang, sep, globs = item.partition("=")
        if not sep or not lang or not globs:
            raise UsageError(f"--validation_files {item!r}: expected LANG=GLOB[,GLOB...]")
        if lang in validation:  # the second replaced the first without a word
            raise UsageError(f"--validation_files: {lang} given twice; give each language once: {lang}=GLOB[,GLOB...]")
        validation[lang] = resolve_files(parse_file_source(globs), flag="--validation_files")
    # a tokenizer fitted to its own test text flatters itself
    check_not_held_out(files, list(validation), list(validation.values()))
    held_out = [(f"--validation_files {lang}'s file", path) for lang, paths in validation.items() for path in paths]
    check_holds_no_input(out, local_paths(specs, files) + held_out, "--output_dir")  # it is replaced whole
    check_replaceable_tokenizer_folder(out, args.overwrite)
    return plans, validation


def batched_texts(plans, opts: ReadOptions, stats: list[ReadStats], seed: int, split: str, bar, batch_docs=512):
    """All sources' sampled documents in batches, advancing the progress bar."""
    for plan, st in zip(plans, stats, strict=True):
        batch, batch_bytes = [], 0
        for doc in sample_source(plan, opts, st, seed, split):
            batch.append(doc)
            if len(batch) == batch_docs:
                bar.update(st.bytes - batch_bytes)
                batch_bytes = st.bytes
                yield batch
                batch = []
        if batch:
            bar.update(st.bytes - batch_bytes)
            yield batch


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def pretoken_line(p: dict) -> str:
    kept = (
        "all counted exactly" if p["sample_level"] == 0 else f"light Han runs sampled 1 in {2 ** p['sample_level']:,}"
    )
    return f"{p['counted']:,} counted, {p['distinct_kept']:,} distinct kept ({kept})"


def format_report(report: dict) -> str:
    w = max([8, *(len(s["name"]) for s in report["sources"]), *map(len, report["validation"])])
    lines = [
        "",
        f"{'source':<{w}} {'files':>5} {'docs':>9} {'text read':>12} {'share':>6} {'passes':>6} {'skipped':>7}",
    ]
    total = sum(s["bytes"] for s in report["sources"]) or 1
    for s in report["sources"]:
        files = s["files"] if s["files"] is not None else "-"
        lines.append(
            f"{s['name']:<{w}} {files:>5} {s['docs']:>9,} {_mb(s['bytes']):>12} "
            f"{s['bytes'] / total:>6.1%} {s['passes']:>6} {s['skipped_lines']:>7}"
        )
    asked = report["arguments"]["vocab_size"]
    short = f" (asked for {asked:,}: the text has too few frequent pairs)" if report["vocab_size"] < asked else ""
    lines += [
        "",
        f"vocab size   {report['vocab_size']:,}{short}",
        f"pre-tokens   {pretoken_line(report['pretokens'])}",
        f"time         {report['time_s']['read_and_train']:.1f} s to read and train",
        f"peak memory  {report['peak_memory_mb']:,.0f} MB (resident)",
    ]
    if report["validation"]:
        lines += [
            "",
            f"{'held-out':<{w}} {'docs':>6} {'text':>11} {'tokens':>11} {'chars/token':>12} {'bytes/token':>12}",
        ]
        for lang, c in report["validation"].items():
            lines.append(
                f"{lang:<{w}} {c['docs']:>6,} {_mb(c['bytes']):>11} {c['tokens']:>11,} "
                f"{c['chars_per_token']:>12.3f} {c['bytes_per_token']:>12.3f}"
            )
    else:
        lines += ["", "no --validation_files given: no held-out compression measured"]
    return "\n".join(lines)


def save(hf_tokenizer, report: dict, output_dir: Path) -> None:
    with atomic_folder(output_dir) as tmp, disk_full_is_one_line(output_dir):
        hf_tokenizer.save_pretrained(str(tmp))
        atomic_write_text(tmp / "training_report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def run(args: TrainBPEArguments) -> dict:
    from tqdm.auto import tqdm

    plans, validation = validate(args)
    opts = read_options(args)
    stats = [ReadStats() for _ in plans]
    total = sum(p.budget for p in plans)
    start = time.perf_counter()
    bar_total = None if math.isinf(total) else int(total)
    # disable=None: a bar on a terminal only, so logs and piped stderr keep just the messages
    with tqdm(total=bar_total, unit="B", unit_scale=True, desc="reading text", disable=None) as bar:
        texts = batched_texts(plans, opts, stats, args.seed, args.dataset_split, bar)
        counter = bpe.count_pretokens(texts, args.max_pretokens)
    if sum(s.bytes for s in stats) == 0:
        raise UsageError("the corpus is empty: no document with text in any source")
    pretokens = {"counted": counter.pretokens_seen, "distinct_kept": len(counter), "sample_level": counter.level}
    tok = bpe.train_from_counts(counter, args.vocab_size, args.min_frequency, args.max_token_length)
    train_time = time.perf_counter() - start
    peak_kib = peak_memory_kib(counter)

    val_cap = parse_size(args.validation_max_bytes, "--validation_max_bytes")
    compression = {}
    for lang, files in validation.items():
        docs = read_documents(files, opts, val_cap)
        if not docs:
            raise UsageError(f"--validation_files {lang}: no document with text")
        compression[lang] = bpe.measure_compression(tok, docs).as_dict()

    report = {
        "vocab_size": tok.get_vocab_size(),
        "special_tokens": list(bpe.SPECIAL_TOKENS),
        "pretokenize_pattern": bpe.PRETOKENIZE_PATTERN,
        "sources": [
            {
                "name": p.spec.name,
                "weight": p.spec.weight,
                "dataset": p.spec.dataset,
                "files": None if p.spec.is_dataset else len(st.files),
                "docs": st.docs,
                "bytes": st.bytes,
                "passes": st.passes,
                "skipped_lines": st.skipped_lines,
            }
            for p, st in zip(plans, stats, strict=True)
        ],
        "pretokens": pretokens,
        "time_s": {"read_and_train": round(train_time, 2)},
        "peak_memory_mb": round(peak_kib / 1024, 1),  # counting processes included (counting.peak_memory_kib)
        "validation": compression,
        "arguments": asdict(args),
    }
    save(bpe.to_transformers(tok), report, Path(args.output_dir))
    return report


def main(argv: list[str] | None = None) -> int:
    args = None
    try:  # the import too: Ctrl-C during its seconds was a KeyboardInterrupt traceback
        from transformers import HfArgumentParser

        parser = refuse_in_one_line(
            HfArgumentParser(TrainBPEArguments, prog=PROG, description=__doc__.split("\n\n")[0])
        )
        (args,) = parser.parse_args_into_dataclasses(args=argv)
        report = run(args)
    except UsageError as err:
        return print_error(PROG, err)
    except KeyboardInterrupt:  # Ctrl-C: the folder is written whole or not at all, so there is nothing to clean
        return print_interrupted(PROG, left_whole(args.output_dir) if args else "nothing was written")
    print(format_report(report))
    print(f"\nsaved to {args.output_dir} (AutoTokenizer.from_pretrained loads it)")
    return 0


if __name__ == "__main__":
    # a Ctrl-C that main() lets through is one line too, with the exit status for Ctrl-C
    with ctrl_c_is_one_line(PROG):
        sys.exit(main())
