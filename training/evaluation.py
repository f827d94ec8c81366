"""Evaluation during training: validation loss and bits per byte per language, and generated samples."""

from __future__ import annotations

import math

import torch

# Fixed prompts, so samples from successive evaluations can be compared by eye.
SAMPLE_PROMPTS = {"zh": "今天天气很好，我们", "en": "Once upon a time, there was a"}


def token_byte_lengths(tokenizer) -> torch.Tensor:
    """UTF-8 bytes each token id stands for (special tokens: 0), for bits per byte.

    In a byte-level BPE every character of a token's string is one byte, so the count is exact even for
    tokens that hold part of a character; other tokenizers are measured by decoding each token."""
    vocab = tokenizer.get_vocab()
    lengths = torch.zeros(max(len(tokenizer), max(vocab.values()) + 1), dtype=torch.long)
    special = set(tokenizer.all_special_ids)
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    byte_level = decoder is not None and "ByteLevel" in type(decoder).__name__
    for token, index in vocab.items():
        if index in special:
            continue
        lengths[index] = len(token) if byte_level else len(tokenizer.decode([index]).encode("utf-8"))
    return lengths


@torch.no_grad()
def evaluate(model, loaders: dict, byte_lengths: torch.Tensor, accelerator, max_batches: int = 0) -> dict:
    """Mean loss per token and bits per byte per language (every predicted token counted, over all ranks)."""
    model.eval()
    results = {}
    for name, loader in loaders.items():
        loss_sum = torch.zeros((), device=accelerator.device, dtype=torch.float64)
        tokens = torch.zeros((), device=accelerator.device, dtype=torch.float64)
        text_bytes = torch.zeros((), device=accelerator.device, dtype=torch.float64)
        for i, batch in enumerate(loader):
            if max_batches and i >= max_batches:
                break
            ids = batch["input_ids"] if isinstance(batch, dict) else batch
            out = model(input_ids=ids, labels=ids)
            n = ids[:, 1:].numel()
            loss_sum += out.loss.double() * n
            tokens += n
            text_bytes += byte_lengths.to(ids.device)[ids[:, 1:]].sum()
        loss_sum, tokens, text_bytes = (accelerator.reduce(t, "sum") for t in (loss_sum, tokens, text_bytes))
        mean = (loss_sum / tokens.clamp(min=1)).item()
        results[f"eval/{name}/loss"] = mean
        results[f"eval/{name}/bits_per_byte"] = (loss_sum / (text_bytes.clamp(min=1) * math.log(2))).item()
    model.train()
    return results


@torch.no_grad()
def generate_samples(model, tokenizer, device, max_new_tokens: int = 32) -> dict[str, str]:
    """Greedy continuations of the fixed prompts (run on the main process only, on the unwrapped model)."""
    model.eval()
    samples = {}
    for lang, prompt in SAMPLE_PROMPTS.items():
        ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        samples[f"samples/{lang}"] = tokenizer.decode(out[0], skip_special_tokens=False)
    model.train()
    return samples


def format_eval(step: int, logs: dict) -> str:
    """One line: loss and bits per byte per language, then the samples."""
    langs = [k.split("/")[1] for k in logs if k.startswith("eval/") and k.endswith("/loss")]
    scores = ", ".join(
        f"{lang} loss {logs[f'eval/{lang}/loss']:.3f} ({logs[f'eval/{lang}/bits_per_byte']:.3f} bits/byte)"
        for lang in langs
    )
    samples = "".join(f"\n  {k.split('/')[1]}: {v!r}" for k, v in logs.items() if k.startswith("samples/"))
    return f"step {step} validation: {scores}{samples}"
