"""RoPE scaling through `rope_parameters`, as Llama takes it: each variant runs, plain RoPE is unchanged, the
scaled variants do what their names say, and a scaled model exports to Llama with the same logits."""

import json
import math

import pytest
import torch
from transformers import DynamicCache, StaticCache

from shuangyu.modeling import ShuangyuConfig, ShuangyuForCausalLM
from shuangyu.modeling.export import main as export_main
from shuangyu.modeling.modeling_shuangyu import positions_bound

MAX_POS = 64
ROPE_CASES = {
    "default": dict(rope_parameters={"rope_type": "default"}),
    "linear": dict(rope_parameters={"rope_type": "linear", "factor": 2.0}),
    "dynamic": dict(rope_parameters={"rope_type": "dynamic", "factor": 2.0}),
    "yarn": dict(
        max_position_embeddings=4 * MAX_POS,
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": MAX_POS},
    ),
    "llama3": dict(
        max_position_embeddings=4 * MAX_POS,
        rope_parameters={
            "rope_type": "llama3",
            "factor": 4.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": MAX_POS,
        },
    ),
    "longrope": dict(
        max_position_embeddings=4 * MAX_POS,
        rope_parameters={
            "rope_type": "longrope",
            "short_factor": [1.0] * 8,
            "long_factor": [1.0 + i / 2 for i in range(8)],
            "original_max_position_embeddings": MAX_POS,
        },
    ),
}


def tiny_model(seed=0, **overrides) -> ShuangyuForCausalLM:
    torch.manual_seed(seed)
    config = ShuangyuConfig.from_preset("tiny", **{"max_position_embeddings": MAX_POS, **overrides})
    return ShuangyuForCausalLM(config).eval()


def token_ids(seq, seed=1):
    return torch.randint(0, 512, (1, seq), generator=torch.Generator().manual_seed(seed))


def logits(model, x):
    with torch.no_grad():
        return model(x, use_cache=False).logits


