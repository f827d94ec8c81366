"""Export to a stock `LlamaForCausalLM` folder that needs no custom code (see export.py for the command).

Parameter names are already LLaMA's, so the weights are copied as they are. The tokenizer files are copied with
a tokenizer_config.json rewritten to load under transformers 4.x and 5.x alike, and config.json carries
`rope_theta` and `rope_scaling` (4.x) next to `rope_parameters` (5.x). SRC's model card is carried over.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from transformers import LlamaConfig, LlamaForCausalLM

from shuangyu.errors import UsageError
from shuangyu.files import atomic_folder
from shuangyu.tokenizer.loading import without_load_time_keys

from .configuration_shuangyu import ShuangyuConfig
from .modeling_shuangyu import ShuangyuForCausalLM

# Files a tokenizer folder may hold; copied so AutoTokenizer loads DST the way it loads SRC.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)


# ------------------------------------------------------------------------------------------------- checks
def llama_incompatibilities(config: ShuangyuConfig) -> list[str]:
    """Knob settings a stock LlamaForCausalLM cannot reproduce, as 'name=value' strings."""
    problems = []
    if config.norm_type != "rmsnorm":
        problems.append(f"norm_type={config.norm_type} (Llama has rmsnorm)")
    if config.mlp_type != "swiglu":
        problems.append(f"mlp_type={config.mlp_type} (Llama has swiglu)")
    return problems


def load_source_config(src: Path) -> ShuangyuConfig:
    """SRC's config, after checking that SRC is a Shuangyu folder."""
    config_file = src / "config.json"
    if not config_file.is_file() and (src / "adapter_config.json").is_file():
        raise UsageError(
            f"{src} is a LoRA adapter: merge it into a model folder first "
            f"(python -m shuangyu.training.merge_lora {src} MERGED) and export that"
        )
    if not config_file.is_file():
        raise UsageError(f"{src}: no config.json there; pass a folder written by save_pretrained")
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise UsageError(
            f"{config_file}: not a JSON object ({err}); pass a folder written by save_pretrained"
        ) from None
    if model_type != ShuangyuConfig.model_type:
        raise UsageError(f"{config_file}: model_type is {model_type!r}, not 'shuangyu'; pass a Shuangyu folder")
    try:
        return ShuangyuConfig.from_pretrained(src)
    except (ValueError, TypeError) as err:
        raise UsageError(f"{config_file}: {err}") from None


def llama_rope_parameters(config: ShuangyuConfig) -> dict:
    """rope_parameters as LlamaConfig takes them: the same dict, legacy keys dropped."""
    params = {k: v for k, v in config.rope_parameters.items() if k != "type"}
    params["rope_theta"] = float(params["rope_theta"])
    return params


def to_llama_config(config: ShuangyuConfig) -> LlamaConfig:
    problems = llama_incompatibilities(config)
    if problems:
        raise UsageError("cannot export to llama: incompatible knobs: " + "; ".join(problems))
    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        hidden_act="silu",
        max_position_embeddings=config.max_position_embeddings,
        initializer_range=config.initializer_range,
        rms_norm_eps=config.norm_eps,
        rope_parameters=llama_rope_parameters(config),
        attention_bias=config.attention_bias,
        mlp_bias=config.mlp_bias,
        attention_dropout=config.attention_dropout,
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        use_cache=config.use_cache,
    )


