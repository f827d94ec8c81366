import math
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from shuangyu.modeling import ShuangyuConfig, ShuangyuForCausalLM
from shuangyu.modeling.modeling_shuangyu import causal_lm_loss, naive_causal_lm_loss
from shuangyu.training.model import enable_activation_checkpointing

BACKENDS = ["eager", "sdpa", "flex_attention"]


def tiny_model(attn="sdpa", seed=0, **overrides) -> ShuangyuForCausalLM:
    torch.manual_seed(seed)
    config = ShuangyuConfig.from_preset("tiny", **overrides)
    return ShuangyuForCausalLM._from_config(config, attn_implementation=attn).eval()


def with_backend(model: ShuangyuForCausalLM, attn: str) -> ShuangyuForCausalLM:
    model.set_attn_implementation(attn)
    return model


def token_ids(batch, seq, vocab=512, seed=1):
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def test_backends_agree_fp32():
    model = tiny_model("eager")
    x = token_ids(2, 48)
    with torch.no_grad():
        ref = model(x).logits
        for attn in BACKENDS[1:]:
            got = with_backend(model, attn)(x).logits
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=0, msg=attn)
    assert ref.shape == (2, 48, 512) and ref.std() > 0.1


def test_backends_agree_with_left_padding():
    model = tiny_model("eager")
    x = token_ids(2, 20)
    mask = torch.ones_like(x)
    mask[0, :7] = 0
    with torch.no_grad():
        ref = model(x, attention_mask=mask).logits
        got = with_backend(model, "sdpa")(x, attention_mask=mask).logits
    torch.testing.assert_close(got[mask.bool()], ref[mask.bool()], atol=1e-5, rtol=0)
    # The padded row's real tokens differ from the same tokens run without the padding in front.
    with torch.no_grad():
        alone = model(x[:1, 7:]).logits
    assert not torch.allclose(alone, model(x[:1]).logits[:, 7:], atol=1e-3)


def packed_row(lengths, seed=2):
    docs = [token_ids(1, n, seed=seed + i)[0] for i, n in enumerate(lengths)]
    ids = torch.cat(docs).unsqueeze(0)
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    return docs, ids, positions


@pytest.mark.parametrize(
    "attn",
    ["eager", "sdpa", pytest.param("flex_attention", marks=pytest.mark.slow)],  # flex compiles: ~15-75 s
)
def test_packed_document_equals_document_alone(attn):
    model = tiny_model(attn)
    docs, ids, positions = packed_row([11, 17, 9])
    with torch.no_grad():
        packed = model(ids, position_ids=positions).logits
        alone = model(docs[1].unsqueeze(0)).logits
        unpacked = model(ids).logits  # no restarts: the second document sees the first
    torch.testing.assert_close(packed[:, 11:28], alone, atol=1e-5, rtol=0)
    assert (unpacked[:, 11:28] - alone).abs().max() > 1e-3


def test_chunked_loss_equals_naive_loss_and_gradients():
    model = tiny_model("sdpa", tie_word_embeddings=False).train()
    x = token_ids(3, 29)
    labels = x.clone()
    labels[0, :5] = -100
    labels[2, 10:20] = -100
    model.config.loss_chunk_size = 7  # 87 rows: several chunks and a ragged last one

    def loss_and_grads(**kwargs):
        model.zero_grad()
        out = model(x, labels=labels, **kwargs)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters()}

    fused, fused_grads = loss_and_grads(return_logits=False)  # the training path
    naive, naive_grads = loss_and_grads()  # the default: logits, and the loss from them
    assert fused.logits is None and naive.logits is not None
    # Independent reference: textbook shift and mean over kept labels.
    shifted = naive.logits[:, :-1].reshape(-1, 512)
    targets = labels[:, 1:].reshape(-1)
    ref = torch.nn.functional.cross_entropy(shifted.double(), targets, ignore_index=-100)
    assert abs(naive.loss.item() - ref.item()) < 1e-5
    assert abs(fused.loss.item() - ref.item()) < 1e-5
    for name in naive_grads:
        torch.testing.assert_close(fused_grads[name], naive_grads[name], atol=1e-6, rtol=1e-4, msg=name)
    assert fused_grads["lm_head.weight"].abs().sum() > 0


