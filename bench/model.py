"""Training-step throughput and peak memory: Shuangyu against stock transformers.LlamaForCausalLM.

One step = forward with labels + backward + AdamW step, on random token ids, for the same shape and batch.
Each (model, mode) runs in its own subprocess so compile caches and peak-memory counters do not leak between
rows. Prints a table whose last column is tokens/s relative to compiled stock Llama.

    python bench/model.py                                    # CPU, small shape
    python bench/model.py --device cuda --preset 124m --seq_len 1024 --batch_size 16 --dtype bf16

Rows: `shuangyu` (as shipped: chunked head + loss), `shuangyu-fullogits` (same model, loss from full fp32
logits, to show what the chunked loss costs or saves) and `llama` (stock LlamaForCausalLM, same shape).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from turns import my_turn, warm_up

ROOT = Path(__file__).resolve().parents[1]

MODELS = ("shuangyu", "shuangyu-fullogits", "llama")
MODES = ("eager", "compiled")


def build_model(name: str, args):
    import torch
    from transformers import LlamaForCausalLM

    from shuangyu.modeling import ShuangyuConfig, ShuangyuForCausalLM
    from shuangyu.modeling.export import to_llama_config

    overrides = dict(vocab_size=args.vocab_size, max_position_embeddings=max(args.seq_len, 16))
    if args.loss_chunk_size:
        overrides["loss_chunk_size"] = args.loss_chunk_size
    config = ShuangyuConfig.from_preset(args.preset, **overrides)
    config._attn_implementation = args.attn
    torch.manual_seed(0)
    if name == "llama":
        llama_config = to_llama_config(config)
        llama_config._attn_implementation = args.attn
        return LlamaForCausalLM(llama_config)
    return ShuangyuForCausalLM(config)


def worker(args) -> dict:
    """One (model, mode) row: warm up (compiles), then time `steps` steps."""
    import torch

    name, mode = args.worker.split(":")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    model = build_model(name, args).to(device).train()
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    forward = torch.compile(model, mode=args.compile_mode) if mode == "compiled" else model
    # ours as training runs it (the chunked head + loss), or with the full logits every causal LM returns
    extra = {"shuangyu": {"return_logits": False}, "shuangyu-fullogits": {"return_logits": True}}.get(name, {})
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    gen = torch.Generator(device="cpu").manual_seed(1)
    batches = [
        torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len), generator=gen).to(device) for _ in range(4)
    ]

    def step(i):
        x = batches[i % len(batches)]
        with autocast:
            loss = forward(input_ids=x, labels=x, use_cache=False, **extra).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    for i in range(args.warmup):
        loss = warm_up(lambda i=i: step(i))
    sync()
    warmup_s = time.perf_counter() - t0
    with my_turn() as turn:  # alone on the device when bench/gpu_suite.py runs several rows side by side
        step(0)  # refills the allocator's cache, emptied while this row waited for its turn
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for i in range(args.steps):
            loss = step(i)
        sync()
        elapsed = time.perf_counter() - t0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB, whole process
    graph_breaks = None
    if mode == "compiled":
        from torch._dynamo.utils import counters

        graph_breaks = sum(counters["graph_break"].values())
    return {
        "model": name,
        "mode": mode,
        "tokens_per_s": args.batch_size * args.seq_len * args.steps / elapsed,
        "step_ms": 1000 * elapsed / args.steps,
        "peak_gib": peak,
        "warmup_s": warmup_s,
        "loss": float(loss),
        "params_m": params / 1e6,
        "graph_breaks": graph_breaks,
        "compile_mode": args.compile_mode if mode == "compiled" else None,
        "timed_alone": turn["alone"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--vocab_size", type=int, default=6400)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--compile_mode", default=None, help="torch.compile's mode, e.g. max-autotune-no-cudagraphs")
    parser.add_argument("--loss_chunk_size", type=int, default=0, help="0: the preset's")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print("ROW " + json.dumps(worker(args)), flush=True)
        return

    passthrough = [a for a in sys.argv[1:]]
    rows = []
    for mode in args.modes.split(","):
        for name in args.models.split(","):
            cmd = [sys.executable, __file__, *passthrough, "--worker", f"{name}:{mode}"]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            found = [line for line in proc.stdout.splitlines() if line.startswith("ROW ")]
            if proc.returncode or not found:
                print(f"{name}:{mode} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
                rows.append({"model": name, "mode": mode, "failed": True})
                continue
            row = json.loads(found[-1][4:])
            rows.append(row)
            print(
                f"  {name:<19} {mode:<8} {row['tokens_per_s']:>12,.0f} tok/s  (warm-up {row['warmup_s']:.0f}s)",
                flush=True,
            )

    import torch
    import transformers

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"\ntorch {torch.__version__}, transformers {transformers.__version__}, {device_name}")
    base = next((r for r in rows if r["model"] == "llama" and r["mode"] == "compiled" and not r.get("failed")), None)
    mem_note = "peak GiB (allocated)" if args.device.startswith("cuda") else "peak RSS GiB"
    print(
        f"shape: preset {args.preset}, vocab {args.vocab_size}, seq {args.seq_len}, batch {args.batch_size}, "
        f"{args.dtype}, attn {args.attn}, device {args.device}, {args.steps} timed steps after {args.warmup} warm-up"
    )
    print(f"| model | mode | tokens/s | step ms | {mem_note} | graph breaks | loss | vs compiled llama |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if r.get("failed"):
            print(f"| {r['model']} | {r['mode']} | failed | | | | | |")
            continue
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        breaks = "-" if r["graph_breaks"] is None else str(r["graph_breaks"])
        print(
            f"| {r['model']} | {r['mode']} | {r['tokens_per_s']:,.0f} | {r['step_ms']:.1f} | {r['peak_gib']:.2f} "
            f"| {breaks} | {r['loss']:.3f} | {ratio} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
