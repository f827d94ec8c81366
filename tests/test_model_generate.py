from pathlib import Path

import pytest
import torch

from shuangyu.modeling import ShuangyuConfig, ShuangyuForCausalLM

MINIMIND_TOKENIZER = Path("/work/shared/data/tokenizers/minimind/tokenizer.json")


def tiny_model(attn="sdpa", seed=0, **overrides):
    torch.manual_seed(seed)
    # A wide init so an untrained model's greedy stream varies (at 0.02 it repeats one token).
    config = ShuangyuConfig.from_preset("tiny", **{"initializer_range": 0.3, **overrides})
    return ShuangyuForCausalLM._from_config(config, attn_implementation=attn).eval()


def prompt(batch=1, seq=6, seed=3):
    return torch.randint(0, 512, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_greedy_with_cache_equals_without(attn):
    model = tiny_model(attn)
    x = prompt(batch=2)
    kwargs = dict(max_new_tokens=24, do_sample=False, pad_token_id=0)
    cached = model.generate(x, use_cache=True, **kwargs)
    uncached = model.generate(x, use_cache=False, **kwargs)
    assert cached.shape == (2, 6 + 24)
    assert torch.equal(cached, uncached)
    assert len(set(cached[0, 6:].tolist())) > 1  # not a degenerate constant stream


def test_incremental_decoding_matches_full_forward():
    model = tiny_model("sdpa", initializer_range=0.02)
    x = prompt(batch=2, seq=20)
    with torch.no_grad():
        full = model(x).logits
        out = model(x[:, :12], use_cache=True)
        steps = [out.logits]
        cache = out.past_key_values
        for t in range(12, 20):
            out = model(x[:, t : t + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            steps.append(out.logits)
    assert cache.get_seq_length() == 20
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_sampling_is_seeded_and_respects_max_new_tokens():
    model = tiny_model()
    x = prompt()

    def sample(seed):
        torch.manual_seed(seed)
        return model.generate(x, do_sample=True, top_k=50, temperature=1.0, max_new_tokens=15, pad_token_id=0)

    a, b, c = sample(1), sample(1), sample(2)
    assert a.shape == (1, 21) and torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.max()) < 512


def test_generation_stops_at_eos():
    model = tiny_model()
    x = prompt()
    free = model.generate(x, do_sample=False, max_new_tokens=20, pad_token_id=0)[0, 6:].tolist()
    eos = free[4]
    first = free.index(eos)
    stopped = model.generate(x, do_sample=False, max_new_tokens=20, eos_token_id=eos, pad_token_id=0)
    assert stopped[0, 6:].tolist() == free[: first + 1]


def test_positions_past_the_rope_table_at_inference():
    short = tiny_model(max_position_embeddings=8)
    long = tiny_model(max_position_embeddings=64)
    x = prompt(seq=30)
    with torch.no_grad():
        torch.testing.assert_close(short(x).logits, long(x).logits, atol=1e-5, rtol=0)


@pytest.mark.skipif(not MINIMIND_TOKENIZER.exists(), reason="shared tokenizer not present")
def test_generate_with_a_real_tokenizer():
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(MINIMIND_TOKENIZER))
    model = tiny_model(vocab_size=len(tok))
    ids = tok("双语模型 is bilingual", return_tensors="pt").input_ids
    assert tok.decode(ids[0]) == "双语模型 is bilingual"
    out = model.generate(ids, do_sample=False, max_new_tokens=8, pad_token_id=0)
    assert out.shape == (1, ids.shape[1] + 8)
    assert isinstance(tok.decode(out[0, ids.shape[1] :]), str)
