"""Export a Shuangyu folder to a stock `LlamaForCausalLM` folder (no custom code needed to load it).

    python -m shuangyu.modeling.export --to llama SRC DST

Works when the knobs are LLaMA's (RMSNorm, SwiGLU; biases, GQA, RoPE theta and tied embeddings all carry over).
Parameter names are already LLaMA's, so the weights are copied as they are; the tokenizer files in SRC, if any,
are copied too. Otherwise exits with status 2 and one line naming the knobs Llama cannot express.
"""

import argparse
import shutil
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from .configuration_shuangyu import ShuangyuConfig
from .modeling_shuangyu import ShuangyuForCausalLM

# Files a tokenizer folder may hold; copied verbatim so AutoTokenizer loads DST the way it loads SRC.
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


class IncompatibleConfigError(ValueError):
    pass


def llama_incompatibilities(config: ShuangyuConfig) -> list[str]:
    """Knob settings a stock LlamaForCausalLM cannot reproduce, as 'name=value' strings."""
    problems = []
    if config.norm_type != "rmsnorm":
        problems.append(f"norm_type={config.norm_type} (Llama has rmsnorm)")
    if config.mlp_type != "swiglu":
        problems.append(f"mlp_type={config.mlp_type} (Llama has swiglu)")
    return problems


def to_llama_config(config: ShuangyuConfig) -> LlamaConfig:
    problems = llama_incompatibilities(config)
    if problems:
        raise IncompatibleConfigError("cannot export to llama: incompatible knobs: " + "; ".join(problems))
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
        rope_parameters={"rope_type": "default", "rope_theta": float(config.rope_theta)},
        attention_bias=config.attention_bias,
        mlp_bias=config.mlp_bias,
        attention_dropout=config.attention_dropout,
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        use_cache=config.use_cache,
    )


def export_to_llama(src: str | Path, dst: str | Path) -> Path:
    src, dst = Path(src), Path(dst)
    config = ShuangyuConfig.from_pretrained(src)
    llama_config = to_llama_config(config)  # raises before any weights are read
    ours = ShuangyuForCausalLM.from_pretrained(src, dtype="auto")
    dtype = next(ours.parameters()).dtype
    llama_config.dtype = dtype
    llama = LlamaForCausalLM(llama_config).to(dtype)
    # Same names and shapes by construction; strict loading proves it.
    llama.load_state_dict(ours.state_dict(), strict=True)
    llama.generation_config = ours.generation_config
    dst.mkdir(parents=True, exist_ok=True)
    llama.save_pretrained(dst)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shuangyu.modeling.export", description=__doc__.splitlines()[0])
    parser.add_argument("--to", choices=["llama"], required=True, help="target architecture")
    parser.add_argument("src", help="a Shuangyu folder written by save_pretrained")
    parser.add_argument("dst", help="output folder")
    args = parser.parse_args(argv)
    try:
        with torch.no_grad():
            export_to_llama(args.src, args.dst)
    except IncompatibleConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote a LlamaForCausalLM folder to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
