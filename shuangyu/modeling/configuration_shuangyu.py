"""ShuangyuConfig: the knobs of the Shuangyu decoder-only language model.

LLaMA-style by default (RMSNorm, SwiGLU MLP, RoPE, no biases); a GPT-2-style variant is a matter of knobs
(`norm_type="layernorm"`, `mlp_type="gelu"`, `attention_bias=True`, `mlp_bias=True`). Field names follow
`LlamaConfig` where the meaning is the same, so exporting to a stock Llama folder is a renaming.

This file is copied next to the weights by `save_pretrained` (remote code), so it imports only transformers.
"""

from transformers import PretrainedConfig

# Named shapes. `intermediate_size` is about 8/3 of the width (SwiGLU has three matrices instead of two, so this
# keeps the MLP's parameter count near a 4x GELU MLP), rounded up to a multiple of 64 for the matrix units.
PRESETS: dict[str, dict] = {
    # For CPU tests: two layers, grouped-query attention on so that path is always exercised.
    "tiny": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    ),
    # The demo's CPU model (python -m shuangyu.demo, configs/demo-cpu.yaml): the most held-out bits per byte per
    # CPU-minute among the shapes bench/demo_sweep.py tried at an 8k vocabulary (bench/RESULTS.md). Untied: a
    # separate head costs no compute and, with the embedding's own higher learning rate, learns faster per token.
    "mini": dict(
        vocab_size=8192,
        hidden_size=128,
        intermediate_size=320,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    ),
    # GPT-2 small's shape (12 layers, width 768, 12 heads) with LLaMA blocks.
    "124m": dict(
        vocab_size=32000,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=1024,
    ),
    # GPT-2 medium's shape (24 layers, width 1024, 16 heads) with LLaMA blocks.
    "350m": dict(
        vocab_size=32000,
        hidden_size=1024,
        intermediate_size=2752,
        num_hidden_layers=24,
        num_attention_heads=16,
        max_position_embeddings=2048,
    ),
}

NORM_TYPES = ("rmsnorm", "layernorm")
# RoPE variants the model runs (transformers' ROPE_INIT_FUNCTIONS, plus the plain one).
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")
MLP_TYPES = ("swiglu", "gelu")


