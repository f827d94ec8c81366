"""Shuangyu: a decoder-only transformer as a Hugging Face `PreTrainedModel`.

One file on purpose, though long: it is one job (the model), it is copied into every saved checkpoint beside
configuration_shuangyu.py for `trust_remote_code=True`, and, like transformers' modeling_llama.py, it reads in
one sitting.

Read top to bottom: norms, rotary embedding, MLP, attention, decoder block, the model, the causal-LM head with
its chunked loss, a sequence-classification head (reward models). Parameter names and shapes follow `LlamaForCausalLM` (model.embed_tokens,
model.layers.N.self_attn.{q,k,v,o}_proj, model.layers.N.mlp.{gate,up,down}_proj, input_layernorm,
post_attention_layernorm, model.norm, lm_head) so that, with LLaMA knobs, export to stock Llama is a renaming.

Initialisation (`_init_weights`): every Linear and the embedding draw from N(0, initializer_range); the two
projections that write into the residual stream (attention `o_proj`, MLP `down_proj`) use
initializer_range / sqrt(2 * num_hidden_layers), as in GPT-2, so the residual stream's variance does not grow
with depth; biases start at zero, norm weights at one.

This file is copied next to the weights by `save_pretrained` (remote code): it imports only torch, transformers
and its sibling configuration file.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GenericForSequenceClassification, GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel, slice_logits_to_keep
from transformers.utils import logging
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .configuration_shuangyu import ShuangyuConfig

logger = logging.get_logger(__name__)

IGNORE_INDEX = -100


# ----------------------------------------------------------------------------------------------------- norms
class ShuangyuRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 so bf16 activations do not lose the mean square; same order of ops as LLaMA.
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def make_norm(config: ShuangyuConfig) -> nn.Module:
    if config.norm_type == "rmsnorm":
        return ShuangyuRMSNorm(config.hidden_size, eps=config.norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps)


# ------------------------------------------------------------------------------------------ rotary embedding
def positions_bound(past_key_values: Cache | None, past_seen, length: int) -> int | None:
    """More than any position of a forward of `length` new tokens, known without reading the device: a static
    cache counts its tokens on the device, so its size bounds them instead."""
    if isinstance(past_seen, int):
        return past_seen + length
    if past_key_values is None:
        return None
    # get_max_cache_shape in transformers 4, get_max_length in 5
    longest = getattr(past_key_values, "get_max_length", None) or past_key_values.get_max_cache_shape
    longest = longest()
    return longest if isinstance(longest, int) and longest > 0 else None


class ShuangyuRotaryEmbedding(nn.Module):
    """cos/sin for the given positions, for every RoPE variant that `config.rope_parameters` names.

    The inverse frequencies (and YaRN's attention scaling) come from transformers' `ROPE_INIT_FUNCTIONS`, as in
    Llama, so a scaled Shuangyu model and its Llama export rotate identically. For the variants whose frequencies
    are fixed (default, linear, yarn, llama3) cos/sin are looked up in an fp32 table of `max_position_embeddings`
    rows rather than computed as cos(position * inv_freq) on the fly: under torch.compile the compiler inlines
    that computation into every layer's rotary kernel (forward and backward), redoing pow/sin/cos per element;
    on an H100 at 124m that cost ~10% of the training step. A forward whose positions may pass the table (its
    `positions_bound`, past tokens plus its length, known without reading the device) computes them on the fly
    instead, as Llama always does: stock clients run longer sequences than the context (TRL's default
    max_length is 1024), and an index past the table would fail (a device-side assert on a GPU). At inference
    (eager) the table grows instead, for the decoding steps that follow. Positions given explicitly must stay
    below that bound (packed documents and left padding do); checking them would cost a host sync per step.
    The variants whose frequencies depend on the current length (dynamic, longrope) compute cos/sin on the fly,
    after transformers' `dynamic_rope_update` has updated `inv_freq`, exactly as Llama does.
    """

    def __init__(self, config: ShuangyuConfig):
        super().__init__()
        self.config = config
        self.rope_type = config.rope_parameters["rope_type"]
        # Read by dynamic_rope_update.
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        self.uses_table = self.rope_type not in ("dynamic", "longrope")
        inv_freq, self.attention_scaling = self.compute_inv_freq(config)
        # None of these is saved: all are functions of the config. _init_weights refills them after loading on the
        # meta device.
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)
        cos, sin = self.compute_table(config.max_position_embeddings, inv_freq)
        self.register_buffer("cos_table", cos, persistent=False)
        self.register_buffer("sin_table", sin, persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config: ShuangyuConfig, device=None, **kwargs) -> tuple[torch.Tensor, float]:
        """Plain RoPE: inv_freq[i] = theta ** (-2i / head_dim); no attention scaling."""
        theta = config.rope_parameters["rope_theta"]
        exponent = torch.arange(0, config.head_dim, 2, dtype=torch.int64, device=device).float() / config.head_dim
        return 1.0 / (theta**exponent), 1.0

    def compute_inv_freq(self, config: ShuangyuConfig, device=None) -> tuple[torch.Tensor, float]:
        if self.rope_type == "default":
            return self.compute_default_rope_parameters(config, device)
        return ROPE_INIT_FUNCTIONS[self.rope_type](config, device)

    def compute_table(self, length: int, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of position * inv_freq for positions 0..length-1, times the attention scaling (fp32)."""
        positions = torch.arange(length, dtype=torch.int64, device=inv_freq.device)
        return self.compute(positions, inv_freq)

    def compute(self, position_ids: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of position * inv_freq for the given positions, times the attention scaling (fp32)."""
        freqs = position_ids[..., None].float() * inv_freq.to(device=position_ids.device, dtype=torch.float32)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling

    @torch.no_grad()
    def forward(
        self, x: torch.Tensor, position_ids: torch.Tensor, positions_bound: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`positions_bound`: more than any position here, if known without reading the device (None: unknown)."""
        if not self.uses_table:
            return self.on_the_fly(x, position_ids)
        if not self.training and not torch.compiler.is_compiling():
            needed = int(position_ids.max()) + 1
            if needed > self.cos_table.shape[0]:
                self.cos_table, self.sin_table = self.compute_table(needed, self.inv_freq)
        elif positions_bound is None or positions_bound > self.cos_table.shape[0]:
            return self.on_the_fly(x, position_ids)
        cos = F.embedding(position_ids, self.cos_table)
        sin = F.embedding(position_ids, self.sin_table)
        return cos.to(x.dtype), sin.to(x.dtype)

    @dynamic_rope_update  # recomputes inv_freq for "dynamic" and "longrope"; a no-op for the others
    def on_the_fly(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.compute(position_ids, self.inv_freq)
        return cos.to(x.dtype), sin.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    # q, k: (batch, heads, seq, head_dim); cos, sin: (batch, seq, head_dim) -> broadcast over heads.
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


# ------------------------------------------------------------------------------------------------------- MLP
class ShuangyuMLP(nn.Module):
    def __init__(self, config: ShuangyuConfig):
        super().__init__()
        self.mlp_type = config.mlp_type
        width, inner, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        if self.mlp_type == "swiglu":
            self.gate_proj = nn.Linear(width, inner, bias=bias)
        self.up_proj = nn.Linear(width, inner, bias=bias)
        self.down_proj = nn.Linear(inner, width, bias=bias)
        self.down_proj.is_residual_projection = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mlp_type == "swiglu":
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(F.gelu(self.up_proj(x), approximate="tanh"))


# ------------------------------------------------------------------------------------------------- attention
def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain matmul-softmax-matmul; the reference the fused backends are tested against."""
    if module.num_key_value_groups > 1:
        key = key.repeat_interleave(module.num_key_value_groups, dim=1)
        value = value.repeat_interleave(module.num_key_value_groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = F.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return out, probs


class ShuangyuAttention(nn.Module):
    def __init__(self, config: ShuangyuConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_kv_heads  # read by the attention backends
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)
        self.o_proj.is_residual_projection = True

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, seq, _ = hidden_states.shape
        # Three matmuls, not one over concatenated weights: that measured ~4% slower compiled (bench/RESULTS.md).
        q = self.q_proj(hidden_states).view(batch, seq, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(batch, seq, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(batch, seq, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, k, *position_embeddings)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)

        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, weights = attention(
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=self.config.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        return self.o_proj(out.reshape(batch, seq, -1)), weights


# --------------------------------------------------------------------------------------------- decoder block
class ShuangyuDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ShuangyuConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = make_norm(config)
        self.self_attn = ShuangyuAttention(config, layer_idx)
        self.post_attention_layernorm = make_norm(config)
        self.mlp = ShuangyuMLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        # The attention weights, when asked for, are recorded by a hook on ShuangyuAttention (_can_record_outputs).
        attn_out, _ = self.self_attn(
            self.input_layernorm(hidden_states),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            **kwargs,
        )
        hidden_states = hidden_states + attn_out
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


# ----------------------------------------------------------------------------------------------------- model
class ShuangyuPreTrainedModel(PreTrainedModel):
    config_class = ShuangyuConfig
    config: ShuangyuConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ShuangyuDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    # All four go through ALL_ATTENTION_FUNCTIONS with (batch, heads, seq, head_dim) tensors and the mask
    # that create_causal_mask builds for the chosen backend.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    # output_hidden_states / output_attentions are collected by forward hooks on these modules (transformers'
    # capture_outputs): hidden_states = (embeddings, each block's output..., with the last one after the final norm).
    _can_record_outputs = {"hidden_states": ShuangyuDecoderLayer, "attentions": ShuangyuAttention}

    def _init_weights(self, module: nn.Module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "is_residual_projection", False):
                std = std / math.sqrt(2 * self.config.num_hidden_layers)
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, ShuangyuRotaryEmbedding):
            inv_freq, _ = module.compute_inv_freq(module.config)
            init.copy_(module.inv_freq, inv_freq)
            init.copy_(module.original_inv_freq, inv_freq)
            cos, sin = module.compute_table(module.cos_table.shape[0], inv_freq)
            init.copy_(module.cos_table, cos)
            init.copy_(module.sin_table, sin)
        elif isinstance(module, (ShuangyuRMSNorm, nn.LayerNorm)):
            init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)

    def save_pretrained(self, save_directory, *args, **kwargs):
        # transformers writes into auto_map only the saved class's own Auto class; a folder that carries its code
        # names every head, as stock custom-code models do, so that AutoModel (the bare model) and
        # AutoModelForSequenceClassification (a reward model from a causal LM) load it with trust_remote_code=True
        # where this package is not imported
        if self._auto_class is not None:
            self.config.auto_map = {
                **(getattr(self.config, "auto_map", None) or {}),
                **{auto: f"{__name__.rsplit('.', 1)[-1]}.{name}" for auto, name in AUTO_CLASSES.items()},
            }
        return super().save_pretrained(save_directory, *args, **kwargs)


class ShuangyuModel(ShuangyuPreTrainedModel):
    def __init__(self, config: ShuangyuConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(ShuangyuDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = make_norm(config)
        self.rotary_emb = ShuangyuRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        r"""
        Also takes `output_hidden_states`, `output_attentions` (eager attention only) and `return_dict` (False: a
        tuple), as every transformers model does; they are handled by `capture_outputs`.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        # A cache is for decoding (generate() asks for one explicitly). Training never reads it, and with a
        # cache the mask cannot keep packed documents (position_ids given) apart, so neither gets one by default.
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training and position_ids is None
        # as transformers' models do: a checkpointed layer would drop the cache (and an empty one was returned)
        if use_cache and self.training and any(getattr(m, "gradient_checkpointing", False) for m in self.layers):
            logger.warning_once(
                "`use_cache=True` is incompatible with gradient checkpointing. Setting `use_cache=False`."
            )
            use_cache, past_key_values = False, None
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)

        # The mask sees position_ids only when the caller gave them: then restarts mark packed documents and
        # each backend keeps attention inside them. Without them a plain causal mask is skipped entirely
        # (sdpa's is_causal), even under torch.compile, where the packed-sequence check cannot run eagerly.
        mask_position_ids = position_ids
        length = inputs_embeds.shape[1]
        past_seen = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None:
            position_ids = torch.arange(length, device=inputs_embeds.device) + past_seen
            position_ids = position_ids.unsqueeze(0)
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=mask_position_ids,
        )

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(
            hidden_states, position_ids, positions_bound(past_key_values, past_seen, length)
        )
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                position_embeddings=position_embeddings,
                attention_mask=mask,
                past_key_values=past_key_values,
                position_ids=position_ids,  # flash_attention_2 reads restarts from these (varlen)
                **kwargs,
            )
        return BaseModelOutputWithPast(
            last_hidden_state=self.norm(hidden_states),
            past_key_values=past_key_values if use_cache else None,
        )


