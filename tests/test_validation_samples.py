"""The greedy samples train_clm.py prints at each validation stay within the model's context."""

import torch
from transformers import AutoTokenizer
from transformers.utils import logging as hf_logging

from shuangyu.modeling import ShuangyuConfig, ShuangyuForCausalLM
from shuangyu.training.validation import SAMPLE_PROMPTS, generate_samples


def test_samples_stop_at_the_models_context_and_warn_of_nothing(tiny_tokenizer_dir, capsys):
    """A planned model's context can be as short as its training blocks (32): generating 32 tokens past a prompt
    made transformers print its 'exceeded the model's predefined maximum length' reminder at every validation."""
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    torch.manual_seed(0)
    config = ShuangyuConfig.from_preset("tiny", vocab_size=len(tok), max_position_embeddings=32)
    model = ShuangyuForCausalLM._from_config(config)
    lengths, generate = [], model.generate

    def recorded(**kwargs):
        out = generate(**kwargs)
        lengths.append(out.shape[1])
        return out

    model.generate = recorded
    hf_logging.enable_propagation()
    try:
        samples = generate_samples(model, tok, "cpu", max_new_tokens=32)
    finally:
        hf_logging.disable_propagation()
    assert set(samples) == set(SAMPLE_PROMPTS) and len(lengths) == len(SAMPLE_PROMPTS)
    assert max(lengths) == 32  # prompt and continuation fill the context, and stop there
    out = capsys.readouterr()
    assert "maximum length" not in out.out + out.err
