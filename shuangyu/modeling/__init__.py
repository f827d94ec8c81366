"""Shuangyu model: config, PreTrainedModel and export to stock Llama.

Importing this package registers the classes with the Auto classes, so `save_pretrained` writes the code
files and `auto_map` (the folder then loads anywhere with `trust_remote_code=True`), and, in this process,
`AutoModelForCausalLM.from_pretrained(folder)` works without remote code.

It also gives PEFT (when installed) default target modules for model_type "shuangyu", which PEFT keys by
model_type: `LoraConfig()` without `target_modules` then adapts every projection in the blocks
(`PEFT_TARGET_MODULES`), and the other PEFT methods get Llama's defaults (the module names are Llama's).
Outside this package (a folder loaded with trust_remote_code only), name them: `target_modules=PEFT_TARGET_MODULES`
or `target_modules="all-linear"`.
"""

import importlib.util

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from .configuration_shuangyu import PRESETS, ShuangyuConfig
from .modeling_shuangyu import (
    ShuangyuForCausalLM,
    ShuangyuForSequenceClassification,
    ShuangyuModel,
    ShuangyuPreTrainedModel,
)

ShuangyuConfig.register_for_auto_class()
ShuangyuModel.register_for_auto_class("AutoModel")
ShuangyuForCausalLM.register_for_auto_class("AutoModelForCausalLM")
ShuangyuForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")

AutoConfig.register(ShuangyuConfig.model_type, ShuangyuConfig, exist_ok=True)
AutoModel.register(ShuangyuConfig, ShuangyuModel, exist_ok=True)
AutoModelForCausalLM.register(ShuangyuConfig, ShuangyuForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(ShuangyuConfig, ShuangyuForSequenceClassification, exist_ok=True)

# Every Linear in a decoder block (the MLP's gate_proj only with mlp_type="swiglu"); lm_head is left alone.
PEFT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def register_peft_defaults() -> bool:
    """Add model_type "shuangyu" to PEFT's default target-module tables; False if PEFT is not installed."""
    if importlib.util.find_spec("peft") is None:
        return False
    from peft.utils import constants

    for name in dir(constants):
        table = getattr(constants, name)
        if name.startswith("TRANSFORMERS_MODELS_TO_") and isinstance(table, dict) and "llama" in table:
            table.setdefault(ShuangyuConfig.model_type, table["llama"])
    constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[ShuangyuConfig.model_type] = PEFT_TARGET_MODULES
    return True


register_peft_defaults()

__all__ = [
    "PEFT_TARGET_MODULES",
    "PRESETS",
    "ShuangyuConfig",
    "ShuangyuForCausalLM",
    "ShuangyuForSequenceClassification",
    "ShuangyuModel",
    "ShuangyuPreTrainedModel",
    "register_peft_defaults",
]
