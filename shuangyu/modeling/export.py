"""Export a Shuangyu folder for clients that do not run our code.

One job, one file though long: both targets share the knob checks, the tokenizer rewrite and the refusal rules.

    python -m shuangyu.modeling.export --to llama SRC DST          # a stock LlamaForCausalLM folder
    python -m shuangyu.modeling.export --to gguf SRC OUT.gguf      # one file for llama.cpp and ollama

Both need LLaMA's knobs (RMSNorm, SwiGLU; biases, GQA, RoPE theta and scaling and tied embeddings all carry
over). Bad input (a missing file, knobs Llama cannot express, a tokenizer llama.cpp would split differently)
prints one line naming the file or flag and exits with status 2, before anything is written.

--to llama: parameter names are already LLaMA's, so the weights are copied as they are. The tokenizer files in
SRC are copied with a tokenizer_config.json rewritten to load under transformers 4.x and 5.x alike
(`PreTrainedTokenizerFast`, `additional_special_tokens`, no loader flags such as `local_files_only`), and
config.json carries `rope_theta` and `rope_scaling` (4.x) next to `rope_parameters` (5.x).

--to gguf: the llama architecture with the tokenizer as a byte-level BPE (`tokenizer.ggml.model = gpt2`) under
llama.cpp's `qwen2` pre-tokenizer, whose split agrees with ours on Chinese, English, digits, code and emoji.
llama.cpp names pre-tokenizers by a hash of known vocabularies, so its own converter refuses any newly trained
tokenizer; we name it. Before the file appears, a tokenizer rebuilt from the GGUF's own tokens, merges and
llama.cpp's qwen2 split must give the same ids as SRC's tokenizer on a fixed zh/en/edge-case text
(`CHECK_TEXT`); otherwise the export is refused. The file is written to a temporary name and renamed.
"""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as transformers_logging

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

# Keys that from_pretrained puts into a tokenizer's init kwargs and save_pretrained writes back: they describe
# how it was loaded that time, not the tokenizer, and some break other versions (local_files_only=True, say).
LOADER_KEYS = (
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
    "backend",
)

# llama.cpp's split for its `qwen2` pre-tokenizer (LLAMA_VOCAB_PRE_TYPE_QWEN2 in src/llama-vocab.cpp: the
# Qwen2 regex with the case-insensitive group spelled out). Used to rebuild the GGUF's tokenizer independently.
LLAMA_CPP_QWEN2_SPLIT = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GGUF_PRE_TOKENIZER = "qwen2"

# The text both tokenizations must agree on: Chinese and English prose, mixed scripts, digits and prices,
# code with indentation, full-width punctuation, emoji, accents, contractions, runs of spaces and newlines.
CHECK_TEXT = (
    "双语模型从中文和英文的原始文本开始训练。今天是2024年3月15日，价格为¥1,299.50元（含税）。\n"
    "新华社北京电 国务院新闻办公室发布《白皮书》，全文约2.3万字：一、总体情况；二、主要成就……\n"
    "The quick brown fox doesn't jump; it's 3.14159 times faster, isn't it? WE'LL SEE, they'd say.\n"
    "I've got 12 apples & 7 oranges -- total: 19!!  Double  spaces,\ttabs\tand trailing spaces   \n"
    "iPhone手机和MacBook电脑都支持Wi-Fi 6E；GPT-4o与Qwen2.5的对比。\n"
    "def tokenize(text: str) -> list[int]:\n    return [ord(c) for c in text]  # 注释：逐字\n\n"
    "Emoji 🚀🦙🎉 and accents: café, naïve, Zürich, São Paulo; full-width：（括号）「引号」『书名』\n"
    "URL https://example.com/path?q=双语&lang=zh-CN, email someone@example.org.\r\n\n\n"
    "   leading spaces, 'quoted', \"double\", ``ticks``, (parens) [brackets] {braces} <angle>\n"
    "上下文长度 8192；数字 0123456789；符号 ~!@#$%^&*_+=|\\/-。"
)


class ExportError(ValueError):
    """A refusal: the message is one line naming the file or flag and what to do."""


class IncompatibleConfigError(ExportError):
    pass


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
    if not config_file.is_file():
        raise ExportError(f"{src}: no config.json there; pass a folder written by save_pretrained")
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise ExportError(
            f"{config_file}: not a JSON object ({err}); pass a folder written by save_pretrained"
        ) from None
    if model_type != ShuangyuConfig.model_type:
        raise ExportError(f"{config_file}: model_type is {model_type!r}, not 'shuangyu'; pass a Shuangyu folder")
    try:
        return ShuangyuConfig.from_pretrained(src)
    except (ValueError, TypeError) as err:
        raise ExportError(f"{config_file}: {err}") from None


