"""What every consumer of a saved model folder (evaluation, the push) checks first."""

from __future__ import annotations

import json
from pathlib import Path

from shuangyu.errors import UsageError


def check_model_folder(folder: Path) -> dict:
    """The folder's config.json, after checking that it is a model folder with a tokenizer."""
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder")
    if not (folder / "config.json").is_file():
        raise UsageError(f"{folder} is not a checkpoint folder (no config.json)")
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise UsageError(
            f"{folder} has no tokenizer (no tokenizer.json / tokenizer_config.json): save one with the model"
        )
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("pytorch_model*.bin")):
        raise UsageError(f"{folder} has no *.safetensors weights: save the model with save_pretrained")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{folder / 'config.json'}: not valid JSON ({err}); save the model again") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise UsageError(f"{folder / 'config.json'}: no model_type in it; save the model again with save_pretrained")
    return config


def needs_remote_code(config: dict) -> bool:
    """A Shuangyu folder carries its code (auto_map); an exported stock Llama folder does not need it."""
    return "auto_map" in config
