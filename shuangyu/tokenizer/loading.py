"""Loading a trained tokenizer for the data pipeline and training, and naming it by what it does."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from shuangyu.errors import UsageError
from shuangyu.tokenizer.special_tokens import EOS_TOKEN


def carries_own_code(folder: str | Path) -> bool:
    """A local model folder saved with its code (config.json with auto_map), e.g. a checkpoint's model/.
    AutoTokenizer reads config.json too, and would ask whether to trust that code."""
    config = Path(folder) / "config.json"
    return config.is_file() and "auto_map" in json.loads(config.read_text(encoding="utf-8"))


def looks_like_a_path(name: str) -> bool:
    """A Hub id is NAME or OWNER/NAME; a path starts with /, ./, ../ or ~, or has more than one slash."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    if looks_like_a_path(name) and not Path(name).exists():
        raise UsageError(f"--tokenizer_name {name}: no such folder (train one with tokenizer/train_bpe.py)")
    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=carries_own_code(name))
    except Exception as err:  # OSError, ValueError, ... depending on what is wrong with the folder or name
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise UsageError(f"--tokenizer_name {name!r}: could not load it ({type(err).__name__}: {first_line})") from None
    if getattr(tok, "backend_tokenizer", None) is None:
        raise UsageError(f"--tokenizer_name {name!r}: not a fast tokenizer; use the folder train_bpe.py writes")
    # a missing token converts to the unk id, but GPT-2's <|endoftext|> *is* its unk token: ask for the token back
    eos = tok.convert_tokens_to_ids(EOS_TOKEN)
    if eos is None or tok.convert_ids_to_tokens(eos) != EOS_TOKEN:
        raise UsageError(f"--tokenizer_name {name!r}: has no {EOS_TOKEN} token to end documents with")
    return tok


def tokenizer_fingerprint(tok) -> str:
    """sha256 of the tokenizer's tokenizer.json serialisation: it is what maps text to ids, and hashing the
    serialisation rather than a file makes a folder and the same tokenizer from the Hub hash alike."""
    return hashlib.sha256(tok.backend_tokenizer.to_str().encode("utf-8")).hexdigest()
