"""Training metrics: FLOPs per token, MFU, throughput (bits per byte: shuangyu.evaluation.bits_per_byte)."""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch
from torch import nn

# Dense bf16 tensor-core peaks (fp16 where the GPU lacks bf16), FLOP/s, from the vendors' datasheets.
# MFU is reported against these; pass --peak_tflops for a device not listed (or to use another figure).
PEAK_FLOPS = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 80GB HBM3": 989e12,
    "H100 PCIe": 756e12,
    "H100": 756e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,
    "T4": 65e12,
}


def device_peak_flops(device: torch.device, override_tflops: float | None = None) -> float | None:
    """The device's peak FLOP/s, or None where unknown (CPUs: MFU is not reported)."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):  # most specific name first
        if key in name:
            return PEAK_FLOPS[key]
    return None


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token: 6 per weight of every matrix multiply (forward 2, backward 4), plus
    attention's score and value products, 12 * layers * attention width * sequence length (PaLM, app. B).
    The input embedding is a lookup, not a matmul; a head tied to it still multiplies."""
    config = model.config
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    matmul_params = sum(p.numel() for p in model.parameters() if p.ndim >= 2 and p is not embedding)
    if head is not None and head.weight is embedding:
        matmul_params += embedding.numel()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * head_dim * seq_len
    return 6 * matmul_params + attention


class Throughput:
    """Tokens per second and MFU between calls to `measure` (the caller syncs by reading a loss first)."""

    def __init__(self, flops_per_token: float, peak_flops: float | None, world_size: int = 1):
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.world_size = world_size
        self._tokens = 0
        self._start = time.perf_counter()

    def add(self, tokens: int) -> None:
        self._tokens += tokens

    def restart(self, device: torch.device | None = None) -> None:
        """Begin a new interval, dropping the tokens counted so far (a session's first step: its set-up); given the
        device, once its queued work is done (one sync: a GPU runs the steps behind the host)."""
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        self._tokens, self._start = 0, time.perf_counter()

    @contextmanager
    def paused(self):
        """Time spent inside (validation, a checkpoint) is left out of the interval; its tokens stay counted."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._start += time.perf_counter() - start

    def measure(self) -> dict:
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        tokens_per_s = self._tokens / elapsed
        out = {"tokens_per_s": tokens_per_s}
        if self.peak_flops:
            out["mfu"] = tokens_per_s * self.flops_per_token / (self.peak_flops * self.world_size)
        self.restart()
        return out
