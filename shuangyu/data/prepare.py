"""The data pipeline's command: mixed zh/en text -> tokenized, packed, cached token blocks.

    python -m shuangyu.data.prepare --tokenizer_name outputs/tokenizer --output_dir outputs/data \\
        --files "zh=corpus/zh/*.jsonl:0.5" "en=corpus/en/*.jsonl:0.5" --exclude "*_val.jsonl" \\
        --validation_files "zh=corpus/zh/*_val.jsonl" "en=corpus/en/*_val.jsonl" --block_size 1024

Sources are named as in the tokenizer trainer (shuangyu.text.sources). `prepare` reads every document
(documents.py: errors name file:line), tokenises through `datasets.map(batched=True, num_proc=N)`, appends the
`<|endoftext|>` id to each document, holds out whole documents for validation, mixes the sources in *tokens*
to their weights, shuffles documents and packs them end to end into rows of `block_size` tokens (packing.py;
no padding; the tail shorter than a block is dropped and reported). Arrow (through `datasets`) is used while
preparing, where its multiprocess `map` is what we need; training reads flat memory-mapped files
(prepared.py, loader.py).

The manifest holds a key (inputs.py): a hash of the tokenizer, the sources (every file's path, size and mtime),
the weights (as shares), the validation rule, the seed and the block size, and the inputs it hashes. A second
`prepare` with the same key does no work; any change rebuilds, and says what changed. The manifest also holds a
hash of the blocks themselves (`blocks_sha256`): a checkpoint's data position is for these, so a run resumes over
blocks prepared again the same (a corpus copied anew changes every file's mtime, not the blocks). The folder is
written to a temporary sibling and renamed into place, so a failure never leaves a half-written cache.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np

from shuangyu.data.documents import read_documents_for_arrow, tokenize_documents, unwrap_usage_error
from shuangyu.data.inputs import (
    FORMAT_VERSION,
    Inputs,
    PrepareArguments,
    hash_key,
    key_inputs,
    normalised_weights,
    plan_inputs,
    say_why_prepared_again,
)
from shuangyu.data.packing import flat_tokens, mix_documents, token_dtype, write_packed
from shuangyu.data.prepared import (
    MANIFEST,
    PROG,
    TRAIN_FILE,
    VALIDATION_FILE,
    PreparedData,
    read_manifest,
    record_blocks,
)
from shuangyu.errors import (
    UsageError,
    ctrl_c_is_one_line,
    ctrl_c_remembered,
    exception_chain,
    forks_leave_ctrl_c_to_this_process,
    left_whole,
    print_error,
    print_interrupted,
    refuse_in_one_line,
    stop_if_ctrl_c_was_seen,
)
from shuangyu.files import atomic_folder, check_writable_folder, disk_full_is_one_line
from shuangyu.text.readers import ReadStats
from shuangyu.tokenizer.loading import load_tokenizer, tokenizer_fingerprint
from shuangyu.tokenizer.special_tokens import EOS_TOKEN


def check_existing(args: PrepareArguments, tokenizer_sha: str) -> dict | None:
    """The manifest of an existing --output_dir, after refusing to replace what the user may need."""
    out, flag = Path(args.output_dir), args.flag("--output_dir")
    # train_clm.py has no --overwrite for its data folder: another folder is the way there
    it, them = ("pass --overwrite to replace it, or ", "pass --overwrite to replace them, or ")
    if not args.flag("--overwrite"):
        it = them = ""
    if not out.exists():
        return None
    if not out.is_dir():
        raise UsageError(f"{flag} {out} is a file, not a folder")
    manifest = read_manifest(out)
    if manifest is None:
        # --overwrite replaces earlier prepared data, never a folder of other files (a training run, a corpus)
        if (out / MANIFEST).is_file() and not args.overwrite:
            raise UsageError(f"{flag} {out} holds data prepared by another version; {it}choose another {flag}")
        if not (out / MANIFEST).is_file() and any(out.iterdir()):
            raise UsageError(f"{flag} {out} exists and holds no prepared data; choose another {flag}")
        return None
    if manifest["tokenizer"]["sha256"] != tokenizer_sha and not args.overwrite:
        theirs = manifest["tokenizer"]
        raise UsageError(
            f"{flag} {out} holds blocks of another tokenizer ({theirs['name']}, vocab {theirs['vocab_size']:,}); "
            f"{them}choose another {flag}"
        )
    return manifest


def prepare(args: PrepareArguments, show_progress: bool = True, say=print) -> PreparedData:
    """Tokenise, split, mix and pack the sources into `args.output_dir`, unless it is already up to date; `say`
    tells why an existing folder is prepared again."""
    import datasets

    check_writable_folder(args.output_dir, args.flag("--output_dir"))
    inputs = plan_inputs(args)
    tok = load_tokenizer(args.tokenizer_name)
    sha = tokenizer_fingerprint(tok)
    recorded = key_inputs(args, inputs, sha)
    key = hash_key(recorded)
    out = Path(args.output_dir)
    existing = check_existing(args, sha)
    if existing is not None and existing["key"] == key:
        return PreparedData(out, existing, reused=True)
    because = say_why_prepared_again(out, existing, recorded, say)

    start = time.perf_counter()
    show_progress = show_progress and sys.stderr.isatty()  # a log file gets no bars full of carriage returns
    if not show_progress:
        datasets.disable_progress_bars()
    try:
        with atomic_folder(out) as tmp, disk_full_is_one_line(out, args.flag("--output_dir")):
            stats = [ReadStats() for _ in inputs.all]
            docs, read_s = tokenize_sources(args, inputs, tok, key, stats, tmp / "arrow")
            times = {"read": round(read_s, 2), "tokenize": round(time.perf_counter() - start - read_s, 2)}
            topped_up = hold_out_a_block_each(args, inputs, docs)
            train, mix = pack_training(args, inputs, docs, tmp / TRAIN_FILE)
            validation = pack_validation(args, inputs, docs, tmp / VALIDATION_FILE, topped_up)
            times["total"] = round(time.perf_counter() - start, 2)
            manifest = build_manifest(args, inputs, docs, tok, key, sha, stats, mix, train, validation, times)
            manifest["inputs"] = recorded
            record_blocks(manifest, tmp, existing, out)
            del docs  # release the Arrow memory maps before their files are deleted with the folder
            stop_if_ctrl_c_was_seen()  # a Ctrl-C that a __del__ swallowed: the folder stays as it was
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
            shutil.rmtree(tmp / "arrow", ignore_errors=True)  # the Arrow cache was only a means
    finally:
        if not show_progress:
            datasets.enable_progress_bars()
    return PreparedData(out, manifest, rebuilt_because=because)


class TokenizedDocuments:
    """Every document's source, held-out flag and token ids, as flat numpy arrays over the Arrow table."""

    def __init__(self, table):
        self.source = table.column("source").to_numpy().astype(np.int64)
        self.held = table.column("held_out").to_numpy(zero_copy_only=False)
        self.offsets, self.values = flat_tokens(table.column("input_ids"))
        self.tokens = np.diff(self.offsets)
        self._table = table  # keeps the memory maps behind `values` alive


