"""The model to train: its config (checked against the tokenizer and block size before any heavy work) and the
model itself, from a preset, a config file or pretrained weights."""

from __future__ import annotations

import math
from pathlib import Path

from shuangyu.errors import UsageError
from shuangyu.training.arguments import ModelArguments


def build_config(model_args: ModelArguments, tokenizer, block_size: int | None):
    from transformers import AutoConfig
    from transformers.utils import is_flash_attn_2_available

    if model_args.attn_implementation == "flash_attention_2" and not is_flash_attn_2_available():
        raise UsageError(
            "--attn_implementation flash_attention_2: the flash-attn package is not installed (it needs a CUDA "
            "GPU: pip install flash-attn --no-build-isolation); use sdpa, or flex_attention on a GPU"
        )

    from shuangyu.modeling import PRESETS, ShuangyuConfig
    from shuangyu.modeling.config_json import read_model_config

    if model_args.model_name_or_path:
        folder = Path(model_args.model_name_or_path)
        if (folder / "adapter_config.json").is_file():  # it has no config.json: AutoConfig asked for a model_type
            raise UsageError(
                f"--model_name_or_path {folder} is a LoRA adapter: merge it first (python -m "
                f"shuangyu.training.merge_lora {folder} MERGED) and train on MERGED"
            )
        try:
            config = AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=True)
        except (OSError, ValueError) as err:
            raise UsageError(f"--model_name_or_path {model_args.model_name_or_path}: {one_line(err)}") from None
    elif model_args.model_config in PRESETS:
        # round the vocabulary up to a multiple of 64: matrix units like aligned shapes
        vocab = 64 * math.ceil(len(tokenizer) / 64)
        ids = {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
        config = ShuangyuConfig.from_preset(model_args.model_config, vocab_size=vocab, **ids)
    elif Path(model_args.model_config).exists():
        # a config of another model_type (a stock Llama's) is refused here, before the data is prepared; loaded
        # with AutoConfig it passed, and building ShuangyuForCausalLM from it failed after that work
        config = read_model_config(model_args.model_config, "--model_config")
    else:
        raise UsageError(
            f"--model_config {model_args.model_config!r}: not a preset ({', '.join(PRESETS)}) nor a config file"
        )
    if len(tokenizer) > config.vocab_size:
        raise UsageError(
            f"--tokenizer_name has {len(tokenizer):,} tokens but the model's vocab_size is {config.vocab_size:,}: "
            "use a model config with a larger vocab_size"
        )
    if block_size is not None and block_size > config.max_position_embeddings:
        raise UsageError(
            f"--block_size {block_size} is above the model's max_position_embeddings {config.max_position_embeddings}"
        )
    return config


def one_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def build_model(model_args: ModelArguments, config):
    from transformers import AutoModelForCausalLM

    from shuangyu.modeling import ShuangyuForCausalLM

    kwargs = {"attn_implementation": model_args.attn_implementation}
    try:
        if model_args.model_name_or_path:
            model = AutoModelForCausalLM.from_pretrained(
                local_or_hub(model_args.model_name_or_path), trust_remote_code=True, **kwargs
            )
        else:
            model = ShuangyuForCausalLM._from_config(config, **kwargs)
    except ImportError as err:  # an attention backend whose package is missing (flash-attn)
        raise UsageError(f"--attn_implementation {model_args.attn_implementation}: {one_line(err)}") from None
    if model_args.gradient_checkpointing:
        enable_activation_checkpointing(model)
    return model


def local_or_hub(name: str) -> str:
    """A local folder as an absolute path, a Hub id as given: the model keeps the name it was loaded from, and a
    LoRA adapter records it as its base, which a relative path would tie to the folder training ran in."""
    return str(Path(name).resolve()) if Path(name).exists() else name


def enable_activation_checkpointing(model) -> None:
    """transformers 5.2x renamed gradient_checkpointing_enable (the old name now warns at every run); older
    releases, such as a GPU image's, have only the old one."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
