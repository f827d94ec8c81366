"""What a --streaming run's checkpoint positions depend on (its "stream key"), built from the sources as resolved
without opening them, and how two keys differ, in the flags that change them: streaming.StreamLoader refuses a
position of another stream with it, and resume_checks compares the key before anything is read."""

from __future__ import annotations

from shuangyu.data.stream_sources import StreamSource, files_digest
from shuangyu.tokenizer.loading import tokenizer_fingerprint

# what differs between a checkpoint's stream and this run's, as the flag that changes it
KEY_FLAGS = {
    "sources": "--train_files/--dataset_name (the sources, their weights or their files)",
    "split": "--dataset_split",
    "text_column": "--text_column",
    "tokenizer": "--tokenizer_name",
    "block_size": "--block_size",
    "window": "--shuffle_window",
    "validation": "--validation_files/--validation_docs",
    "seed": "--seed",
    "world_size": "the number of processes",
}


def stream_key(
    sources: list[StreamSource], tokenizer, block_size: int, *, split: str, text_column: str, window: int,
    validation: dict, seed: int, world_size: int, earlier: bool = False,
) -> dict:  # fmt: skip
    """What a stream's positions depend on (StreamedData.key), from the sources as resolved, without opening them:
    so a resume can compare it before anything is read (resume_checks.check_data). `validation`:
    {"first_docs": N}, or {"files": [(name, paths), ...]}."""
    weights = [s.spec.weight or 1.0 for s in sources]
    shares = [w / sum(weights) for w in weights]
    if "files" in validation:
        validation = {"files": [[name, files_digest(paths, earlier)] for name, paths in validation["files"]]}
    return {
        "sources": [s.fingerprint(split, share, earlier) for s, share in zip(sources, shares, strict=True)],
        "split": split,
        "text_column": text_column,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "block_size": block_size,
        "window": window,
        "validation": validation,
        "seed": seed,
        "world_size": world_size,
    }


def describe_key_change(before: dict, now: dict) -> str:
    """What differs between two stream keys (or resume_checks' record of a prepared run's sources), as the flags
    that change it: which sources, weights or source's files, then the other flags."""
    names = [*KEY_FLAGS, *sorted((before.keys() | now.keys()) - KEY_FLAGS.keys())]
    said = [
        sources_change(before["sources"], now["sources"]) if name == "sources" else KEY_FLAGS.get(name, f"--{name}")
        for name in names
        if before.get(name) != now.get(name)
    ]
    return "; ".join(said)


def sources_change(before: list[dict], now: list[dict]) -> str:
    """Which sources, weights or files differ, in words like prepare's ("the sources (zh, en -> zh)")."""
    names_before, names_now = [s["name"] for s in before], [s["name"] for s in now]
    if names_before != names_now:
        return f"the sources ({', '.join(names_before)} -> {', '.join(names_now)})"
    shares = [[s.get("share", s.get("weight")) for s in entries] for entries in (before, now)]
    if shares[0] != shares[1]:
        mix = [
            ", ".join(f"{n} {'-' if w is None else f'{w:g}'}" for n, w in zip(names_now, ws, strict=True))
            for ws in shares
        ]
        return f"the weights ({mix[0]} -> {mix[1]})"
    for old, new in zip(before, now, strict=True):
        if old == new:
            continue
        if "dataset" in old or "dataset" in new:
            return f"the dataset of source {new['name']} (--dataset_name, --dataset_split)"
        count = f" ({old.get('files')} -> {new.get('files')})" if old.get("files") != new.get("files") else ""
        return f"the files of source {new['name']}{count}"
    return KEY_FLAGS["sources"]
