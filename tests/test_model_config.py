import pytest
import torch

from shuangyu.modeling import PRESETS, ShuangyuConfig, ShuangyuForCausalLM


def count_parameters(config: ShuangyuConfig) -> int:
    with torch.device("meta"):
        model = ShuangyuForCausalLM(config)
    # Tied weights are one tensor; count each storage once.
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def test_presets_have_the_documented_shapes():
    c = ShuangyuConfig.from_preset("124m", vocab_size=32000)
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads) == (12, 768, 12)
    assert c.head_dim == 64 and c.num_key_value_heads == 12
    c = ShuangyuConfig.from_preset("350m", vocab_size=50000)
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.vocab_size) == (24, 1024, 16, 50000)
    assert set(PRESETS) >= {"tiny", "124m", "350m"}
    # 85M in the blocks + 24.6M tied embedding at vocab 32000.
    assert 105e6 < count_parameters(ShuangyuConfig.from_preset("124m", vocab_size=32000)) < 115e6


def test_llama_style_defaults():
    c = ShuangyuConfig()
    assert (c.norm_type, c.mlp_type, c.attention_bias, c.mlp_bias) == ("rmsnorm", "swiglu", False, False)
    assert c.model_type == "shuangyu"


@pytest.mark.parametrize(
    "overrides, names",
    [
        (dict(hidden_size=100, num_attention_heads=3), ["hidden_size", "num_attention_heads"]),
        (dict(num_attention_heads=4, num_key_value_heads=3), ["num_key_value_heads", "num_attention_heads"]),
        (dict(hidden_size=36, num_attention_heads=4), ["RoPE", "hidden_size", "num_attention_heads"]),
        (dict(norm_type="batchnorm"), ["norm_type"]),
        (dict(mlp_type="relu"), ["mlp_type"]),
        (dict(vocab_size=0), ["vocab_size"]),
        (dict(head_dim=32), ["head_dim"]),
        # a config.json's wrong types: true is an int to Python, a string is not a number
        (dict(num_hidden_layers=True), ["num_hidden_layers", "positive integer"]),
        (dict(head_dim="16"), ["head_dim", "positive integer"]),
        (dict(norm_eps="1e-6"), ["norm_eps", "positive number"]),
        (dict(initializer_range=-0.02), ["initializer_range", "non-negative"]),
        (dict(tie_word_embeddings="yes"), ["tie_word_embeddings", "true or false"]),
        (dict(rope_parameters=5), ["rope_parameters", "dict"]),
    ],
)
def test_invalid_shapes_name_the_fields(overrides, names):
    with pytest.raises(ValueError) as err:
        ShuangyuConfig.from_preset("tiny", **overrides)
    for name in names:
        assert name in str(err.value)


def test_unknown_preset():
    with pytest.raises(ValueError, match="tiny"):
        ShuangyuConfig.from_preset("7b")


def test_config_round_trip(tmp_path):
    c = ShuangyuConfig.from_preset("tiny", rope_theta=500000.0, norm_type="layernorm", mlp_type="gelu")
    c.save_pretrained(tmp_path)
    back = ShuangyuConfig.from_pretrained(tmp_path)
    assert back.to_dict() == c.to_dict()
