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
# Tokens per parameter, half and ten times Chinchilla's 20: below the first a model is under-trained, so the planner
# never picks one that would be, and a budget that leaves even the smallest shape there is too small; above the
# second the same compute would train a larger model to a lower loss, and a budget that takes even the largest
# shape there is beyond what the planner plans for.
MIN_TOKENS_PER_PARAMETER = 10
MAX_TOKENS_PER_PARAMETER = 200


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
    D = budget / (its FLOPs per token), C = M * D; among the shapes that the budget trains on at least
    MIN_TOKENS_PER_PARAMETER and that fit on the GPUs."""
    seq = request.seq_len
    scored, notes = [], []
    for shape in shapes.candidates(request.vocab_size):
        tokens = budget / shape.train_flops_per_token(seq)
        if tokens < MIN_TOKENS_PER_PARAMETER * shape.parameters:
            continue  # the law alone would pick some of these at small budgets (it counts no embedding)
        if request.tokens:
            distance = abs(math.log(tokens / request.tokens))
        elif request.law == "chinchilla":
            distance = abs(math.log(tokens / (laws.CHINCHILLA_TOKENS_PER_PARAMETER * shape.parameters)))
        else:
            m_opt, _ = laws.deepseek_allocation(shape.model_scale(seq) * tokens)
            distance = abs(math.log(shape.model_scale(seq) / m_opt))
        scored.append((distance, shape))
    if not scored:
        smallest = min(shapes.candidates(request.vocab_size), key=lambda s: s.train_flops_per_token(seq) * s.parameters)
        least = smallest.train_flops_per_token(seq) * MIN_TOKENS_PER_PARAMETER * smallest.parameters
        raise UsageError(
            f"a budget of {budget:.3g} FLOPs is too small: it trains even the smallest shape ({smallest.name}, "
            f"{smallest.parameters:,} parameters at vocab {request.vocab_size:,}) on fewer than "
            f"{MIN_TOKENS_PER_PARAMETER} tokens per parameter ({least:.3g} FLOPs): give more hours or GPUs, "
            "or fix --model and --tokens"
        )
    # The planner plans data parallelism only, so it picks among the shapes whose whole state fits on one GPU: a
    # user who asked for a budget wants a run, and the largest shape that fits is the law's best choice that runs
    # (a --model that does not fit is refused instead, with what sharding it would take).
    law_best = min(scored, key=lambda pair: pair[0])[1]
    fitting = [(d, s) for d, s in scored if fits_at_all(request, s)]
    if not fitting:
        raise UsageError(does_not_fit(request, min((s for _, s in scored), key=lambda s: s.parameters)))
    if not fits_at_all(request, law_best):
        largest = max((s for _, s in fitting), key=lambda s: s.parameters)
        fitting = [(d, s) for d, s in fitting if s is largest]
        notes.append(
            f"the law's choice {law_best.name} ({law_best.parameters / 1e6:,.0f}M parameters) does not fit on "
            f"{request.gpus} x {request.gpu.name} without sharding: capped at {largest.name}, the largest shape "
            f"that fits (for {law_best.name}, see what --model {law_best.name} says)"
        )
    best_distance, best = min(fitting, key=lambda pair: pair[0])
    named = [(d, s) for d, s in fitting if not s.name.startswith("d") and d <= best_distance + NAMED_PREFERENCE]
    if named:
        chosen = min(named, key=lambda pair: pair[0])[1]
        if chosen is not best:
            notes.append(f"{chosen.name} chosen over the law's nearest shape {best.name} ({best.describe()})")
        best = chosen
    return best, notes


def least_memory(request: Request, shape: Shape) -> memory.MemoryEstimate:
    """At micro-batch 1 with gradient checkpointing: the least a plan can hold."""
    return memory.estimate(shape, 1, request.seq_len, request.optimizer, True, request.gpus, request.gpu.is_cpu)


def fits_at_all(request: Request, shape: Shape) -> bool:
    return least_memory(request, shape).total <= usable_per_process(request)


def usable_per_process(request: Request) -> float:
    """What one training process may hold: each GPU's usable memory, or on a CPU its share of the host's, as the
    processes there all live in the one machine's memory."""
    usable = memory.usable_bytes(request.gpu.memory_gib, request.gpu.is_cpu)
    return usable / request.gpus if request.gpu.is_cpu else usable


