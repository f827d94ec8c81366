"""Model shapes the planner chooses from, and what they cost: parameters and FLOPs per token, from the shape alone.

Three kinds: the model presets (shuangyu.modeling's PRESETS, used by name in a training config), the larger named
shapes below (written as config.json files under configs/models/, which `--model_config` takes), and a family
derived from one dial, the depth, as nanochat does: width = 64 * depth, heads of 64 (128 from width 1024 up), a
SwiGLU MLP 8/3 as wide rounded up to a multiple of 128, so every matrix dimension suits the GPU's matrix units.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from shuangyu.errors import UsageError
from shuangyu.modeling.config_json import read_model_config
from shuangyu.modeling.configuration_shuangyu import PRESETS

# Beyond the presets, up to about a billion parameters. GPT-2 large's depth and width for 760m; 1b follows the
# ~1B models of the LLaMA family (width 2048, heads of 128). MLP widths as the presets': 8/3 of the width, rounded
# up to a multiple of 128.
NAMED_SHAPES: dict[str, dict] = {
    "760m": dict(
        hidden_size=1280, intermediate_size=3456, num_hidden_layers=36, num_attention_heads=20, vocab_size=32000
    ),
    "1b": dict(
        hidden_size=2048, intermediate_size=5504, num_hidden_layers=18, num_attention_heads=16, vocab_size=32000
    ),
}
MAX_DEPTH = 48  # derived shapes d2 .. d48 (width 3072, ~5B parameters at a 32k vocabulary)
# Special-token ids of a Shuangyu tokenizer (<|endoftext|> first, <|pad|> second: tokenizer/train_bpe.py)
SHUANGYU_TOKEN_IDS = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1}


@dataclass(frozen=True)
class Shape:
    name: str
    layers: int
    width: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab_size: int
    tied: bool = True
    max_positions: int | None = None  # the preset's limit; None: whatever the plan's sequence length needs
    preset: bool = False  # usable as `model_config: NAME` (a name train_clm knows)
    source: str | None = None  # the config.json it was read from

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def block_matrix_parameters(self) -> int:
        """Weights of every matrix in the blocks: q, k, v, o and the SwiGLU MLP's gate, up and down."""
        attention = 2 * self.width * self.width + 2 * self.width * self.kv_width
        return self.layers * (attention + 3 * self.width * self.intermediate)

    @property
    def embedding_parameters(self) -> int:
        return self.vocab_size * self.width

    @property
    def parameters(self) -> int:
        """All parameters: blocks, embedding (and an untied head), RMSNorm weights."""
        norms = (2 * self.layers + 1) * self.width
        head = 0 if self.tied else self.embedding_parameters
        return self.block_matrix_parameters + self.embedding_parameters + head + norms

    def model_scale(self, seq_len: int) -> float:
        """DeepSeek LLM's M: non-embedding training FLOPs per token (6 per block weight, plus attention)."""
        return 6 * self.block_matrix_parameters + 12 * self.layers * self.heads * self.head_dim * seq_len

    def train_flops_per_token(self, seq_len: int) -> float:
        """What the GPU actually computes per token: M plus the vocabulary head's matmul (6 FLOPs per weight).
        Equal to shuangyu.training.metrics.flops_per_token, against which train_clm reports MFU."""
        return self.model_scale(seq_len) + 6 * self.embedding_parameters

    def config(self, seq_len: int) -> dict:
        """The ShuangyuConfig fields of this shape, as a config.json holds them."""
        return {
            "model_type": "shuangyu",
            "vocab_size": self.vocab_size,
            "hidden_size": self.width,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "max_position_embeddings": max(seq_len, self.max_positions or 0),
            "tie_word_embeddings": self.tied,
            **SHUANGYU_TOKEN_IDS,
        }

    def describe(self) -> str:
        gqa = f", {self.kv_heads} kv heads" if self.kv_heads != self.heads else ""
        return (
            f"{self.layers} layers, width {self.width}, {self.heads} heads of {self.head_dim}{gqa}, "
            f"MLP {self.intermediate}, vocab {self.vocab_size:,}"
        )


def from_config(name: str, fields: dict, vocab_size: int | None = None, **extra) -> Shape:
    heads = fields["num_attention_heads"]
    return Shape(
        name=name,
        layers=fields["num_hidden_layers"],
        width=fields["hidden_size"],
        heads=heads,
        kv_heads=fields.get("num_key_value_heads") or heads,
        intermediate=fields["intermediate_size"],
        vocab_size=vocab_size or fields.get("vocab_size", 32000),
        tied=fields.get("tie_word_embeddings", True),
        **extra,
    )


def derived(depth: int, vocab_size: int) -> Shape:
    """The depth dial: d12 is 124m's width and depth with heads of 64; d16 and up use heads of 128."""
    width = 64 * depth
    head_dim = 128 if width >= 1024 and width % 128 == 0 else 64
    intermediate = 128 * math.ceil(8 * width / 3 / 128)
    heads = width // head_dim
    return Shape(f"d{depth}", depth, width, heads, heads, intermediate, vocab_size)


def named(vocab_size: int) -> list[Shape]:
    """The presets (vocabulary taken from the tokenizer by train_clm, so estimated here at `vocab_size`) and the
    larger named shapes (their config.json fixes the vocabulary)."""
    presets = [
        from_config(name, fields, vocab_size, max_positions=fields["max_position_embeddings"], preset=True)
        for name, fields in PRESETS.items()
    ]
    return presets + [from_config(name, fields) for name, fields in NAMED_SHAPES.items()]


def candidates(vocab_size: int) -> list[Shape]:
    return named(vocab_size) + [derived(depth, vocab_size) for depth in range(2, MAX_DEPTH + 1)]


def resolve(spec: str, vocab_size: int) -> Shape:
    """`--model`: a preset or named shape, `dN` for the depth dial, or a config.json (or a folder holding one)."""
    for shape in named(vocab_size):
        if shape.name == spec:
            return shape
    match = re.fullmatch(r"d(\d+)", spec)
    if match and 2 <= int(match.group(1)) <= MAX_DEPTH:
        return derived(int(match.group(1)), vocab_size)
    path = Path(spec)
    if path.exists():
        # checked as train_clm's --model_config checks it: the plan's YAML names this file for it
        fields = read_model_config(spec, "--model").to_dict()
        name = path.name if path.is_dir() else path.stem  # a run folder by its name, not "config"
        # its context as a limit, as the presets': a plan with a longer --seq_len writes a longer copy
        return from_config(name, fields, max_positions=fields["max_position_embeddings"], source=spec)
    names = ", ".join(s.name for s in named(vocab_size))
    raise UsageError(
        f"--model {spec!r}: not a preset or named shape ({names}), dN (d2..d{MAX_DEPTH}), nor a config.json"
    )
