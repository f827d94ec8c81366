"""Measure the peak memory of real training steps of a small Shuangyu model on CPU, for the planner's estimate.

    MALLOC_MMAP_THRESHOLD_=65536 python tests/scripts/measure_train_memory.py SHAPE_JSON MICRO_BATCH SEQ_LEN \
        RUNS_JSON        # e.g. '[["adamw", 2, false], ["muon", 1, true]]': optimizer, accumulation, checkpointing

Prints one JSON line per run: the peak resident memory added by building the model and optimizer and running the
steps (bytes; Linux's VmHWM after resetting it through /proc/self/clear_refs, minus the resident memory at the
reset). Run by tests/test_planning.py in a fresh process, so nothing else the tests allocated is counted. With a
fixed glibc mmap threshold, tensors above 64 KiB are mmap-ed and given back to the system when freed, so the
resident peak follows the live tensors (without it, freed activations stay in the heap and blur the peak).
"""

import argparse
import gc
import json
import re

import torch

from shuangyu.modeling import ShuangyuConfig, ShuangyuForCausalLM
from shuangyu.training.arguments import OptimizerArguments
from shuangyu.training.model import enable_activation_checkpointing
from shuangyu.training.optim import build_optimizer

STEPS = 2  # the optimizer state exists from the first step on: the second step has the steady-state peak


def kib(field: str) -> int:
    text = open("/proc/self/status").read()
    return int(re.search(field + r":\s+(\d+) kB", text).group(1)) * 1024


def run_steps(config, micro_batch, seq_len, optimizer, accumulation, checkpointing, steps):
    model = ShuangyuForCausalLM(config)
    if checkpointing:
        enable_activation_checkpointing(model)
    model.train()
    opt = build_optimizer(model, OptimizerArguments(optimizer=optimizer, learning_rate=1e-3))
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        for _ in range(accumulation):
            ids = torch.randint(0, config.vocab_size, (micro_batch, seq_len), generator=gen)
            out = model(input_ids=ids, labels=ids, return_logits=False)
            (out.loss / accumulation).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model, opt


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("shape")
    parser.add_argument("micro_batch", type=int)
    parser.add_argument("seq_len", type=int)
    parser.add_argument("runs")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    config = ShuangyuConfig(**json.loads(args.shape))
    small = ShuangyuConfig(**{**json.loads(args.shape), "num_hidden_layers": 1})
    for optimizer, accumulation, checkpointing in json.loads(args.runs):
        # warm up every code path (kernels, lazy imports, allocator pools) on a much smaller copy
        run_steps(small, 1, 8, optimizer, 1, checkpointing, 2)
        gc.collect()
        open("/proc/self/clear_refs", "w").write("5")  # reset the resident high-water mark to the current RSS
        base = kib("VmRSS")
        model, opt = run_steps(config, args.micro_batch, args.seq_len, optimizer, accumulation, checkpointing, STEPS)
        print(json.dumps({"peak_bytes": kib("VmHWM") - base, "after_bytes": kib("VmRSS") - base}), flush=True)
        del model, opt
        gc.collect()


if __name__ == "__main__":
    main()