def largest_budget(request: Request) -> float:
    """The budget that trains the largest shape on MAX_TOKENS_PER_PARAMETER: beyond it every shape would be
    over-trained, and the laws (fitted up to 3e20 FLOPs) are far from their data."""
    largest = max(shapes.candidates(request.vocab_size), key=lambda s: s.parameters)
    return largest.train_flops_per_token(request.seq_len) * MAX_TOKENS_PER_PARAMETER * largest.parameters


def split_batch(request: Request, shape: Shape, batch_tokens: float) -> tuple[int, int, bool, memory.MemoryEstimate]:
    """The largest power-of-two micro-batch (at most the law's batch) that fits, without gradient checkpointing
    if any does; accumulation makes up the rest of the law's batch."""
    seq, procs, cpu = request.seq_len, request.gpus, request.gpu.is_cpu
    usable = usable_per_process(request)
    per_process = batch_tokens / (seq * procs)
    largest = 2 ** max(0, int(math.floor(math.log2(max(per_process, 1)))))
    sizes = [2**j for j in range(int(math.log2(min(largest, MAX_MICRO_BATCH))), -1, -1)]
    for checkpointing in (False, True):
        for micro in sizes:
            est = memory.estimate(shape, micro, seq, request.optimizer, checkpointing, procs, cpu)
            if est.total <= usable:
                accumulation = max(1, round(per_process / micro))
                return micro, accumulation, checkpointing, est
    raise UsageError(does_not_fit(request, shape))


