"""The preference pairs of a DPO run (`python -m shuangyu.training.dpo`): read and checked from files or a Hub
dataset, and, once TRL has tokenized them, how many it leaves out or cuts to --max_length (told in one line)."""

from __future__ import annotations

import sys

from shuangyu.errors import UsageError
from shuangyu.text.conversations import iter_dataset_records, iter_file_records, read_preference
from shuangyu.text.sources import parse_dataset_source, parse_file_source, resolve_files
from shuangyu.tokenizer.special_tokens import SPECIAL_TOKENS

PROG = "python -m shuangyu.training.dpo"  # the command that reads them (dpo.py), which names its notes


def read_pairs(specs: list[str], flag: str) -> list[dict]:
    """The checked preference pairs of the files; text that spells a special token is refused (TRL tokenizes the
    rendered template as one string, where it would become the token itself)."""
    pairs = []
    for spec in specs:
        read = [
            check_no_control_text(read_preference(r, where), where)
            for path in resolve_files(parse_file_source(spec, flag), flag=flag)
            for where, r in iter_file_records(path)
        ]
        if not read:  # an empty file: said here, by name, not as TRL's traceback or an unnamed "no data"
            raise UsageError(f"{flag} {spec}: no preference pairs (empty file?); give it pairs, or leave it out")
        pairs += read
    return pairs


def check_no_control_text(pair: dict, where: str) -> dict:
    for key in ("prompt", "chosen", "rejected"):
        for message in pair[key]:
            found = [t for t in SPECIAL_TOKENS if t in message["content"]]
            if found:
                raise UsageError(f"{where}: {key} contains the special token text {found[0]}; remove it from the data")
    return pair


def load_pairs(args) -> tuple[list[dict], list[dict]]:
    if args.dataset_name:
        spec = parse_dataset_source(args.dataset_name, "--dataset_name")
        train = [
            check_no_control_text(read_preference(r, where), where)
            for where, r in iter_dataset_records(spec, args.dataset_split)
        ]
        if not train:
            raise UsageError(f"--dataset_name {args.dataset_name}: no preference pairs in split {args.dataset_split}")
    elif args.train_files:
        train = read_pairs(args.train_files, "--train_files")
    else:
        raise UsageError("no preference pairs: give --train_files (or --dataset_name)")
    return train, read_pairs(args.validation_files, "--validation_files")


def fitted_pairs(given: int, prepared, max_length: int) -> dict:
    """How TRL's DPOTrainer (1.16) fits `given` pairs into max_length, counted on its prepared dataset (prompt_ids,
    chosen_ids, rejected_ids): a pair whose prompt alone fills max_length is dropped there (no reply token would
    be left), and prompt + reply longer than max_length is cut when batched, losing the end of the reply."""
    rows = prepared.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"])
    cut = sum(len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) > max_length for r in rows)
    return {"pairs": given, "left_out": given - len(rows), "cut": cut, "used": len(rows)}


def check_fits(fits: dict, max_length: int, context: int, tell: bool) -> None:
    """Refuse data of which nothing is left; else tell in one line what TRL leaves out or cuts (its own notice is a
    progress bar, hidden off a terminal)."""
    fix = (
        f"raise --max_length (the model's context is {context})"
        if max_length < context
        else "that is the model's context: shorten those pairs to train on them whole"
    )
    for split, flag in (("train", "--train_files"), ("validation", "--validation_files")):
        if split in fits and not fits[split]["used"]:
            raise UsageError(f"{flag}: every pair's prompt is --max_length {max_length} tokens or longer; {fix}")
    named = [(fits[s], name) for s, name in (("train", "training"), ("validation", "held-out")) if s in fits]

    def counted(key: str) -> str:
        return " and ".join(f"{f[key]:,} of {f['pairs']:,} {name} pairs" for f, name in named if f[key])

    parts = [f"{counted('left_out')} are left out (the prompt alone is that long)"] if counted("left_out") else []
    parts += [f"{counted('cut')} are cut to that length (the end of a reply is lost)"] if counted("cut") else []
    if parts and tell:
        print(f"{PROG}: note: --max_length {max_length}: {'; '.join(parts)}; {fix}", file=sys.stderr, flush=True)
