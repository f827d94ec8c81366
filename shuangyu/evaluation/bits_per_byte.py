"""Held-out loss as bits per byte: the one implementation, used by training's validation and by eval/run.py.

Loss per token depends on the tokenizer; loss per UTF-8 byte of text does not, so models with different
vocabularies (and Chinese next to English) compare. Each predicted token is charged the bytes of text it stands
for; special tokens stand for none.
"""

from __future__ import annotations

import math

import torch


def token_byte_lengths(tokenizer) -> torch.Tensor:
    """UTF-8 bytes each token id stands for (special tokens: 0).

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


def bits_per_byte(nll_nats: float, text_bytes: float) -> float:
    """Summed cross-entropy (nats) over the bytes of text it predicted, in bits per byte."""
    return nll_nats / (max(text_bytes, 1) * math.log(2))


class HeldOutLoss:
    """Sums, over batches of token rows, of the next-token loss (nats), the tokens predicted and their bytes.

    Sums rather than means, so several processes can add theirs up (`reduce`) before the result is read."""

    def __init__(self, byte_lengths: torch.Tensor, device):
        self.byte_lengths = byte_lengths.to(device)
        self.sums = torch.zeros(3, device=device, dtype=torch.float64)  # nll, tokens, bytes

    @torch.no_grad()
    def add(self, model, input_ids: torch.Tensor, labels: torch.Tensor | None = None, position_ids=None) -> None:
        """Score the rows; with `labels` (-100: not scored, e.g. all but a chat model's replies) only those tokens,
        and with `position_ids` attention stays inside each packed example."""
        # the model's own loss (mean over the predicted tokens, labels shifted inside) times their count
        config = getattr(getattr(model, "module", model), "config", None)  # DDP wraps the model in .module
        kwargs = {"return_logits": False} if getattr(config, "model_type", None) == "shuangyu" else {}
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        labels = input_ids if labels is None else labels
        loss = model(input_ids=input_ids, labels=labels, **kwargs).loss  # ours: without the full logits
        targets = labels[:, 1:]
        scored = targets != -100
        count = scored.sum()
        # a batch with nothing to score has a NaN mean: it adds nothing
        self.sums[0] += torch.where(count > 0, loss.double() * count, torch.zeros_like(loss, dtype=torch.float64))
        self.sums[1] += count
        self.sums[2] += self.byte_lengths[targets.clamp(min=0)][scored].sum()

    def reduce(self, reduce_fn) -> HeldOutLoss:
        """Add up the sums of every process (`reduce_fn` is e.g. `lambda t: accelerator.reduce(t, "sum")`)."""
        self.sums = reduce_fn(self.sums)
        return self

    def result(self) -> dict:
        nll, tokens, text_bytes = self.sums.tolist()
        mean = nll / max(tokens, 1)
        return {
            "loss": mean,
            "bits_per_byte": bits_per_byte(nll, text_bytes),
            "perplexity": math.exp(min(mean, 700.0)),
            "tokens": int(tokens),
            "bytes": int(text_bytes),
        }
