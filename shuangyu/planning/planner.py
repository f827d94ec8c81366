"""From a budget to a training plan: model shape, tokens, batch and its split, learning rate and schedule, time,
cost and memory. Pure arithmetic over laws.py, shapes.py, hardware.py and memory.py; plan.py is the command.

The steps, each explained where it happens:
1. the budget in FLOPs: GPUs x hours x peak x MFU, or --flops;
2. the model: --model, or the shape whose scale the allocation law wants for that budget (DeepSeek LLM's M_opt,
   or Chinchilla's 20 tokens per parameter), preferring a preset or named shape when one is nearly as close;
3. the tokens: --tokens, or all the budget buys for that model;
4. batch and learning rate from DeepSeek LLM's eq. 1 at the plan's compute C = M * D;
5. the batch split into micro-batch x accumulation x processes, the largest micro-batch that fits in memory;
6. steps, warmup, checkpoint interval, wall time and cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from shuangyu.errors import UsageError
from shuangyu.planning import hardware, laws, memory, shapes
from shuangyu.planning.hardware import Gpu
from shuangyu.planning.shapes import Shape

NAMED_PREFERENCE = math.log(1.3)  # IsoFLOP curves are flat near the optimum: 30% off in M costs little loss
MAX_MICRO_BATCH = 64
GRADIENT_CHECKPOINTING_COST = 4 / 3  # one more forward pass: 8 FLOPs per weight instead of 6
CHECKPOINT_EVERY_S = 1800  # a preemption loses at most about half an hour


@dataclass
class Request:
    gpu: Gpu
    gpus: int = 1
    hours: float | None = None
    flops: float | None = None
    mfu: float | None = None
    model: str | None = None
    tokens: int | None = None
    seq_len: int = 1024
    vocab_size: int = 32000
    law: str = "deepseek"
    optimizer: str = "muon"
    corpus_tokens: int | None = None
    usd_per_gpu_hour: float | None = None


@dataclass
class Plan:
    request: Request
    shape: Shape
    mfu: float
    mfu_source: str
    tokens: int
    compute: float  # C = M * D, as the laws count it
    train_flops: float  # what the GPUs compute, head and recomputation included
    micro_batch: int
    accumulation: int
    steps: int
    learning_rate: float
    batch_law_tokens: float
    warmup_steps: int
    save_steps: int
    gradient_checkpointing: bool
    memory: memory.MemoryEstimate
    usable_bytes: float
    notes: list[str] = field(default_factory=list)

    @property
    def processes(self) -> int:
        return self.request.gpus

    @property
    def global_batch_tokens(self) -> int:
        return self.micro_batch * self.request.seq_len * self.accumulation * self.processes

    @property
    def throughput_flops(self) -> float | None:
        gpu = self.request.gpu
        return None if gpu.peak_flops is None else gpu.peak_flops * self.mfu * self.request.gpus

    @property
    def hours(self) -> float | None:
        rate = self.throughput_flops
        return None if rate is None else self.train_flops / rate / 3600

    @property
    def usd_per_gpu_hour(self) -> float | None:
        return self.request.usd_per_gpu_hour or self.request.gpu.usd_per_hour

    @property
    def cost_usd(self) -> float | None:
        if self.hours is None or self.usd_per_gpu_hour is None:
            return None
        return self.hours * self.request.gpus * self.usd_per_gpu_hour


def budget_flops(request: Request, mfu: float) -> float | None:
    if request.flops:
        return request.flops
    if request.hours:
        if request.gpu.peak_flops is None:
            raise UsageError("--gpu cpu with --hours: give the CPU's --peak_tflops (or the budget as --flops)")
        return request.gpu.peak_flops * mfu * request.gpus * request.hours * 3600
    return None


def choose_shape(request: Request, budget: float) -> tuple[Shape, list[str]]:
    """The shape the allocation law wants for `budget` hardware FLOPs, each candidate judged at its own compute:
    D = budget / (its FLOPs per token), C = M * D."""
    seq = request.seq_len
    scored = []
    for shape in shapes.candidates(request.vocab_size):
        tokens = budget / shape.train_flops_per_token(seq)
        if request.tokens:
            distance = abs(math.log(tokens / request.tokens))
        elif request.law == "chinchilla":
            distance = abs(math.log(tokens / (laws.CHINCHILLA_TOKENS_PER_PARAMETER * shape.parameters)))
        else:
            m_opt, _ = laws.deepseek_allocation(shape.model_scale(seq) * tokens)
            distance = abs(math.log(shape.model_scale(seq) / m_opt))
        scored.append((distance, shape))
    best_distance, best = min(scored, key=lambda pair: pair[0])
    named = [(d, s) for d, s in scored if not s.name.startswith("d") and d <= best_distance + NAMED_PREFERENCE]
    notes = []
    if named:
        chosen = min(named, key=lambda pair: pair[0])[1]
        if chosen is not best:
            notes.append(f"{chosen.name} chosen over the law's nearest shape {best.name} ({best.describe()})")
        best = chosen
    smallest = min(shapes.named(request.vocab_size), key=lambda s: s.parameters)
    least = smallest.train_flops_per_token(seq) * laws.CHINCHILLA_TOKENS_PER_PARAMETER * smallest.parameters
    if budget < least:
        raise UsageError(
            f"a budget of {budget:.3g} FLOPs is too small for the smallest preset ({smallest.name}, "
            f"{smallest.parameters:,} parameters at vocab {request.vocab_size:,}: {least:.3g} FLOPs train it on "
            "20 tokens per parameter): give more hours or GPUs, or fix --model and --tokens"
        )
    return best, notes


def split_batch(request: Request, shape: Shape, batch_tokens: float) -> tuple[int, int, bool, memory.MemoryEstimate]:
    """The largest power-of-two micro-batch (at most the law's batch) that fits, without gradient checkpointing
    if any does; accumulation makes up the rest of the law's batch."""
    seq, procs, cpu = request.seq_len, request.gpus, request.gpu.is_cpu
    usable = memory.usable_bytes(request.gpu.memory_gib, cpu)
    per_process = batch_tokens / (seq * procs)
    largest = 2 ** max(0, int(math.floor(math.log2(max(per_process, 1)))))
    sizes = [2**j for j in range(int(math.log2(min(largest, MAX_MICRO_BATCH))), -1, -1)]
    for checkpointing in (False, True):
        for micro in sizes:
            est = memory.estimate(shape, micro, seq, request.optimizer, checkpointing, procs, cpu)
            if est.total <= usable:
                accumulation = max(1, round(per_process / micro))
                return micro, accumulation, checkpointing, est
    est = memory.estimate(shape, 1, seq, request.optimizer, True, procs, cpu)
    raise UsageError(does_not_fit(request, shape, est, usable))


def does_not_fit(request: Request, shape: Shape, est: memory.MemoryEstimate, usable: float) -> str:
    gpu = request.gpu
    need = est.total / memory.GIB
    where = f"{gpu.name}, {gpu.memory_gib:g} GiB, {memory.size(usable)} usable"
    advice = []
    sharded = (est.weights + est.gradients + est.optimizer) / max(request.gpus, 8)
    if not gpu.is_cpu:
        fsdp = est.total - est.ddp_buckets - (est.weights + est.gradients + est.optimizer) + sharded
        if fsdp <= usable:
            gpus = max(request.gpus, 8)
            advice.append(f"--gpus {gpus} with accelerate_configs/fsdp2.yaml (about {fsdp / memory.GIB:.1f} GiB each)")
        fitting = [g for g in hardware.GPUS.values() if memory.usable_bytes(g.memory_gib) >= est.total]
        if fitting:
            smallest = sorted(fitting, key=lambda g: g.memory_gib)[:3]
            advice.append("a GPU with more memory (" + ", ".join(g.name for g in smallest) + ")")
    advice.append("a smaller --model or --seq_len")
    return (
        f"{shape.name} ({shape.parameters / 1e6:,.0f}M parameters) needs {need:.1f} GiB per GPU even at micro-batch 1 "
        f"with gradient checkpointing ({est.describe()}): does not fit on this GPU ({where}); use "
        + " or ".join(advice)
    )


def warmup_for(steps: int) -> int:
    """DeepSeek LLM warmed up over 2000 of ~200k steps; small runs need a few percent of theirs."""
    return max(1, min(2000, round(0.02 * steps) or 1, steps // 5 or 1))


def make_plan(request: Request) -> Plan:
    if request.law not in laws.LAWS:
        raise UsageError(f"--law {request.law!r}: choose one of {', '.join(laws.LAWS)}")
    default_mfu, mfu_source = hardware.default_mfu(request.gpu, request.optimizer)
    mfu = request.mfu or default_mfu
    if request.mfu:
        mfu_source = "given with --mfu"
    budget = budget_flops(request, mfu)
    fixed = [request.model is not None, request.tokens is not None, budget is not None]
    if all(fixed):
        raise UsageError("--model, --tokens and a budget (--hours or --flops) fix the plan three times over: drop one")
    if budget is None and not (request.model and request.tokens):
        raise UsageError("give a budget (--hours with --gpu and --gpus, or --flops), or both --model and --tokens")
    notes: list[str] = []
    seq = request.seq_len
    if request.model:
        shape = shapes.resolve(request.model, request.vocab_size)
    else:
        shape, notes = choose_shape(request, budget)

    def plan_at(flops_per_token: float) -> tuple[int, float]:
        tokens = request.tokens or int(budget / flops_per_token)
        return tokens, shape.model_scale(seq) * tokens

    tokens, compute = plan_at(shape.train_flops_per_token(seq))
    micro, accumulation, checkpointing, est = split_batch(request, shape, laws.optimal_batch_tokens(compute))
    if checkpointing and not request.tokens:  # recomputation spends budget: fewer tokens for the same hours
        tokens, compute = plan_at(shape.train_flops_per_token(seq) * GRADIENT_CHECKPOINTING_COST)
    batch_law = laws.optimal_batch_tokens(compute)
    accumulation = max(1, round(batch_law / (micro * seq * request.gpus)))
    batch = micro * seq * accumulation * request.gpus
    steps = max(1, round(tokens / batch))
    tokens = steps * batch
    compute = shape.model_scale(seq) * tokens  # the laws at the plan as rounded to whole steps
    batch_law = laws.optimal_batch_tokens(compute)
    train_flops = tokens * shape.train_flops_per_token(seq) * (GRADIENT_CHECKPOINTING_COST if checkpointing else 1)

    if batch > 1.5 * batch_law:
        notes.append(f"one micro-step ({batch:,} tokens) is above the law's batch ({batch_law:,.0f})")
    if not laws.in_fitted_range(compute):
        low, high = laws.FITTED_RANGE
        notes.append(
            f"C = {compute:.2g} FLOPs is outside the {low:.0e}..{high:.0e} the laws were fitted on: "
            "an extrapolation, a starting point to tune from"
        )
    per_param = tokens / shape.parameters
    if per_param < 10:
        notes.append(f"{per_param:.1f} tokens per parameter: under-trained (Chinchilla's optimum is about 20)")
    if request.corpus_tokens:
        epochs = tokens / request.corpus_tokens
        if epochs > laws.MAX_USEFUL_EPOCHS:
            notes.append(
                f"{epochs:.1f} passes over a {request.corpus_tokens:,}-token corpus: beyond about "
                f"{laws.MAX_USEFUL_EPOCHS} repeats add little (Muennighoff et al. 2023); use more text or a smaller model"
            )
    if request.optimizer == "muon":
        notes.append(
            "the learning rate law was fitted with AdamW; train_clm's --muon_scale match_rms_adamw scales Muon's "
            "update to AdamW's RMS, so the same rate and weight decay carry over"
        )
    plan = Plan(
        request=request,
        shape=shape,
        mfu=mfu,
        mfu_source=mfu_source,
        tokens=tokens,
        compute=compute,
        train_flops=train_flops,
        micro_batch=micro,
        accumulation=accumulation,
        steps=steps,
        learning_rate=laws.optimal_learning_rate(compute),
        batch_law_tokens=batch_law,
        warmup_steps=warmup_for(steps),
        save_steps=steps,
        gradient_checkpointing=checkpointing,
        memory=est,
        usable_bytes=memory.usable_bytes(request.gpu.memory_gib, request.gpu.is_cpu),
        notes=notes,
    )
    if plan.hours:
        plan.save_steps = max(1, min(steps, round(steps * CHECKPOINT_EVERY_S / (plan.hours * 3600))))
    else:
        plan.save_steps = max(1, steps // 20)
    return plan