# ------------------------------------------------------------------------------------------------------ loss
class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum of CE(hidden @ weight.T, labels) over tokens, divided by `denominator`, without the (tokens, vocab)
    logits tensor: rows are processed `chunk_size` at a time, and since the loss is the last op, the gradients
    for hidden and weight are computed in the same pass and only scaled in backward (no recompute)."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, denominator, chunk_size: int, need_grad: bool):
        n = hidden.shape[0]
        loss = hidden.new_zeros((), dtype=torch.float32)
        grad_hidden = torch.zeros_like(hidden) if need_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_grad else None
        for start in range(0, n, chunk_size):
            h = hidden[start : start + chunk_size]
            y = labels[start : start + chunk_size]
            logits = torch.matmul(h, weight.t())
            compute_dtype = logits.dtype  # bf16 under autocast
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            valid = y != IGNORE_INDEX
            target = torch.where(valid, y, 0).unsqueeze(1)
            loss = loss - (logprobs.gather(1, target).squeeze(1) * valid).sum()
            if need_grad:
                # d loss / d logits = softmax - one_hot(target), zero on ignored rows; in place, one buffer.
                dlogits = logprobs.exp_()
                dlogits.scatter_add_(1, target, torch.full_like(target, -1, dtype=dlogits.dtype))
                dlogits = dlogits.mul_(valid.unsqueeze(1)).to(compute_dtype)
                grad_hidden[start : start + chunk_size] = torch.matmul(dlogits, weight.to(compute_dtype))
                grad_weight += torch.matmul(dlogits.t(), h.to(compute_dtype))
        scale = 1.0 / denominator
        if need_grad:
            ctx.save_for_backward(grad_hidden, grad_weight, scale)
            ctx.weight_dtype = weight.dtype
        return loss * scale

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight, scale = ctx.saved_tensors
        g = grad_loss * scale
        return (
            grad_hidden * g.to(grad_hidden.dtype),
            (grad_weight * g).to(ctx.weight_dtype),
            None,
            None,
            None,
            None,
        )