def test_chunked_loss_with_num_items_in_batch_and_tied_head():
    model = tiny_model("sdpa").train()
    x = token_ids(2, 16)
    out = model(x, labels=x, num_items_in_batch=100, return_logits=False)
    total = naive_causal_lm_loss(model(x).logits, x, num_items_in_batch=1)
    assert abs(out.loss.item() - total.item() / 100) < 1e-6
    out.loss.backward()
    assert model.model.embed_tokens.weight.grad is not None


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_chunked_loss_never_builds_the_full_logits():
    hidden = torch.randn(4 * 64, 32, requires_grad=True)
    weight = torch.randn(1000, 32, requires_grad=True)
    labels = torch.randint(0, 1000, (4, 64))
    with LargestTensor() as chunked:
        causal_lm_loss(hidden.view(4, 64, 32), weight, labels, chunk_size=32).backward()
    with LargestTensor() as full:
        naive_causal_lm_loss((hidden @ weight.t()).view(4, 64, 1000), labels).backward()
    assert full.largest >= 4 * 64 * 1000
    assert chunked.largest <= 32 * 1000


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_model("sdpa").train()
    x = token_ids(2, 24)

    def grads():
        model.zero_grad()
        model(x, labels=x).loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # --gradient_checkpointing must not warn at every run
        enable_activation_checkpointing(model)
    assert model.is_activation_checkpointing
    for a, b in zip(plain, grads(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_gpt2_style_variant_trains():
    model = tiny_model("sdpa", norm_type="layernorm", mlp_type="gelu", attention_bias=True, mlp_bias=True)
    names = dict(model.named_parameters())
    assert "model.layers.0.self_attn.q_proj.bias" in names and "model.layers.0.mlp.up_proj.bias" in names
    assert "model.layers.0.mlp.gate_proj.weight" not in names and "model.norm.bias" in names
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = token_ids(4, 32, seed=5)
    losses = []
    for _ in range(20):
        loss = model(x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(512), abs=0.3)
    assert losses[-1] < losses[0] - 1.0


def test_initialisation_scales_residual_projections():
    model = tiny_model("sdpa", hidden_size=256, intermediate_size=512, num_attention_heads=4, num_hidden_layers=8)
    std = 0.02
    layer = model.model.layers[3]
    assert layer.self_attn.q_proj.weight.std().item() == pytest.approx(std, rel=0.05)
    assert layer.mlp.gate_proj.weight.std().item() == pytest.approx(std, rel=0.05)
    assert model.model.embed_tokens.weight.std().item() == pytest.approx(std, rel=0.05)
    scaled = std / math.sqrt(2 * 8)
    assert layer.self_attn.o_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert layer.mlp.down_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert torch.all(layer.input_layernorm.weight == 1)


def test_hidden_states_and_attentions_outputs():
    model = tiny_model("eager")
    out = model(token_ids(1, 10), output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    assert out.attentions[0].shape == (1, 4, 10, 10)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(1, 4, 10))


def test_flash_attention_2_without_flash_attn_is_a_clear_error():
    pytest.importorskip("torch")
    try:
        import flash_attn  # noqa: F401

        pytest.skip("flash-attn is installed here")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="FlashAttention2"):
        tiny_model("flash_attention_2")


def test_declared_capabilities():
    model = tiny_model()
    assert model.supports_gradient_checkpointing
    assert set(model._no_split_modules) == {"ShuangyuDecoderLayer"}
    assert model._supports_sdpa and model._supports_flex_attn and model._supports_flash_attn
    assert model.config._attn_implementation == "sdpa"


def test_a_cache_asked_for_under_gradient_checkpointing_is_none_as_in_llama():
    """The QA repro: the layers dropped the cache with their own warning and the model returned an empty one."""
    model = tiny_model("sdpa").train()
    enable_activation_checkpointing(model)
    out = model(token_ids(1, 8), use_cache=True)
    assert out.past_key_values is None
    model.eval()
    assert model(token_ids(1, 8), use_cache=True).past_key_values.get_seq_length() == 8
