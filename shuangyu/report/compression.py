"""How well a tokenizer compresses held-out text per language, next to GPT-2's and MiniMind's (the reference
tokenizers in ../shared/data/tokenizers): more characters and bytes per token means shorter sequences, so
more text per step and per context window."""

from __future__ import annotations

from pathlib import Path

from shuangyu.errors import UsageError

REFERENCES = {"GPT-2": "gpt2", "MiniMind": "minimind"}


def compression(tokenizer_json: Path, texts: list[str]) -> dict:
    """Characters and UTF-8 bytes per token of `texts`, encoded without special tokens."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tokens = sum(len(enc.ids) for enc in tok.encode_batch(texts, add_special_tokens=False))
    chars = sum(len(text) for text in texts)
    size = sum(len(text.encode("utf-8")) for text in texts)
    return {
        "vocab_size": tok.get_vocab_size(),
        "tokens": tokens,
        "chars_per_token": chars / max(tokens, 1),
        "bytes_per_token": size / max(tokens, 1),
    }


def reference_tokenizers(references: Path | None, required: bool = True) -> list[tuple[str, Path]]:
    """(name, tokenizer.json) of each reference tokenizer: `references` is a tokenizer folder itself or a folder of
    them (GPT-2's and MiniMind's first, by their folder names gpt2 and minimind). One holding none is refused when
    `required` (the user named it), else left out (the default folder, where there is no shared/ checkout)."""
    if references is None:
        return []
    folders = [references] if (references / "tokenizer.json").is_file() else []
    if not folders and references.is_dir():
        folders = sorted(d for d in references.iterdir() if (d / "tokenizer.json").is_file())
    if not folders and required:
        raise UsageError(
            f"--references {references}: no tokenizer.json in it or in its subfolders; give a tokenizer folder or a "
            "folder of them"
        )
    names = {folder: name for name, folder in REFERENCES.items()}
    known = [d for d in folders if d.name in names]
    found = sorted(known, key=lambda d: list(names).index(d.name)) + [d for d in folders if d not in known]
    return [(names.get(d.name, d.name), d / "tokenizer.json") for d in found]


def compression_rows(
    tokenizer_json: Path, texts: dict[str, list[str]], references: list[tuple[str, Path]]
) -> list[dict]:
    """One row per tokenizer (this run's first, then each of `references`), with {lang: compression} per language."""
    rows = []
    for name, path in [("this run's", tokenizer_json), *references]:
        per_lang = {lang: compression(path, docs) for lang, docs in texts.items()}
        vocab = next(iter(per_lang.values()))["vocab_size"] if per_lang else None
        rows.append({"tokenizer": name, "vocab_size": vocab, "languages": per_lang})
    return rows


def compression_table(rows: list[dict]) -> str:
    langs = list(rows[0]["languages"]) if rows else []
    head = "| tokenizer | vocabulary | " + " | ".join(f"{lang} chars/token | {lang} bytes/token" for lang in langs)
    lines = [head + " |", "|---|---:|" + "---:|---:|" * len(langs)]
    for row in rows:
        cells = [f"{row['languages'][lang][k]:.3f}" for lang in langs for k in ("chars_per_token", "bytes_per_token")]
        lines.append(f"| {row['tokenizer']} | {row['vocab_size']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