def llama_rope_parameters(config: ShuangyuConfig) -> dict:
    """rope_parameters as LlamaConfig takes them: the same dict, legacy keys dropped."""
    params = {k: v for k, v in config.rope_parameters.items() if k != "type"}
    params["rope_theta"] = float(params["rope_theta"])
    return params


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
    a list under `extra_special_tokens` (4.x expects a dict of named tokens there); `from_pretrained` also
    records how it was loaded (`local_files_only`, ...), which then travels with every saved copy.
    """
    out = {k: v for k, v in config.items() if k not in LOADER_KEYS}
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
    dst.mkdir(parents=True, exist_ok=True)
    llama.save_pretrained(dst)
    add_legacy_rope_fields(dst / "config.json")
    write_portable_tokenizer_files(src, dst)
    return dst


# --------------------------------------------------------------------------------------------------- GGUF
GGUF_DTYPES = ("auto", "f32", "f16", "bf16")
# llama.cpp's RoPE scaling types; "llama3" travels as per-frequency factors (a rope_freqs tensor).
GGUF_ROPE_TYPES = ("default", "linear", "yarn", "llama3")


def _import_gguf():
    try:
        import gguf
    except ImportError:
        raise ExportError("--to gguf: the gguf package is missing; pip install gguf==0.19.0") from None
    return gguf


def read_tokenizer_json(src: Path) -> dict:
    path = src / "tokenizer.json"
    if not path.is_file():
        raise ExportError(
            f"{path}: not found; a GGUF carries its tokenizer: save yours into the folder with "
            "tokenizer.save_pretrained(SRC)"
        )
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    pre = json.dumps(data.get("pre_tokenizer"))
    if model.get("type") != "BPE" or '"ByteLevel"' not in pre:
        raise ExportError(
            f"{path}: a {model.get('type')} tokenizer without a byte-level alphabet; the GGUF export takes "
            "byte-level BPE tokenizers (as tokenizer/train_bpe.py trains)"
        )
    return data


def gguf_vocabulary(data: dict, vocab_size: int, path: Path) -> tuple[list[str], list[int], list[str], dict]:
    """tokens, token types, merges ('a b') and token -> id, laid out for `vocab_size` rows (the model's)."""
    from gguf import TokenType

    vocab = dict(data["model"]["vocab"])
    added = {t["content"]: t for t in data.get("added_tokens", [])}
    ids = {**vocab, **{content: t["id"] for content, t in added.items()}}
    if max(ids.values()) >= vocab_size:
        raise ExportError(
            f"{path}: the tokenizer has ids up to {max(ids.values())} but the model's vocab_size is {vocab_size}; "
            "pair the model with the tokenizer it was trained with"
        )
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]  # rows the tokenizer never produces
    types = [int(TokenType.UNUSED)] * vocab_size
    for token, i in vocab.items():
        tokens[i], types[i] = token, int(TokenType.NORMAL)
    for content, t in added.items():
        tokens[t["id"]] = content
        types[t["id"]] = int(TokenType.CONTROL if t.get("special") else TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    return tokens, types, merges, ids


def _special_token_ids(src: Path, config: ShuangyuConfig, ids: dict) -> dict[str, int]:
    """bos/eos/pad/unk ids: from tokenizer_config.json's tokens, else from the model config."""
    found = {}
    config_file = src / "tokenizer_config.json"
    tok_config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    for name in ("bos", "eos", "pad", "unk"):
        token = _token_content(tok_config.get(f"{name}_token"))
        if token in ids:
            found[name] = ids[token]
        elif name != "unk":
            value = getattr(config, f"{name}_token_id", None)
            if isinstance(value, list):
                value = value[0] if value else None
            if value is not None:
                found[name] = int(value)
    return found


def _chat_template(src: Path) -> str | None:
    if (src / "chat_template.jinja").is_file():
        return (src / "chat_template.jinja").read_text(encoding="utf-8")
    config_file = src / "tokenizer_config.json"
    if config_file.is_file():
        template = json.loads(config_file.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str):
            return template
    return None


def interleave_rotary_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder a q/k projection's output rows from transformers' RoPE layout (each head rotates its first half
    against its second half) to GGML's (adjacent pairs rotate together), as llama.cpp's llama graph expects."""
    head_dim = weight.shape[0] // n_heads
    rest = weight.shape[1:]
    return weight.reshape(n_heads, 2, head_dim // 2, *rest).transpose(1, 2).reshape(weight.shape)


def _rope_metadata(writer, gguf, config: ShuangyuConfig, path_hint: str):
    """Write RoPE scaling keys; returns the rope_freqs tensor llama3 needs, or None."""
    params = config.rope_parameters
    rope_type = params["rope_type"]
    if rope_type not in GGUF_ROPE_TYPES:
        raise ExportError(
            f"{path_hint}: rope_parameters rope_type {rope_type!r} has no llama.cpp equivalent (it has "
            f"{', '.join(GGUF_ROPE_TYPES)}); export with one of those, e.g. linear or yarn"
        )
    writer.add_rope_freq_base(float(params["rope_theta"]))
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(params["factor"]))
    elif rope_type == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(params["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(params["original_max_position_embeddings"]))
        if params.get("attention_factor") is not None:
            writer.add_rope_scaling_yarn_attn_factor(float(params["attention_factor"]))
        if params.get("beta_fast") is not None:
            writer.add_rope_scaling_yarn_beta_fast(float(params["beta_fast"]))
        if params.get("beta_slow") is not None:
            writer.add_rope_scaling_yarn_beta_slow(float(params["beta_slow"]))
    elif rope_type == "llama3":
        # llama.cpp divides each frequency by a factor read from `rope_freqs`: the ratio of plain RoPE's
        # frequencies to those transformers' llama3 function computes.
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        from .modeling_shuangyu import ShuangyuRotaryEmbedding

        plain, _ = ShuangyuRotaryEmbedding.compute_default_rope_parameters(config)
        scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config)
        return (plain / scaled).float()
    return None


def write_gguf(src: Path, out: Path, dtype: str = "auto") -> None:
    """Write SRC as a GGUF at `out` (no checks of the result; see export_to_gguf)."""
    gguf = _import_gguf()
    config = load_source_config(src)
    problems = llama_incompatibilities(config)
    if problems:
        raise IncompatibleConfigError("cannot export to gguf: incompatible knobs: " + "; ".join(problems))
    if dtype not in GGUF_DTYPES:
        raise ExportError(f"--dtype {dtype}: choose one of {', '.join(GGUF_DTYPES)}")
    data = read_tokenizer_json(src)
    tokens, types, merges, ids = gguf_vocabulary(data, config.vocab_size, src / "tokenizer.json")
    specials = _special_token_ids(src, config, ids)

    model = ShuangyuForCausalLM.from_pretrained(src, dtype="auto")
    source_dtype = next(model.parameters()).dtype
    if dtype == "auto":
        dtype = {torch.float16: "f16", torch.bfloat16: "bf16"}.get(source_dtype, "f32")
    qtype = {
        "f32": gguf.GGMLQuantizationType.F32,
        "f16": gguf.GGMLQuantizationType.F16,
        "bf16": gguf.GGMLQuantizationType.BF16,
    }[dtype]
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}.get(
        dtype, gguf.LlamaFileType.MOSTLY_BF16
    )

    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name(src.resolve().name)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_file_type(file_type)
    rope_freqs = _rope_metadata(writer, gguf, config, str(src / "config.json"))

    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre(GGUF_PRE_TOKENIZER)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for name, add in (
        ("bos", writer.add_bos_token_id),
        ("eos", writer.add_eos_token_id),
        ("pad", writer.add_pad_token_id),
        ("unk", writer.add_unk_token_id),
    ):
        if name in specials:
            add(specials[name])
    writer.add_add_bos_token(False)  # our tokenizer adds nothing; llama.cpp would otherwise prepend BOS
    writer.add_add_eos_token(False)
    if (template := _chat_template(src)) is not None:
        writer.add_chat_template(template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name == "lm_head.weight" and config.tie_word_embeddings:
                continue  # llama.cpp uses token_embd for the output when `output.weight` is absent
            gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise ExportError(f"{src}: parameter {name} has no llama.cpp name; this export cannot place it")
            tensor = tensor.detach().float()
            if ".self_attn.q_proj." in name:
                tensor = interleave_rotary_rows(tensor, config.num_attention_heads)
            elif ".self_attn.k_proj." in name:
                tensor = interleave_rotary_rows(tensor, config.num_key_value_heads)
            array = tensor.contiguous().numpy()
            if array.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(gguf_name, array.astype("float32"))  # norms and biases stay f32
            else:
                writer.add_tensor(gguf_name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        if rope_freqs is not None:
            writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", rope_freqs.numpy())

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def gguf_field(reader, key: str):
    """A metadata value of a GGUF file as Python data (str, number, bool or list)."""
    field = reader.get_field(key)
    if field is None:
        return None
    from gguf import GGUFValueType

    if field.types and field.types[0] == GGUFValueType.ARRAY:
        return list(field.contents())
    return field.contents()


def tokenizer_from_gguf(path: str | Path):
    """A `tokenizers.Tokenizer` rebuilt from a GGUF's own tokens, merges and pre-tokenizer name, as llama.cpp
    would tokenize with it: byte-level BPE after llama.cpp's split for that pre-tokenizer (qwen2 only)."""
    from gguf import GGUFReader
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    reader = GGUFReader(str(path))
    if gguf_field(reader, "tokenizer.ggml.model") != "gpt2":
        raise ExportError(f"{path}: not a byte-level BPE vocabulary (tokenizer.ggml.model != gpt2)")
    pre = gguf_field(reader, "tokenizer.ggml.pre")
    if pre != GGUF_PRE_TOKENIZER:
        raise ExportError(f"{path}: pre-tokenizer {pre!r}; this check knows llama.cpp's {GGUF_PRE_TOKENIZER!r}")
    tokens = gguf_field(reader, "tokenizer.ggml.tokens")
    types = gguf_field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in gguf_field(reader, "tokenizer.ggml.merges")]
    unused = 5  # gguf.TokenType.UNUSED: padding rows, not part of the vocabulary
    vocab = {t: i for i, (t, kind) in enumerate(zip(tokens, types, strict=True)) if kind != unused}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA_CPP_QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def check_gguf_tokenizer(path: Path, src: Path, text: str = CHECK_TEXT) -> int:
    """Raise ExportError unless the GGUF's tokenizer gives SRC's token ids on `text`. Returns the token count."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:  # as users load it (tokenizer_config.json's class and flags, e.g. split_special_tokens)
        tokenizer = AutoTokenizer.from_pretrained(src)
    except (OSError, ValueError, KeyError):  # no usable tokenizer_config.json: the tokenizer.json alone
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(src / "tokenizer.json"))
    ours = tokenizer(text, add_special_tokens=False)["input_ids"]
    theirs = tokenizer_from_gguf(path).encode(text, add_special_tokens=False).ids
    if ours != theirs:
        pairs = enumerate(zip(ours, theirs, strict=False))
        at = next((i for i, (a, b) in pairs if a != b), min(len(ours), len(theirs)))
        raise ExportError(
            f"{src / 'tokenizer.json'}: llama.cpp's {GGUF_PRE_TOKENIZER!r} pre-tokenizer splits the check text "
            f"differently from this tokenizer (first difference at token {at} of {len(ours)}), so llama.cpp "
            "would feed the model other ids; this tokenizer cannot be exported to GGUF (--to llama still works)"
        )
    return len(ours)


def export_to_gguf(src: str | Path, out: str | Path, dtype: str = "auto") -> Path:
    """Write SRC as OUT (a .gguf file), checked; nothing appears at OUT unless every check passed."""
    src, out = Path(src), Path(out)
    _import_gguf()
    if out.suffix != ".gguf":
        raise ExportError(f"{out}: name the output file *.gguf (llama.cpp and ollama look for it)")
    if out.is_dir():
        raise ExportError(f"{out}: is a folder; name a .gguf file to write")
    if not out.parent.is_dir():
        raise ExportError(f"{out}: the folder {out.parent} does not exist; create it first")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        write_gguf(src, tmp, dtype)
        check_gguf_tokenizer(tmp, src)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


# ---------------------------------------------------------------------------------------------------- CLI
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2, as for every other refusal
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m shuangyu.modeling.export", description=__doc__.splitlines()[0])
    parser.add_argument("--to", choices=["llama", "gguf"], required=True, help="target: a Llama folder, or a GGUF")
    parser.add_argument("--dtype", choices=GGUF_DTYPES, default="auto", help="GGUF weights (auto: as SRC's)")
    parser.add_argument("src", help="a Shuangyu folder written by save_pretrained (with its tokenizer)")
    parser.add_argument("dst", help="output: a folder for --to llama, a .gguf file for --to gguf")
    args = parser.parse_args(argv)
    src = Path(args.src)
    # stderr is for the one-line verdict: no "Loading weights" bars before it.
    transformers_logging.disable_progress_bar()
    try:
        if args.to == "llama" and args.dtype != "auto":
            raise ExportError(f"--dtype {args.dtype}: applies to --to gguf; a Llama folder keeps SRC's dtype")
        if not src.is_dir():
            raise ExportError(f"{src}: not a folder; pass a folder written by save_pretrained")
        with torch.no_grad():
            if args.to == "llama":
                export_to_llama(src, args.dst)
            else:
                export_to_gguf(src, args.dst, args.dtype)
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    target = "a LlamaForCausalLM folder" if args.to == "llama" else "a GGUF (llama architecture, qwen2 tokenizer)"
    print(f"wrote {target} to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
