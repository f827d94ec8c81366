"""Export to one GGUF file for llama.cpp and ollama (see export.py for the command), checked by tokenizing a
fixed zh/en/edge-case text with the GGUF's own vocabulary and our tokenizer and comparing ids."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from shuangyu.errors import UsageError
from shuangyu.sharing.card import model_name

from .configuration_shuangyu import ShuangyuConfig
from .llama_export import (
    _token_content,
    llama_incompatibilities,
    load_source_config,
)
from .modeling_shuangyu import ShuangyuForCausalLM

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


GGUF_DTYPES = ("auto", "f32", "f16", "bf16")
# llama.cpp's RoPE scaling types; "llama3" travels as per-frequency factors (a rope_freqs tensor).
GGUF_ROPE_TYPES = ("default", "linear", "yarn", "llama3")


def _import_gguf():
    try:
        import gguf
    except ImportError:
        raise UsageError("--to gguf: the gguf package is missing; pip install gguf==0.19.0") from None
    return gguf


def read_tokenizer_json(src: Path) -> dict:
    path = src / "tokenizer.json"
    if not path.is_file():
        raise UsageError(
            f"{path}: not found; a GGUF carries its tokenizer: save yours into the folder with "
            "tokenizer.save_pretrained(SRC)"
        )
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    pre = json.dumps(data.get("pre_tokenizer"))
    if model.get("type") != "BPE" or '"ByteLevel"' not in pre:
        raise UsageError(
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
        raise UsageError(
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


def _generation_config(src: Path) -> dict:
    config_file = src / "generation_config.json"
    return json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}


def _end_of_turn_id(src: Path, eos: int | None) -> int | None:
    """The reply-ending token an instruction-tuned model stops at besides eos (`<|im_end|>` after SFT): its
    generation_config.json lists both. llama.cpp would guess it from the token's text; the GGUF names it."""
    stops = _generation_config(src).get("eos_token_id")
    others = [i for i in (stops if isinstance(stops, list) else [stops]) if i is not None and i != eos]
    return int(others[0]) if others else None


def _add_sampling_defaults(writer, src: Path) -> None:
    """A folder that samples by default (a chat model's generation_config.json) carries its temperature, top-k and
    top-p into general.sampling.*, as llama.cpp's own converter does: llama-cli and llama-server then start from
    them. A greedy folder writes none (llama.cpp's own defaults apply)."""
    config = _generation_config(src)
    if not config.get("do_sample"):
        return
    for key, add in (("temperature", writer.add_sampling_temp), ("top_p", writer.add_sampling_top_p)):
        if config.get(key) is not None:
            add(float(config[key]))
    if config.get("top_k") is not None:
        writer.add_sampling_top_k(int(config["top_k"]))


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
        raise UsageError(
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
        raise UsageError("cannot export to gguf: incompatible knobs: " + "; ".join(problems))
    if dtype not in GGUF_DTYPES:
        raise UsageError(f"--dtype {dtype}: choose one of {', '.join(GGUF_DTYPES)}")
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
    writer.add_name(model_name(src))
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
    if (end_of_turn := _end_of_turn_id(src, specials.get("eos"))) is not None:
        writer.add_eot_token_id(end_of_turn)
    writer.add_add_bos_token(False)  # our tokenizer adds nothing; llama.cpp would otherwise prepend BOS
    writer.add_add_eos_token(False)
    if (template := _chat_template(src)) is not None:
        writer.add_chat_template(template)
    _add_sampling_defaults(writer, src)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name == "lm_head.weight" and config.tie_word_embeddings:
                continue  # llama.cpp uses token_embd for the output when `output.weight` is absent
            gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise UsageError(f"{src}: parameter {name} has no llama.cpp name; this export cannot place it")
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
        raise UsageError(f"{path}: not a byte-level BPE vocabulary (tokenizer.ggml.model != gpt2)")
    pre = gguf_field(reader, "tokenizer.ggml.pre")
    if pre != GGUF_PRE_TOKENIZER:
        raise UsageError(f"{path}: pre-tokenizer {pre!r}; this check knows llama.cpp's {GGUF_PRE_TOKENIZER!r}")
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
    """Raise UsageError unless the GGUF's tokenizer gives SRC's token ids on `text`. Returns the token count."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:  # as users load it (tokenizer_config.json's class and flags, e.g. split_special_tokens)
        tokenizer = AutoTokenizer.from_pretrained(src)
    except (OSError, ValueError, KeyError):  # no usable tokenizer_config.json: the tokenizer.json alone
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(src / "tokenizer.json"))
    ours = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]  # longer than the context on purpose
    theirs = tokenizer_from_gguf(path).encode(text, add_special_tokens=False).ids
    if ours != theirs:
        pairs = enumerate(zip(ours, theirs, strict=False))
        at = next((i for i, (a, b) in pairs if a != b), min(len(ours), len(theirs)))
        raise UsageError(
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
        raise UsageError(f"{out}: name the output file *.gguf (llama.cpp and ollama look for it)")
    if out.is_dir():
        raise UsageError(f"{out}: is a folder; name a .gguf file to write")
    if not out.parent.is_dir():
        raise UsageError(f"{out}: the folder {out.parent} does not exist; create it first")
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
