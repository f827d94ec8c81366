"""Sampling a byte budget of text from several sources, in the shares their weights ask for (the tokenizer
trainer's mixing; the data pipeline mixes in tokens instead, see shuangyu.data.packing)."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shuangyu.errors import UsageError
from shuangyu.text.readers import (
    DEFAULT_OPTIONS,
    ReadOptions,
    ReadStats,
    estimated_text_bytes,
    iter_dataset_documents,
    iter_file_documents,
)
from shuangyu.text.sources import SourceSpec, check_weights

SHORTFALL_OK = 0.95  # a sampled source may end this close below its byte budget: its share is reported


@dataclass
class SourcePlan:
    """How much to take from one source, and at which sampling rate."""

    spec: SourceSpec
    files: list[Path]
    estimated_bytes: int | None  # None: unknown (a streamed dataset)
    budget: float  # bytes of text to take; math.inf: all of it, once
    repeat: bool = True  # read the source again while short of the budget; only a weight asks for more than it holds


def plan_mixture(
    sources: list[SourceSpec], files: list[list[Path]], max_bytes: int | None, opts: ReadOptions = DEFAULT_OPTIONS
) -> list[SourcePlan]:
    """Split the byte budget over sources.

    The total is the corpus size, capped at `max_bytes` (None: no cap). Without weights every source
    keeps its natural share of it: it is read once at most, however small, so a source of unknown size
    alone is read until the cap or its end. With weights each source gets its weight's share of the total, in
    bytes of text: a larger source is sampled down, a smaller one is read again (upsampled), so that one
    language cannot crowd the other out. A source of unknown size (a streamed dataset) needs weights
    and a cap whenever it is mixed with others.
    """
    check_weights(sources)
    estimates = [
        None if s.is_dataset else sum(estimated_text_bytes(p, opts) for p in f)
        for s, f in zip(sources, files, strict=True)
    ]
    unknown = [s.name for s, e in zip(sources, estimates, strict=True) if e is None]
    if unknown and len(sources) > 1 and (sources[0].weight is None or max_bytes is None):
        raise UsageError(
            f"the size of {', '.join(unknown)} is unknown: to mix it with other sources give every source"
            " a :WEIGHT and set --max_bytes"
        )
    cap = math.inf if max_bytes is None else float(max_bytes)
    if unknown:
        total = cap
    else:
        total = min(cap, float(sum(estimates)))
    if sources[0].weight is not None and len(sources) > 1:  # a lone source's weight has nothing to weigh against
        weight_sum = sum(s.weight for s in sources)
        budgets = [total * s.weight / weight_sum for s in sources]
    elif unknown:
        budgets = [total]
    elif total >= sum(estimates):
        budgets = [math.inf] * len(sources)  # everything, once
    else:
        budgets = [total * e / max(sum(estimates), 1) for e in estimates]
    # repeats only balance weighted sources against each other: a lone source is the whole corpus, read once
    repeat = sources[0].weight is not None and len(sources) > 1
    return [SourcePlan(s, f, e, b, repeat) for s, f, e, b in zip(sources, files, estimates, budgets, strict=True)]


def sample_source(
    plan: SourcePlan, opts: ReadOptions, stats: ReadStats, seed: int, split: str = "train"
) -> Iterator[str]:
    """Yield documents of one source until its byte budget is met, sampling documents at a rate planned
    from the source's size, and passing over the source again if it is smaller than its budget and its plan
    repeats (a weighted mix)."""
    rng = random.Random(f"{seed}:{plan.spec.name}")
    budget = plan.budget
    passes = 0
    while stats.bytes < budget:
        stats.passes += 1
        remaining = budget - stats.bytes
        size = plan.estimated_bytes
        # aim 3% high: sampling is random, and a short first pass would need a whole second pass
        rate = 1.0 if size is None or math.isinf(budget) else min(1.0, 1.03 * remaining / max(size, 1))
        keep = (lambda: True) if rate >= 1.0 else (lambda r=rate: rng.random() < r)
        before = stats.bytes
        if plan.spec.is_dataset:
            docs = iter_dataset_documents(plan.spec, split, opts, seed + passes, stats)
        else:
            order = list(plan.files)
            rng.shuffle(order)
            docs = (doc for path in order for doc in iter_file_documents(path, opts, stats, keep))
        for doc in docs:
            stats.docs += 1
            stats.bytes += len(doc.encode("utf-8"))
            yield doc
            if stats.bytes >= budget:
                return
        passes += 1
        if stats.bytes == before and (rate >= 1.0 or math.isinf(budget)):
            raise UsageError(f"source {plan.spec.name!r} holds no text (check the files and --text_column)")
        if not plan.repeat or math.isinf(budget) or stats.bytes >= SHORTFALL_OK * budget:
            return  # a natural share is one pass; else close enough: another pass would only add repeats
        # a whole pass tells the source's real size: plan the next pass on it
        plan.estimated_bytes = max(1, int((stats.bytes - before) / rate))