def test_default_rope_is_the_previous_table():
    # The table this model has always used: cos/sin of position * theta^(-2i/d), duplicated over the halves.
    model = tiny_model(rope_theta=50000.0)
    rotary = model.model.rotary_emb
    d = model.config.head_dim
    inv_freq = 1.0 / (50000.0 ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    angles = torch.arange(MAX_POS, dtype=torch.int64).float()[:, None] * inv_freq
    angles = torch.cat((angles, angles), dim=-1)
    assert model.config.rope_parameters == {"rope_type": "default", "rope_theta": 50000.0}
    assert torch.equal(rotary.cos_table, angles.cos()) and torch.equal(rotary.sin_table, angles.sin())
    assert rotary.attention_scaling == 1.0


def test_linear_factor_one_equals_default():
    x = token_ids(40)
    plain = logits(tiny_model(), x)
    linear = logits(tiny_model(rope_parameters={"rope_type": "linear", "factor": 1.0}), x)
    torch.testing.assert_close(linear, plain, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(ROPE_CASES))
def test_each_rope_type_runs_past_the_trained_length(name):
    model = tiny_model(**ROPE_CASES[name])
    assert model.model.rotary_emb.rope_type == name
    x = token_ids(3 * MAX_POS)  # past the original length; for the scaled ones within the extended one
    out = logits(model, x)
    assert out.shape == (1, 3 * MAX_POS, 512) and torch.isfinite(out).all()
    if name != "default":
        plain = logits(tiny_model(), x)
        assert (out - plain).abs().max() > 1e-3  # the scaling changes the rotation


@pytest.mark.parametrize("name", ["default", "yarn"])
def test_training_past_the_context_computes_what_inference_does(name):
    # Stock clients train past the context (TRL's default max_length is 1024); Llama computes every position.
    model = tiny_model(**ROPE_CASES[name]).train()
    length = model.config.max_position_embeddings + 5
    x = token_ids(length)
    training = model(x, labels=x).logits.detach()
    assert model.model.rotary_emb.cos_table.shape[0] == length - 5  # computed on the fly: nothing grown
    torch.testing.assert_close(logits(model.eval(), x), training, rtol=0, atol=1e-5)
    assert model.model.rotary_emb.cos_table.shape[0] == length  # inference grows the table for decoding


def test_positions_bound_is_known_without_reading_the_device():
    model = tiny_model()
    dynamic = DynamicCache(config=model.config)
    assert positions_bound(None, 0, 7) == 7 and positions_bound(dynamic, 0, 7) == 7
    static = StaticCache(config=model.config, max_cache_len=40)
    assert positions_bound(static, torch.tensor(3), 1) == 40  # the static cache counts on the device


def test_linear_scaling_interpolates_positions():
    plain = tiny_model().model.rotary_emb
    linear = tiny_model(rope_parameters={"rope_type": "linear", "factor": 2.0}).model.rotary_emb
    x = torch.zeros(1)
    cos_l, sin_l = linear(x, torch.arange(0, 2 * MAX_POS, 2)[None])
    cos_p, sin_p = plain(x, torch.arange(MAX_POS)[None])
    torch.testing.assert_close(cos_l, cos_p, rtol=0, atol=1e-6)  # position 2p, scaled by 2, is position p
    torch.testing.assert_close(sin_l, sin_p, rtol=0, atol=1e-6)


def test_dynamic_ntk_changes_only_past_the_trained_length():
    plain = tiny_model()
    dynamic = tiny_model(rope_parameters={"rope_type": "dynamic", "factor": 2.0})
    short, long = token_ids(MAX_POS - 16), token_ids(2 * MAX_POS)
    torch.testing.assert_close(logits(dynamic, short), logits(plain, short), rtol=0, atol=1e-5)
    assert (logits(dynamic, long) - logits(plain, long)).abs().max() > 1e-3
    assert dynamic.model.rotary_emb.max_seq_len_cached == 2 * MAX_POS  # grown for the long input
    # Back to a short input: the original frequencies again (transformers' dynamic_rope_update resets them).
    torch.testing.assert_close(logits(dynamic, short), logits(plain, short), rtol=0, atol=1e-5)


def test_yarn_scales_attention_as_the_paper_says():
    rotary = tiny_model(**ROPE_CASES["yarn"]).model.rotary_emb
    assert rotary.attention_scaling == pytest.approx(0.1 * math.log(4.0) + 1.0)
    # High frequencies are kept, low ones interpolated by the factor.
    plain = tiny_model().model.rotary_emb
    assert rotary.inv_freq[0] == pytest.approx(plain.inv_freq[0].item())
    assert rotary.inv_freq[-1] == pytest.approx(plain.inv_freq[-1].item() / 4.0)


def test_extend_the_context_of_a_saved_model_at_load_time(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    extended = ShuangyuForCausalLM.from_pretrained(
        tmp_path,
        max_position_embeddings=4 * MAX_POS,
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": MAX_POS},
    ).eval()
    assert extended.model.rotary_emb.rope_type == "yarn"
    assert extended.model.rotary_emb.cos_table.shape[0] == 4 * MAX_POS
    assert torch.isfinite(logits(extended, token_ids(4 * MAX_POS))).all()
    extended.save_pretrained(tmp_path / "extended")
    saved = json.loads((tmp_path / "extended" / "config.json").read_text())
    assert saved["rope_parameters"]["rope_type"] == "yarn" and saved["max_position_embeddings"] == 4 * MAX_POS
    again = ShuangyuForCausalLM.from_pretrained(tmp_path / "extended").eval()
    x = token_ids(100)
    torch.testing.assert_close(logits(again, x), logits(extended, x), rtol=0, atol=0)


def test_legacy_rope_scaling_and_rope_theta_stay_in_step():
    config = ShuangyuConfig.from_preset("tiny", rope_theta=1e6, rope_scaling={"type": "linear", "factor": 2.0})
    assert config.rope_parameters == {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6}
    config = ShuangyuConfig.from_preset("tiny", rope_parameters={"rope_type": "default", "rope_theta": 5e5})
    assert config.rope_theta == 5e5  # the dict wins, and the flat field follows it


@pytest.mark.parametrize(
    "rope_parameters, message",
    [
        ({"rope_type": "ntk-by-parts"}, "rope_type"),
        ({"rope_type": "linear"}, "factor"),
        ({"rope_type": "dynamic", "factor": 0.5}, "factor"),
    ],
)
def test_bad_rope_parameters_name_the_field(rope_parameters, message):
    with pytest.raises(ValueError, match=message):
        ShuangyuConfig.from_preset("tiny", rope_parameters=rope_parameters)


@pytest.mark.slow  # ~15 s on CPU; the plain-RoPE compile test (test_model_compile.py) runs the same table code
def test_scaled_rope_compiles_fullgraph_for_training():
    torch._dynamo.reset()
    model = tiny_model(**ROPE_CASES["yarn"]).train()
    x = token_ids(48)
    compiled = torch.compile(model, fullgraph=True)
    eager = model(x, labels=x, return_logits=False).loss
    torch.testing.assert_close(compiled(x, labels=x, return_logits=False).loss, eager, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["linear", "dynamic", "yarn", "llama3"])
def test_scaled_model_exports_to_llama_with_the_same_logits(tmp_path, name):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    model = tiny_model(initializer_range=0.2, **ROPE_CASES[name])
    model.save_pretrained(tmp_path / "src")
    assert export_main(["--to", "llama", str(tmp_path / "src"), str(tmp_path / "dst")]) == 0
    llama = AutoModelForCausalLM.from_pretrained(tmp_path / "dst").eval()
    assert type(llama) is LlamaForCausalLM
    assert llama.config.rope_parameters["rope_type"] == name
    x = token_ids(3 * MAX_POS)
    torch.testing.assert_close(logits(llama, x), logits(model, x), rtol=0, atol=1e-5)
    saved = json.loads((tmp_path / "dst" / "config.json").read_text())
    # transformers 4.x reads rope_theta and rope_scaling; 5.x reads rope_parameters: the same numbers.
    assert saved["rope_theta"] == 10000.0
    assert saved["rope_scaling"] == {k: v for k, v in saved["rope_parameters"].items() if k != "rope_theta"}