def tokenize_sources(args, inputs: Inputs, tok, key: str, stats: list[ReadStats], arrow_dir: Path):
    """Read every source (here, for file:line errors) and tokenise on `num_proc` processes; returns the
    documents and the seconds spent reading."""
    import datasets

    start = time.perf_counter()
    dtype = token_dtype(len(tok))
    try:
        texts = datasets.Dataset.from_generator(
            read_documents_for_arrow,
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
        usage_error = unwrap_usage_error(err)
        if usage_error is not None:
            raise usage_error from None
        if sum(st.docs for st in stats) == 0:  # datasets cannot make a table of no rows
            raise UsageError(
                "the corpus is empty: no document with text in any source (check the files and --text_column)"
            ) from None
        raise
    read_s = time.perf_counter() - start
    try:
        tokenized = tokenize_texts(args, texts, tok, key, dtype, validation_fraction(args, inputs), len(inputs.sources))
    except Exception as err:
        # Ctrl-C: datasets' pool meets it while collecting the processes' results and raises another error from it
        # (multiprocess's TimeoutError); the command's one line for Ctrl-C is for the KeyboardInterrupt
        if any(isinstance(cause, KeyboardInterrupt) for cause in exception_chain(err)):
            raise KeyboardInterrupt from None
        raise
    return TokenizedDocuments(tokenized.data), read_s


def tokenize_texts(args, texts, tok, key: str, dtype: np.dtype, fraction: float, first_validation: int):
    """The documents' token ids (and held-out flags), tokenised on `num_proc` processes."""
    import datasets

    workers = min(args.num_proc, len(texts))  # datasets warns, then does the same, given more than rows
    with datasets_pool_left_to_this_process():
        return texts.with_format("arrow").map(
            tokenize_documents,
            batched=True,
            batch_size=1000,
            num_proc=workers if workers > 1 else None,
            remove_columns=["text"],
            fn_kwargs={
                "tokenizer": tok,
                "eos_token_id": tok.convert_tokens_to_ids(EOS_TOKEN),
                "seed": args.seed,
                "fraction": fraction,
                "first_validation": first_validation,
                "dtype": dtype.name,
                "parent_pid": os.getpid(),
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


@contextmanager
def datasets_pool_left_to_this_process():
    """For `datasets.map(num_proc=N)`: the processes it forks (the pool's and the manager process they talk to)
    ignore Ctrl-C, which this process handles (datasets takes the pool down on the way out), and any of them still
    running when this process stops are ended. A Ctrl-C while datasets was still setting the pool up left one
    running that nothing would stop, and multiprocess waits for its processes at exit: the command hung."""
    import multiprocess

    before = set(multiprocess.active_children())
    try:
        with forks_leave_ctrl_c_to_this_process():
            yield
    except BaseException:
        for process in set(multiprocess.active_children()) - before:
            process.terminate()
        raise


def validation_fraction(args: PrepareArguments, inputs: Inputs) -> float:
    return 0.0 if inputs.validation else args.validation_fraction


def hold_out_a_block_each(args, inputs: Inputs, docs: TokenizedDocuments) -> set[str]:
    """Without --validation_files: a source whose --validation_fraction of documents makes no block (0.5% of a few
    hundred documents is none) would drop out of validation unsaid. Hold out more of its documents, in a seeded
    order, until they fill one block, but never more than half of them; returns the names of the sources topped
    up, for the report to say so."""
    fraction = validation_fraction(args, inputs)
    if fraction <= 0:
        return set()
    topped_up = set()
    for index, spec in enumerate(inputs.sources):
        mine = np.flatnonzero(docs.source == index)
        held = mine[docs.held[mine]]
        missing = args.block_size - int(docs.tokens[held].sum())
        room = len(mine) // 2 - len(held)
        if missing <= 0 or room <= 0:
            continue
        order = np.random.default_rng([args.seed, 3, index]).permutation(mine[~docs.held[mine]])
        enough = int(np.searchsorted(np.cumsum(docs.tokens[order]), missing)) + 1
        docs.held[order[: min(enough, room)]] = True
        topped_up.add(spec.name)
    return topped_up


def pack_training(args, inputs: Inputs, docs: TokenizedDocuments, path: Path) -> tuple[dict, list[dict]]:
    """Mix the training documents in tokens and pack them into `path`; returns the train entry and the mix."""
    weights = normalised_weights(inputs.sources)
    train_docs = np.flatnonzero(~docs.held)
    order, mix = mix_documents(
        docs.source[train_docs], docs.tokens[train_docs], len(inputs.sources), weights, inputs.max_tokens, args.seed
    )
    starved = [
        spec for spec, m in zip(inputs.sources, mix, strict=True) if m["tokens_available"] and not m["tokens_taken"]
    ]
    if weights is not None and starved:  # it would be read, then left out of training without a word
        total = sum(m["tokens_taken"] for m in mix)
        raise UsageError(
            f"{args.flag('--files')} {starved[0].name}: weight {starved[0].weight:g} gives it none of the {total:,} "
            "training tokens: raise its weight, or leave the source out"
        )
    order = train_docs[order]
    with open(path, "wb") as fh:
        blocks, dropped = write_packed(order, docs.offsets, docs.values, args.block_size, fh)
    if blocks == 0:
        raise UsageError(
            f"the corpus yields {int(docs.tokens[order].sum()):,} training tokens, fewer than one block of "
            f"--block_size {args.block_size}: add text or lower --block_size"
        )
    train = {"file": TRAIN_FILE, "blocks": blocks, "tokens": blocks * args.block_size, "tokens_dropped": dropped}
    return train, mix


def pack_validation(args, inputs: Inputs, docs: TokenizedDocuments, path: Path, topped_up: set[str]) -> dict:
    """Pack each validation source's held-out documents, one after the other, into `path`."""
    n_train = len(inputs.sources)
    groups = (
        [(s.name, n_train + i) for i, s in enumerate(inputs.validation)]
        if inputs.validation
        else [(s.name, i) for i, s in enumerate(inputs.sources)]
    )
    validation, first_block = {}, 0
    with open(path, "wb") as fh:
        for name, src in groups:
            chosen = np.flatnonzero(docs.held & (docs.source == src))
            if inputs.validation and not len(chosen):  # else the language drops out of validation unsaid
                spec = inputs.validation[src - n_train]
                raise UsageError(
                    f"--validation_files {name}={','.join(spec.patterns)}: no document with text (empty files?); give "
                    "it text, or leave the source out"
                )
            blocks, dropped = write_packed(chosen, docs.offsets, docs.values, args.block_size, fh)
            if inputs.validation and not blocks:  # as good as no documents
                spec = inputs.validation[src - n_train]
                raise UsageError(
                    f"--validation_files {name}={','.join(spec.patterns)}: {int(docs.tokens[chosen].sum()):,} tokens, "
                    f"fewer than one block of --block_size {args.block_size}; give it more text, lower --block_size, "
                    "or leave the source out"
                )
            validation[name] = {
                "docs": len(chosen),
                "tokens": int(docs.tokens[chosen].sum()),
                "first_block": first_block,
                "blocks": blocks,
                "tokens_dropped": dropped,
                "topped_up": name in topped_up,
            }
            first_block += blocks
    return validation


def build_manifest(args, inputs, docs, tok, key, sha, stats, mix, train, validation, times) -> dict:
    sources = [
        {
            "name": spec.name,
            "weight": spec.weight,
            "files": [str(p) for p in inputs.files[i]],
            "dataset": spec.dataset,
            "config": spec.config,
            "docs": stats[i].docs,
            "text_bytes": stats[i].bytes,
            "skipped_lines": stats[i].skipped_lines,
            "validation_docs": int(np.count_nonzero(docs.held & (docs.source == i))),
            **plan,
        }
        for i, (spec, plan) in enumerate(zip(inputs.sources, mix, strict=True))
    ]
    fraction = validation_fraction(args, inputs)
    text_bytes = sum(s.bytes for s in stats)
    return {
        "format": FORMAT_VERSION,
        "key": key,
        "tokenizer": {
            "name": args.tokenizer_name,
            "sha256": sha,
            "vocab_size": len(tok),
            "eos_token_id": tok.convert_tokens_to_ids(EOS_TOKEN),
        },
        "dtype": token_dtype(len(tok)).name,
        "block_size": args.block_size,
        "seed": args.seed,
        "train": train,
        "sources": sources,
        "validation": validation,
        "validation_rule": "files" if inputs.validation else f"hash of text < {fraction} (seed {args.seed})",
        "skipped_lines": sum(s.skipped_lines for s in stats),
        "text_bytes": text_bytes,
        "time_s": times,
        "text_mb_per_s": round(text_bytes / 1e6 / max(times["total"], 1e-9), 3),
        "arguments": asdict(args),
    }


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
        note = ""
        if v.get("topped_up"):
            note = f" (--validation_fraction {m['arguments']['validation_fraction']} made no block: more held out)"
        if not v["blocks"] and not v["docs"] and not m["arguments"]["validation_fraction"]:
            note += " (--validation_fraction 0: no validation asked for)"
        elif not v["blocks"]:
            note += f" (too little text for a block of {m['block_size']}: no validation for {name})"
        lines.append(f"validation   {name}: {v['docs']:,} docs, {v['tokens']:,} tokens, {v['blocks']:,} blocks{note}")
    lines.append(
        f"time         {m['time_s']['total']:.1f} s ({m['text_bytes'] / 1e6:,.1f} MB of text, {m['text_mb_per_s']:.2f} MB/s)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = None
    try:  # the import too: Ctrl-C during its seconds was a KeyboardInterrupt traceback
        with ctrl_c_remembered():
            from transformers import HfArgumentParser

            parser = refuse_in_one_line(
                HfArgumentParser(PrepareArguments, prog=PROG, description=__doc__.split("\n\n")[0])
            )
            (args,) = parser.parse_args_into_dataclasses(args=argv)
            data = prepare(args)
            stop_if_ctrl_c_was_seen()
    except UsageError as err:
        return print_error(PROG, err)
    except KeyboardInterrupt:  # Ctrl-C: the folder is written whole or not at all, so there is nothing to clean
        return print_interrupted(PROG, left_whole(args.output_dir) if args else "nothing was written")
    if data.reused:
        print(f"{data.path} is up to date (same tokenizer, sources, weights and block size): nothing to do")
    print(format_report(data))
    return 0


if __name__ == "__main__":
    # a Ctrl-C that main() lets through is one line too, with the exit status for Ctrl-C
    with ctrl_c_is_one_line(PROG):
        sys.exit(main())