class ShuangyuConfig(PretrainedConfig):
    r"""
    Args:
        vocab_size: number of token ids (rows of the embedding and of the output head).
        hidden_size: width of the residual stream.
        intermediate_size: inner width of the MLP.
        num_hidden_layers: number of decoder blocks.
        num_attention_heads: query heads; `hidden_size` must divide evenly by it.
        num_key_value_heads: key/value heads (grouped-query attention); defaults to `num_attention_heads`
            and must divide it.
        max_position_embeddings: longest context the model is meant for (RoPE itself has no table).
        rope_theta: RoPE base; larger values spread the frequencies for longer contexts. Kept equal to
            `rope_parameters["rope_theta"]` (the dict wins when both are given).
        rope_parameters: RoPE as transformers describes it for Llama: `{"rope_type": "default", "rope_theta": ...}`
            by default; to stretch a trained model's context use `"linear"` or `"dynamic"` with `"factor"`, or
            `"yarn"` with `"factor"` and `"original_max_position_embeddings"` (also `"llama3"`, `"longrope"`).
            The frequencies come from transformers' own `ROPE_INIT_FUNCTIONS`.
        norm_type: "rmsnorm" (LLaMA) or "layernorm" (GPT-2, with bias).
        norm_eps: epsilon of the norms.
        mlp_type: "swiglu" (gate/up/down, LLaMA) or "gelu" (up/down, GPT-2).
        attention_bias, mlp_bias: biases in the attention and MLP projections (GPT-2 has them).
        tie_word_embeddings: share the embedding matrix with the output head.
        initializer_range: std of the normal init; residual output projections use
            `initializer_range / sqrt(2 * num_hidden_layers)`.
        attention_dropout: dropout on attention probabilities during training.
        loss_chunk_size: tokens per chunk in the fused head + cross-entropy, which bounds the fp32 logits held
            at once to `loss_chunk_size x vocab_size`.
    """

    model_type = "shuangyu"
    keys_to_ignore_at_inference = ["past_key_values"]
    # Tensor parallelism (`from_pretrained(..., tp_plan="auto")`): Llama's plan, our module names are Llama's.
    # Keys are relative to the base model (`model.`); the head's rule is `ShuangyuForCausalLM._tp_plan`.
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

    vocab_size: int = 32000
    hidden_size: int = 768
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    max_position_embeddings: int = 1024
    rope_theta: float = 10000.0
    rope_parameters: dict | None = None
    norm_type: str = "rmsnorm"
    norm_eps: float = 1e-6
    mlp_type: str = "swiglu"
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    attention_dropout: float = 0.0
    loss_chunk_size: int = 4096
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self._validate_shapes()
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        # Fills rope_parameters from rope_theta (or a legacy `rope_scaling` kwarg) and standardises it.
        super().__post_init__(**kwargs)
        self.rope_parameters.pop("type", None)  # the legacy spelling of rope_type, now copied there
        self._validate_rope()
        self.rope_theta = float(self.rope_parameters["rope_theta"])
        if self.mlp_type != "swiglu":  # no gate_proj to shard (the plan's every entry must name a module)
            plan = type(self).base_model_tp_plan
            self.base_model_tp_plan = {k: v for k, v in plan.items() if not k.endswith(".gate_proj")}

    def _validate_rope(self):
        params = self.rope_parameters
        rope_type = params.get("rope_type")
        if rope_type not in ROPE_TYPES:
            raise ValueError(
                f"ShuangyuConfig: rope_parameters['rope_type'] must be one of {ROPE_TYPES}, got {rope_type!r}"
            )
        theta = params.get("rope_theta")
        if not isinstance(theta, (int, float)) or not theta > 0:
            raise ValueError(f"ShuangyuConfig: rope_theta must be positive, got {theta!r}")
        needs_factor = rope_type in ("linear", "dynamic", "yarn", "llama3")
        factor = params.get("factor")
        if needs_factor and (not isinstance(factor, (int, float)) or factor < 1):
            raise ValueError(
                f"ShuangyuConfig: rope_parameters['factor'] must be a number >= 1 for rope_type {rope_type!r}, "
                f"got {factor!r}"
            )

    def _validate_shapes(self):
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
            "loss_chunk_size",
        ):
            value = getattr(self, name)
            # bool is an int to Python, but `"num_hidden_layers": true` in a config.json is a mistake, not 1
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ShuangyuConfig: {name} must be a positive integer, got {value!r}")
        if self.head_dim is not None and (not isinstance(self.head_dim, int) or isinstance(self.head_dim, bool)):
            raise ValueError(f"ShuangyuConfig: head_dim must be a positive integer or absent, got {self.head_dim!r}")
        for name in ("tie_word_embeddings", "attention_bias", "mlp_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ShuangyuConfig: {name} must be true or false, got {getattr(self, name)!r}")
        for name, lowest in (("norm_eps", None), ("initializer_range", 0)):  # None: above zero
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not (value > 0 or value == lowest):
                kind = "positive" if lowest is None else "non-negative"
                raise ValueError(f"ShuangyuConfig: {name} must be a {kind} number, got {value!r}")
        if self.rope_parameters is not None and not isinstance(self.rope_parameters, dict):
            raise ValueError(f"ShuangyuConfig: rope_parameters must be a dict or absent, got {self.rope_parameters!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"ShuangyuConfig: hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        head_dim = self.hidden_size // self.num_attention_heads
        if self.head_dim is not None and self.head_dim != head_dim:
            raise ValueError(
                f"ShuangyuConfig: head_dim ({self.head_dim}) must equal hidden_size // num_attention_heads ({head_dim})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"ShuangyuConfig: num_key_value_heads ({self.num_key_value_heads}) must divide "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if head_dim % 2:
            raise ValueError(
                f"ShuangyuConfig: RoPE needs an even head size, but hidden_size / num_attention_heads = "
                f"{self.hidden_size} / {self.num_attention_heads} = {head_dim}"
            )
        if self.norm_type not in NORM_TYPES:
            raise ValueError(f"ShuangyuConfig: norm_type must be one of {NORM_TYPES}, got {self.norm_type!r}")
        if self.mlp_type not in MLP_TYPES:
            raise ValueError(f"ShuangyuConfig: mlp_type must be one of {MLP_TYPES}, got {self.mlp_type!r}")
        if not isinstance(self.rope_theta, (int, float)) or not self.rope_theta > 0:
            raise ValueError(f"ShuangyuConfig: rope_theta must be positive, got {self.rope_theta!r}")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "ShuangyuConfig":
        """A named shape (`tiny`, `124m`, `350m`) with any field overridden, e.g. `vocab_size=...`."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


__all__ = ["ShuangyuConfig", "PRESETS"]
