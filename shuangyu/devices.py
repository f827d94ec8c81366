"""The torch device a command runs its model on: its --device flag, checked against what this machine's torch
sees before any model is loaded (torch would say it later, as a traceback)."""

from __future__ import annotations

import os

from shuangyu.errors import UsageError


def pick_device(asked: str | None, flag: str = "--device") -> str:
    """`asked`, or cuda where torch sees a GPU and cpu elsewhere; UsageError for a device torch does not know or
    this machine does not have."""
    import torch

    if asked is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(asked)
    except RuntimeError:
        raise UsageError(f"{flag} {asked}: not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{flag} {asked}: this machine's torch sees no CUDA GPU; use {flag} cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"{flag} {asked}: this machine has {torch.cuda.device_count()} GPU(s), numbered from 0")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"{flag} {asked}: this machine's torch has no MPS device; use {flag} cpu")
    return asked


def training_device() -> str:
    """The device type a training run's Accelerator will pick: cpu under accelerate's use_cpu (its cpu.yaml)
    or where torch sees no GPU, else cuda or mps; read before the Accelerator exists, so flags it cannot run
    are refused before any work."""
    import torch

    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"