def does_not_fit(request: Request, shape: Shape) -> str:
    gpu, est = request.gpu, least_memory(request, shape)
    usable = usable_per_process(request)
    need, usable_text = memory.size(est.total), memory.size(usable)
    if need == usable_text:  # "needs 0.3 GiB ... 0.3 GiB usable" read as if it fitted: the difference in MiB
        need, usable_text = (f"{n / 2**20:,.0f} MiB" for n in (est.total, usable))
    where = f"{gpu.memory_gib:.3g} GiB, {usable_text} usable"
    if gpu.is_cpu and request.gpus > 1:
        where = f"{gpu.memory_gib:.3g} GiB shared by {request.gpus} processes, {usable_text} usable by each"
    advice = []
    if not gpu.is_cpu:
        # FSDP2 shards weights, gradients and optimizer state over the processes (no DDP buckets); the planner
        # plans data parallelism only, so it says what sharding takes rather than a --gpus it cannot plan with.
        state = est.weights + est.gradients + est.optimizer
        rest = est.total - est.ddp_buckets - state
        if rest + state / request.gpus <= usable and request.gpus > 1:
            gpus = request.gpus
        else:
            gpus = max(2, request.gpus + 1, math.ceil(state / (usable - rest))) if usable > rest else None
        if gpus is not None:
            launch = f"accelerate launch --config_file accelerate_configs/fsdp2.yaml --num_processes {gpus}"
            advice.append(
                f"about {(rest + state / gpus) / memory.GIB:.1f} GiB per GPU with FSDP2 over {gpus} GPUs "
                f"({launch} train_clm.py ..., which this planner does not plan: it plans data parallelism)"
            )
        fitting = [g for g in hardware.GPUS.values() if memory.usable_bytes(g.memory_gib) >= est.total]
        if fitting:
            smallest = sorted(fitting, key=lambda g: g.memory_gib)[:3]
            advice.append("a GPU with more memory (" + ", ".join(g.name for g in smallest) + ")")
    elif request.gpus > 1:
        advice.append("fewer processes (--gpus): on a CPU they share the host's memory")
    advice.append("a smaller --model or --seq_len")
    options = ", ".join(advice[:-1]) + f", or {advice[-1]}" if len(advice) > 1 else advice[0]
    return (
        f"{shape.name} ({shape.parameters / 1e6:,.0f}M parameters) needs {need} per {'process' if gpu.is_cpu else 'GPU'} even at micro-batch 1 "
        f"with gradient checkpointing ({est.describe()}): does not fit on {request.gpus} x {gpu.name} ({where}) "
        f"without sharding; options: {options}"
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
    if budget is not None and budget > (most := largest_budget(request)):
        flag = "--flops" if request.flops else "--hours"
        raise UsageError(
            f"{flag} {request.flops or request.hours:g}: a budget of {budget:.3g} FLOPs is beyond what the planner "
            f"plans for; the largest budget it plans for is {most:.3g} FLOPs (its largest shape "
            f"on {MAX_TOKENS_PER_PARAMETER} tokens per parameter)"
        )
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

    if request.tokens and abs(tokens - request.tokens) > 0.01 * request.tokens:  # whole steps of whole batches
        notes.append(
            f"--tokens {request.tokens:,} rounded to {steps:,} whole step{'s' if steps != 1 else ''} of {batch:,}: {tokens:,} tokens"
        )
    if batch > 1.5 * batch_law:
        notes.append(f"one micro-step ({batch:,} tokens) is above the law's batch ({batch_law:,.0f})")
    if not laws.in_fitted_range(compute):
        low, high = laws.FITTED_RANGE
        notes.append(
            f"C = {compute:.2g} FLOPs is outside the {low:.0e}..{high:.0e} the laws were fitted on: "
            "an extrapolation, a starting point to tune from"
        )
    per_param = tokens / shape.parameters
    if per_param < MIN_TOKENS_PER_PARAMETER:
        notes.append(f"{per_param:.1f} tokens per parameter: under-trained (Chinchilla's optimum is about 20)")
    elif per_param > MAX_TOKENS_PER_PARAMETER:
        notes.append(
            f"{per_param:,.0f} tokens per parameter: over-trained (Chinchilla's optimum is about 20); the same "
            "compute would train a larger model to a lower loss, worth it only for a model cheap to run"
        )
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
        usable_bytes=usable_per_process(request),
        notes=notes,
    )
    if plan.hours:
        plan.save_steps = max(1, min(steps, round(steps * CHECKPOINT_EVERY_S / (plan.hours * 3600))))
    else:
        plan.save_steps = max(1, steps // 20)
    return plan


@dataclass
class Estimate:
    """A model on a GPU without a budget: the micro-batch that fits, its memory, and the expected throughput."""

    request: Request
    shape: Shape
    mfu: float
    mfu_source: str
    micro_batch: int
    gradient_checkpointing: bool
    memory: memory.MemoryEstimate
    usable_bytes: float

    @property
    def tokens_per_second(self) -> float | None:
        """All processes together, at the MFU the plans use (recomputation costs a third more per token)."""
        r = self.request
        if r.gpu.peak_flops is None:
            return None
        per_token = self.shape.train_flops_per_token(r.seq_len)
        per_token *= GRADIENT_CHECKPOINTING_COST if self.gradient_checkpointing else 1
        return r.gpu.peak_flops * self.mfu * r.gpus / per_token


def estimate_model(request: Request) -> Estimate:
    """`--model` and `--gpu` alone: what a plan would hold and run at, before any budget. The micro-batch is the
    largest a plan could take (MAX_MICRO_BATCH per process), without gradient checkpointing if any fits."""
    default_mfu, mfu_source = hardware.default_mfu(request.gpu, request.optimizer)
    if request.mfu:
        mfu_source = "given with --mfu"
    shape = shapes.resolve(request.model, request.vocab_size)
    most = MAX_MICRO_BATCH * request.seq_len * request.gpus
    micro, _, checkpointing, est = split_batch(request, shape, most)
    usable = usable_per_process(request)
    return Estimate(request, shape, request.mfu or default_mfu, mfu_source, micro, checkpointing, est, usable)