def next_token_targets(labels: torch.Tensor | None, shift_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Targets aligned with the positions: token t predicts labels[t + 1], and the last position of each row
    predicts nothing. `shift_labels`, when given, are such targets already (trainers that split sequences across
    ranks, e.g. context parallelism, shift before splitting) and are used as they are."""
    if shift_labels is not None:
        return shift_labels
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def causal_lm_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor | None,
    chunk_size: int,
    num_items_in_batch: int | torch.Tensor | None = None,
    shift_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean next-token cross-entropy (fp32) over targets != -100 (or sum / num_items_in_batch, for gradient
    accumulation), computed chunk by chunk from the final hidden states and the head's weight."""
    targets = next_token_targets(labels, shift_labels).reshape(-1).to(hidden.device)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    if num_items_in_batch is None:
        denominator = (targets != IGNORE_INDEX).sum().clamp(min=1).float()
    else:
        denominator = torch.as_tensor(num_items_in_batch, dtype=torch.float32, device=hidden.device)
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, denominator, chunk_size, need_grad)


def naive_causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    num_items_in_batch=None,
    shift_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """The textbook version, on full fp32 logits: the reference for the chunked path."""
    targets = next_token_targets(labels, shift_labels).reshape(-1).to(logits.device)
    total = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    if num_items_in_batch is None:
        return total / (targets != IGNORE_INDEX).sum().clamp(min=1)
    return total / num_items_in_batch