# ---------------------------------------------------------------------------------- transformers 4.x and 5.x
def _token_content(value):
    """A special token as a plain string: saved configs hold either the string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def portable_tokenizer_config(config: dict) -> dict:
    """A tokenizer_config.json that transformers 4.x and 5.x both load as the same fast tokenizer.

    5.x writes `tokenizer_class: TokenizersBackend` (a class 4.x does not have) and the extra special tokens as
    a list under `extra_special_tokens` (4.x expects a dict of named tokens there); a folder saved with plain
    save_pretrained after from_pretrained (not save_tokenizer) also records how it was loaded (`local_files_only`).
    """
    out = without_load_time_keys(config)
    out.pop("backend", None)  # 5.x's choice of backend class; for 4.x tokenizer_class names it
    out["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = out.pop("extra_special_tokens", None)
    additional = list(out.pop("additional_special_tokens", None) or [])
    if isinstance(extra, dict):  # named extra tokens: keep the names' tokens in the portable list
        extra = list(extra.values())
    for token in extra or []:
        token = _token_content(token)
        if token is not None and token not in additional:
            additional.append(token)
    if additional:
        out["additional_special_tokens"] = additional
    for name in ("bos_token", "eos_token", "pad_token", "unk_token", "sep_token", "cls_token", "mask_token"):
        if name in out:
            out[name] = _token_content(out[name])
    return out


def write_portable_tokenizer_files(src: Path, dst: Path) -> list[str]:
    """Copy SRC's tokenizer files to DST, tokenizer_config.json made portable. Returns the names written."""
    written = []
    for name in TOKENIZER_FILES:
        if not (src / name).is_file():
            continue
        if name == "tokenizer_config.json":
            config = json.loads((src / name).read_text(encoding="utf-8"))
            text = json.dumps(portable_tokenizer_config(config), indent=2, ensure_ascii=False) + "\n"
            (dst / name).write_text(text, encoding="utf-8")
        else:
            shutil.copy2(src / name, dst / name)
        written.append(name)
    return written


def add_legacy_rope_fields(config_file: Path) -> dict:
    """Give a saved Llama config.json the RoPE fields transformers 4.x reads (`rope_theta`, `rope_scaling`)
    next to 5.x's `rope_parameters`, with the same values, so both versions build the same rotation."""
    config = json.loads(config_file.read_text(encoding="utf-8"))
    params = dict(config["rope_parameters"])
    config["rope_theta"] = float(params.pop("rope_theta"))
    config["rope_scaling"] = None if params.get("rope_type", "default") == "default" else params
    if "dtype" in config and "torch_dtype" not in config:
        config["torch_dtype"] = config["dtype"]  # the name before 4.56
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return config


def export_to_llama(src: str | Path, dst: str | Path) -> Path:
    src, dst = Path(src), Path(dst)
    config = load_source_config(src)
    llama_config = to_llama_config(config)  # raises before any weights are read
    ours = ShuangyuForCausalLM.from_pretrained(src, dtype="auto")
    dtype = next(ours.parameters()).dtype
    llama_config.dtype = dtype
    llama = LlamaForCausalLM(llama_config).to(dtype)
    # Same names and shapes by construction; strict loading proves it.
    llama.load_state_dict(ours.state_dict(), strict=True)
    llama.generation_config = ours.generation_config
    with atomic_folder(dst) as tmp:  # a failed export leaves nothing at DST
        llama.save_pretrained(tmp)
        add_legacy_rope_fields(tmp / "config.json")
        write_portable_tokenizer_files(src, tmp)
        carry_card(src, tmp, dst)
    return dst


def carry_card(src: Path, tmp: Path, dst: Path) -> None:
    """SRC's model card into the export (being written at TMP, to become DST): the same weights and logits, so
    its training data, recipe and evaluation hold; how to load it now names DST without trust_remote_code."""
    from huggingface_hub import ModelCard

    from shuangyu.sharing.card import render_card

    if not (src / "README.md").is_file():
        return  # no card to carry (not written by train_clm.py); eval/run.py or eval/push.py writes a new one
    # with what it shows (the loss curves) and the results a later eval/run.py adds to
    for path in [src / "README.md", src / "eval_results.json", src / "eval_results.md", *src.glob("*.png")]:
        if path.is_file():
            shutil.copy2(path, tmp / path.name)
    card = ModelCard(render_card(tmp, load_path=str(dst)))  # the usage section, from TMP's stock Llama config
    card.data.tags = [tag for tag in card.data.tags or [] if tag != "custom_code"] or None
    body = card.text.replace(f"(`{ShuangyuConfig.model_type}`: ", "(`llama`, exported from Shuangyu: ", 1)
    (tmp / "README.md").write_text(f"---\n{card.data.to_yaml()}\n---\n\n{body.lstrip()}", encoding="utf-8")


# --------------------------------------------------------------------------------------------------- GGUF
