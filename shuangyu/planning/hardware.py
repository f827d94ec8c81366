"""What a GPU gives a plan: peak FLOP/s (shuangyu.training.metrics.PEAK_FLOPS, the table MFU is reported
against), memory, the model FLOPs utilisation train_clm reaches on it, and a price where one is listed.

MFU is measured, not assumed, where bench/RESULTS.md has a run with the current training step: on one H200
(2026-12-04), the 124m preset, bf16, compiled, vocabulary 50,304, sequence 1024, train_clm.py ran
configs/124m.yaml's recipe (Muon, micro-batch 16 x accumulation 4) at 397,214 tokens/s, x 854.7M training FLOPs
per token (shapes.Shape.train_flops_per_token) / 989 TFLOP/s = 0.343. AdamW's figure is the same model step
with AdamW in the plain compiled loop (bench/model.py, micro-batch 16): 415,290 tokens/s = 0.359; train_clm's
Muon run was 0.96x that, which is Muon's step (4.7% of the compiled step), so its loop adds nothing measurable.
The H100 has the H200's chip and bf16 peak (less memory bandwidth) and gets the H200's figure; other GPUs too,
and the plan says it is assumed; `--mfu` sets it. (The H100 run of 2026-11-23, 0.213 and 0.243, predates the
step that no longer waits for the host.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shuangyu.errors import UsageError
from shuangyu.training.metrics import PEAK_FLOPS

MEASURED_MFU = {"adamw": 0.359, "muon": 0.343}  # H200, 124m (see above)
MEASURED_ON = "H200"


@dataclass(frozen=True)
class Gpu:
    name: str
    peak_flops: float | None  # dense bf16 (fp16 where there is no bf16); None: unknown (a CPU)
    memory_gib: float
    usd_per_hour: float | None = None  # Modal's list price (verified 2026-05-07), where we have one
    bf16: bool = True
    cpu: bool = False

    @property
    def is_cpu(self) -> bool:
        return self.cpu


# Memory as sold (the planner keeps a margin, see memory.usable_bytes). "H100" is the SXM card: what clouds rent
# and what bench/ measured; "A100" is the 40 GB card, as Modal names it.
GPUS = {
    "H100": Gpu("H100", PEAK_FLOPS["H100 SXM"], 80, 3.9492),
    "H100-PCIE": Gpu("H100-PCIE", PEAK_FLOPS["H100 PCIe"], 80),
    "H200": Gpu("H200", PEAK_FLOPS["H200"], 141),
    "A100-80GB": Gpu("A100-80GB", PEAK_FLOPS["A100"], 80, 2.4984),
    "A100-40GB": Gpu("A100-40GB", PEAK_FLOPS["A100"], 40),
    "L40S": Gpu("L40S", PEAK_FLOPS["L40S"], 48, 1.9512),
    "A10G": Gpu("A10G", PEAK_FLOPS["A10G"], 24),
    "L4": Gpu("L4", PEAK_FLOPS["L4"], 24, 0.7992),
    "RTX-4090": Gpu("RTX-4090", PEAK_FLOPS["RTX 4090"], 24),
    "RTX-3090": Gpu("RTX-3090", PEAK_FLOPS["RTX 3090"], 24),
    "V100": Gpu("V100", PEAK_FLOPS["V100"], 16, bf16=False),
    "T4": Gpu("T4", PEAK_FLOPS["T4"], 16, 0.5904, bf16=False),
}
ALIASES = {"H100SXM": "H100", "A100": "A100-40GB", "A10": "A10G", "4090": "RTX-4090", "3090": "RTX-3090"}


def _key(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "", name.upper())


def known_names() -> str:
    return ", ".join([*GPUS, "cpu"])


def resolve(name: str, peak_tflops: float | None = None, memory_gib: float | None = None) -> Gpu:
    """A GPU by name (case, spaces and dashes do not matter), `cpu`, or any name with --peak_tflops and
    --memory_gib. Either flag overrides the table's figure for a known GPU."""
    key = _key(name)
    table = {_key(k): v for k, v in GPUS.items()} | {_key(a): GPUS[t] for a, t in ALIASES.items()}
    if key == "CPU":
        peak = peak_tflops * 1e12 if peak_tflops else None
        return Gpu("cpu", peak, memory_gib or _host_memory_gib(), bf16=False, cpu=True)
    gpu = table.get(key)
    if gpu is None:
        if not peak_tflops or not memory_gib:
            raise UsageError(
                f"--gpu {name!r}: not a GPU the planner knows ({known_names()}); for another one give its "
                "dense bf16 peak and memory: --peak_tflops N --memory_gib N"
            )
        return Gpu(name, peak_tflops * 1e12, memory_gib)
    if peak_tflops or memory_gib:
        peak = peak_tflops * 1e12 if peak_tflops else gpu.peak_flops
        gpu = Gpu(gpu.name, peak, memory_gib or gpu.memory_gib, gpu.usd_per_hour, gpu.bf16)
    return gpu


def default_mfu(gpu: Gpu, optimizer: str) -> tuple[float, str]:
    """The MFU to plan with and where it comes from."""
    if gpu.is_cpu:
        return 1.0, "1 for a CPU: give what it achieves as --peak_tflops"
    mfu = MEASURED_MFU[optimizer]
    if gpu.name == MEASURED_ON:
        return mfu, f"measured on 1 {MEASURED_ON} at 124m (bench/RESULTS.md)"
    return mfu, f"measured on 1 {MEASURED_ON} at 124m, assumed for {gpu.name}: pass --mfu"


def _host_memory_gib() -> float:
    import psutil

    return psutil.virtual_memory().total / 2**30
