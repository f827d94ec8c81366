"""Loading a trained tokenizer for the data pipeline and training, naming it by what it does, and saving it
into a model folder without how it was loaded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from shuangyu.errors import UsageError
from shuangyu.files import atomic_write_text
from shuangyu.tokenizer.special_tokens import EOS_TOKEN

# Keys that from_pretrained puts into a tokenizer's init kwargs and save_pretrained writes back (5.x: is_local,
# local_files_only; older versions some of the others): they describe how that copy was loaded, not the
# tokenizer, and a saved local_files_only=True would follow the folder to the Hub and to every user's load.
LOAD_TIME_KEYS = (
    "local_files_only",
    "is_local",
    "_from_auto",
    "_commit_hash",
    "trust_remote_code",
    "cache_dir",
    "force_download",
    "proxies",
    "revision",
    "subfolder",
    "token",
    "use_auth_token",
    "name_or_path",
)


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
        if not Path(name).exists():  # OWNER/NAME: a Hub id or a folder not made yet (outputs/tokenizer)
            raise UsageError(
                f"--tokenizer_name {name}: no such folder here, and not loaded from the Hub ({type(err).__name__}: "
                f"{first_line}); train one with tokenizer/train_bpe.py --output_dir {name}, or name a Hub tokenizer"
            ) from None
        raise UsageError(f"--tokenizer_name {name!r}: could not load it ({type(err).__name__}: {first_line})") from None
    if getattr(tok, "backend_tokenizer", None) is None:
        raise UsageError(f"--tokenizer_name {name!r}: not a fast tokenizer; use the folder train_bpe.py writes")
    # a missing token converts to the unk id, but GPT-2's <|endoftext|> *is* its unk token: ask for the token back
    eos = tok.convert_tokens_to_ids(EOS_TOKEN)
    if eos is None or tok.convert_ids_to_tokens(eos) != EOS_TOKEN:
        raise UsageError(f"--tokenizer_name {name!r}: has no {EOS_TOKEN} token to end documents with")
    if cleans_up_after_bpe(tok.clean_up_tokenization_spaces, tok):
        tok.clean_up_tokenization_spaces = False
    return tok


def cleans_up_after_bpe(clean_up, tokenizer) -> bool:
    """GPT-2's tokenizer says clean_up_tokenization_spaces: true. transformers ignores it for a BPE tokenizer (the
    cleanup would eat spaces before punctuation) and warns at the first decode, in training's samples and in
    every user's pipeline(); false says what happens."""
    return bool(clean_up) and type(tokenizer.backend_tokenizer.model).__name__ == "BPE"


def without_load_time_keys(config: dict) -> dict:
    """A tokenizer_config.json's contents less LOAD_TIME_KEYS."""
    return {key: value for key, value in config.items() if key not in LOAD_TIME_KEYS}


def save_tokenizer(tokenizer, folder: str | Path) -> None:
    """`tokenizer.save_pretrained(folder)`, its tokenizer_config.json without LOAD_TIME_KEYS and with the context of
    the model saved there first: every model folder (a checkpoint's model/, final/, DPO's and merge_lora's output)
    saves its tokenizer through here."""
    tokenizer.save_pretrained(folder)
    path = Path(folder) / "tokenizer_config.json"
    config = without_load_time_keys(json.loads(path.read_text(encoding="utf-8")))
    # the model's context, saved beside it: train_bpe's tokenizer has none (transformers' 1e30 "no limit"), and
    # pipeline() and tools that read model_max_length then never truncate an input to what the model can take
    model_config = Path(folder) / "config.json"
    if model_config.is_file():
        context = json.loads(model_config.read_text(encoding="utf-8")).get("max_position_embeddings")
        if isinstance(context, int):
            config["model_max_length"] = context
    if cleans_up_after_bpe(config.get("clean_up_tokenization_spaces"), tokenizer):
        config["clean_up_tokenization_spaces"] = False
    # as save_pretrained writes it
    atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def tokenizer_fingerprint(tok) -> str:
    """sha256 of the tokenizer's tokenizer.json serialisation: it is what maps text to ids, and hashing the
    serialisation rather than a file makes a folder and the same tokenizer from the Hub hash alike."""
    return hashlib.sha256(tok.backend_tokenizer.to_str().encode("utf-8")).hexdigest()
