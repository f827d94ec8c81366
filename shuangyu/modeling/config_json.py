"""A model config.json named on a command line (train_clm's --model_config, the planner's --model), read and checked
once, here, so both commands refuse the same bad file with the same one line before any work.

ShuangyuConfig checks the fields themselves (types, positive sizes, divisibility); this adds what it cannot: that the
file is JSON, and that it is a Shuangyu config at all. PretrainedConfig only warns when a config of another
model_type (a stock LlamaConfig) is loaded into it, and its fields then mostly fit, so the model would be built
from another model's knobs.
"""

from __future__ import annotations

import json
from pathlib import Path

from shuangyu.errors import UsageError
from shuangyu.modeling.configuration_shuangyu import PRESETS, ShuangyuConfig


def read_model_config(spec: str, flag: str) -> ShuangyuConfig:
    """The ShuangyuConfig in `spec` (a config.json, or a folder holding one), or UsageError naming `flag`."""
    path = Path(spec)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise UsageError(f"{flag} {spec}: no config.json in this folder")
    try:
        fields = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UsageError(f"{flag} {spec}: not a readable JSON file ({type(err).__name__}: {err})") from None
    if not isinstance(fields, dict):
        raise UsageError(f"{flag} {spec}: not a model config (a JSON object of fields such as hidden_size)")
    model_type = fields.get("model_type")
    if model_type != ShuangyuConfig.model_type:
        raise UsageError(
            f"{flag} {spec}: model_type {model_type!r} is not {ShuangyuConfig.model_type!r}; give a Shuangyu config "
            f"(such as configs/models/1b.json) or a preset name ({', '.join(PRESETS)})"
        )
    try:
        return ShuangyuConfig.from_dict(fields)
    except (ValueError, TypeError) as err:  # ShuangyuConfig's and PretrainedConfig's own checks say what is wrong
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"{flag} {spec}: {message.removeprefix('ShuangyuConfig: ')}") from None