# ------------------------------------------------------------------------------------------------- causal LM
class ShuangyuForCausalLM(ShuangyuPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    # Tensor parallelism: the head's rows (the vocabulary) are split and the logits gathered, as in Llama.
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: ShuangyuConfig):
        super().__init__(config)
        self.model = ShuangyuModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _head_weight(self) -> torch.Tensor:
        """The output head's weight for the chunked loss; under tensor parallelism (a DTensor sharded over the
        vocabulary) all of it, gathered, so the loss runs on plain tensors (gradients flow back to the shards)."""
        weight = self.lm_head.weight
        if hasattr(weight, "full_tensor"):
            weight = weight.full_tensor()
        return weight

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        return_logits: bool = True,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""
        labels: token ids to predict, aligned with input_ids (shifted inside); -100 marks positions without
            a loss.
        shift_labels: targets already shifted (position t predicts shift_labels[t]); used instead of shifting
            `labels`, as trainers that split sequences across ranks pass them (context parallelism, Ulysses).
        num_items_in_batch: divide the summed loss by this instead of the count of targets (gradient
            accumulation; `Trainer` passes it).
        logits_to_keep: if an int > 0, logits only for the last that many positions (generation uses 1); a
            tensor selects positions, as in transformers' `slice_logits_to_keep`.
        return_logits: True (default): `logits` are returned, as by every transformers causal LM, and the loss
            is computed from them. False, with labels: the training path that saves memory. The loss comes from
            a chunked head + cross-entropy that never holds the (tokens x vocab) fp32 logits, and `logits` is
            None. Without labels it changes nothing.
        return_dict: False gives a tuple (loss first when there is one), as for every transformers model.

        `shift_labels` and `num_items_in_batch` arrive through **kwargs, as in transformers' models: a named
        parameter containing "label" would make `Trainer` count it among the labels it waits for.
        """
        shift_labels = kwargs.pop("shift_labels", None)
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_dict=True,  # whatever config.return_dict says: the tuple, if asked for, is made on the way out
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        has_targets = labels is not None or shift_labels is not None
        loss = logits = None
        if has_targets and not return_logits:
            loss = causal_lm_loss(
                hidden, self._head_weight(), labels, self.config.loss_chunk_size, num_items_in_batch, shift_labels
            )
        else:
            logits = self.lm_head(slice_logits_to_keep(hidden, logits_to_keep))
            if has_targets:
                keeps_all = isinstance(logits_to_keep, int) and logits_to_keep == 0
                if keeps_all:
                    loss = naive_causal_lm_loss(logits, labels, num_items_in_batch, shift_labels)
                else:  # logits for some positions only: the loss still covers all of them
                    loss = causal_lm_loss(
                        hidden,
                        self._head_weight(),
                        labels,
                        self.config.loss_chunk_size,
                        num_items_in_batch,
                        shift_labels,
                    )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


# ------------------------------------------------------------------------------------ sequence classification
class ShuangyuForSequenceClassification(GenericForSequenceClassification, ShuangyuPreTrainedModel):
    """A score per sequence from its last token that is not padding, as LlamaForSequenceClassification
    (transformers' generic head and loss): a reward model (TRL's RewardTrainer) or classifier started from a
    causal-LM checkpoint, whose `score` head is new."""

    def __init__(self, config: ShuangyuConfig):
        # The generic __init__ builds the body with AutoModel.from_config, which does not know this remote code
        ShuangyuPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.model = ShuangyuModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()


# The Auto classes every saved folder names (ShuangyuPreTrainedModel.save_pretrained)
AUTO_CLASSES = {
    "AutoModel": "ShuangyuModel",
    "AutoModelForCausalLM": "ShuangyuForCausalLM",
    "AutoModelForSequenceClassification": "ShuangyuForSequenceClassification",
}

__all__ = ["ShuangyuPreTrainedModel", "ShuangyuModel", "ShuangyuForCausalLM", "ShuangyuForSequenceClassification"]
