"""What every consumer of a saved model folder (evaluation, the push, chat, merge_lora) checks first, and a LoRA
adapter folder loaded on its base model."""

from __future__ import annotations

import json
from pathlib import Path

from shuangyu.errors import UsageError
from shuangyu.library_warnings import reading_the_old_checkpointing_name


def check_model_folder(folder: Path) -> dict:
    """The folder's config.json, after checking that it is a model folder with a tokenizer."""
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder")
    adapter = not (folder / "config.json").is_file() and (folder / "adapter_config.json").is_file()
    if not (folder / "config.json").is_file() and not adapter:
        raise UsageError(f"{folder} is not a checkpoint folder (no config.json)")
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise UsageError(
            f"{folder} has no tokenizer (no tokenizer.json / tokenizer_config.json): save one with the model"
        )
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("pytorch_model*.bin")):
        raise UsageError(f"{folder} has no *.safetensors weights: save the model with save_pretrained")
    if adapter:  # a LoRA adapter (a --lora_r run's folder): chat loads it on its base; the push refuses it
        return {"adapter": json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))}
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


def is_chat_folder(folder: Path) -> bool:
    """A chat model's folder (written by an SFT, DPO or merge run): its generation stops at <|im_end|>. A LoRA
    adapter has no generation config of its own: its model card's `conversational` tag says it."""
    card = folder / "README.md"
    if (folder / "adapter_config.json").is_file() and card.is_file():
        front = card.read_text(encoding="utf-8").split("\n---", 1)[0]
        return "- conversational" in front
    try:
        eos = json.loads((folder / "generation_config.json").read_text(encoding="utf-8")).get("eos_token_id")
        added = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")).get("added_tokens", [])
    except (OSError, json.JSONDecodeError):
        return False
    eos = eos if isinstance(eos, list) else [eos]
    return any(t.get("content") == "<|im_end|>" and t.get("id") in eos for t in added)  # the chat end token


def adapter_base(adapter_dir: Path, base_model: str | None) -> str:
    """The base model of a LoRA adapter folder: `base_model` (a --base_model flag) or the one the adapter names
    (adapter_config.json's base_model_name_or_path, a path on the machine it was trained on)."""
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise UsageError(f"{adapter_dir}: no adapter_config.json (not a LoRA adapter folder)")
    if base_model and not Path(base_model).exists() and base_model.startswith((".", "/", "~")):
        raise UsageError(f"--base_model {base_model}: no such folder")  # not a Hub id: not sent to the Hub as one
    base = base_model or json.loads(config_path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise UsageError(f"{config_path}: names no base model; pass --base_model")
    # a Hub id is OWNER/NAME: a name with more parts, or one that starts like a path, is a folder that has moved
    # (or, in adapters saved before base paths were recorded absolute, one relative to where training ran)
    if not base_model and not Path(base).exists() and (base.startswith((".", "/", "~")) or base.count("/") > 1):
        where = "" if Path(base).expanduser().is_absolute() else f" (relative to {Path.cwd()})"
        raise UsageError(f"{config_path}: the base model {base} is not there{where}; pass --base_model")
    return base


def load_adapter_model(adapter_dir: Path, base_model: str | None = None):
    """(the base model with the adapter on it (PEFT), in eval mode, fp32; the base model's name)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = adapter_base(adapter_dir, base_model)
    try:
        model = AutoModelForCausalLM.from_pretrained(base, trust_remote_code=True, dtype="float32")
    except (OSError, ValueError) as err:
        raise UsageError(f"base model {base}: could not load it ({err})") from None
    with reading_the_old_checkpointing_name():
        return PeftModel.from_pretrained(model, str(adapter_dir)).eval(), base
