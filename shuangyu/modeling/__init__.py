"""Shuangyu model: config, PreTrainedModel and export to stock Llama.

Importing this package registers the classes with the Auto classes, so `save_pretrained` writes the code
files and `auto_map` (the folder then loads anywhere with `trust_remote_code=True`), and, in this process,
`AutoModelForCausalLM.from_pretrained(folder)` works without remote code.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_shuangyu import PRESETS, ShuangyuConfig
from .modeling_shuangyu import ShuangyuForCausalLM, ShuangyuModel, ShuangyuPreTrainedModel

ShuangyuConfig.register_for_auto_class()
ShuangyuModel.register_for_auto_class("AutoModel")
ShuangyuForCausalLM.register_for_auto_class("AutoModelForCausalLM")

AutoConfig.register(ShuangyuConfig.model_type, ShuangyuConfig, exist_ok=True)
AutoModel.register(ShuangyuConfig, ShuangyuModel, exist_ok=True)
AutoModelForCausalLM.register(ShuangyuConfig, ShuangyuForCausalLM, exist_ok=True)

__all__ = ["PRESETS", "ShuangyuConfig", "ShuangyuForCausalLM", "ShuangyuModel", "ShuangyuPreTrainedModel"]
