"""Optimizer benchmark: Muon's step overhead, the training step without host syncs, and validation loss
against wall-clock time, Muon vs AdamW.

    python bench/optim.py overhead                          # CPU, tiny preset
    python bench/optim.py overhead --device cuda --preset 124m --batch_size 16 --seq_len 1024
    python bench/optim.py loop --device cuda --preset 124m --batch_size 16 --seq_len 1024 --compile
    python bench/optim.py race --data_dir DIR --tokenizer_name DIR --max_steps 600 \
        --adamw_lrs 3e-4,6e-4,1.2e-3 --muon_lrs 1e-3,2e-3,4e-3                               # on a GPU

`overhead` times forward+backward and the optimizer step separately, for AdamW and for Muon + AdamW, and
reports the step as a share of the whole training step. `loop` times train_clm's step as the loop runs it
(forward, backward, `clip_and_step` through an Accelerator, bf16 on a GPU, compiled with --compile): a
non-finite step skipped on the device, nothing read on the host between steps, against the same step with the
gradient norm read on the host before the optimizer step (the one host sync per step made before issue 14).
`race` trains the same model on the same tokens with each optimizer at each of its learning rates through
train_clm.py (single-GPU config) and reports the time Muon's best run takes to reach the held-out loss AdamW's
best run ends at, as a share of AdamW's time (issue 14's time-to-quality target).
Results go to stdout as markdown (and `--results FILE` appends them).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
from turns import my_turn, warm_up

from shuangyu.modeling import ShuangyuConfig, ShuangyuForCausalLM
from shuangyu.training.arguments import OptimizerArguments
from shuangyu.training.optim import build_optimizer
from shuangyu.training.run_log import read_train_log

REPO = Path(__file__).resolve().parent.parent
SKIP_DECIDED_ON = ("device", "host")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_steps(model, optimizer, batch, device: str, steps: int, warmup: int) -> tuple[float, float]:
    """Mean seconds of forward+backward and of optimizer.step()+zero_grad, over `steps` after `warmup`."""
    fwd_bwd = opt = 0.0
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    )
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        with autocast:
            loss = model(input_ids=batch, labels=batch, return_logits=False).loss  # as train_clm does
        loss.backward()
        sync(device)
        t1 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        t2 = time.perf_counter()
        if i >= warmup:
            fwd_bwd += t1 - t0
            opt += t2 - t1
    return fwd_bwd / steps, opt / steps


def overhead(args) -> str:
    rows = []
    for name in ("adamw", "muon"):
        torch.manual_seed(0)
        config = ShuangyuConfig.from_preset(args.preset, vocab_size=args.vocab_size)
        model = ShuangyuForCausalLM(config).to(args.device)
        optimizer = build_optimizer(model, OptimizerArguments(optimizer=name, learning_rate=1e-3))
        batch = torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len), device=args.device)
        forward = torch.compile(model) if args.compile else model
        fwd_bwd, opt = time_steps(forward, optimizer, batch, args.device, args.steps, args.warmup)
        rows.append((name, fwd_bwd, opt))
        del model, optimizer
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    lines = [
        f"`python bench/optim.py overhead --device {args.device} --preset {args.preset} --batch_size "
        f"{args.batch_size} --seq_len {args.seq_len}{' --compile' if args.compile else ''}` on {device}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}",
        "",
        "| optimizer | forward+backward ms | optimizer step ms | step share of training step |",
        "|---|---:|---:|---:|",
    ]
    for name, fb, op in rows:
        lines.append(f"| {name} | {fb * 1e3:.1f} | {op * 1e3:.1f} | {op / (fb + op):.1%} |")
    muon, adamw = rows[1], rows[0]
    extra = muon[2] - adamw[2]
    lines.append("")
    lines.append(
        f"Muon's step costs {extra * 1e3:.1f} ms more than AdamW's: "
        f"{extra / (adamw[1] + adamw[2]):.1%} of an AdamW training step of one micro-batch"
    )
    # the optimizer steps once per `accumulation` micro-batches, so its share shrinks with accumulation
    if args.accumulation > 1:
        lines[-1] += (
            f", {extra / (args.accumulation * adamw[1] + adamw[2]):.1%} of one of {args.accumulation} micro-batches "
            f"({args.accumulation * args.batch_size * args.seq_len:,} tokens per step, as the preset's recipe)"
        )
    lines[-1] += "."
    return "\n".join(lines)


def time_loop(accelerator, model, optimizer, args) -> dict:
    """Seconds over all rounds with the skip decided on the device (clip_and_step, as shipped) and on the host
    (the norm read before the optimizer step, as the loop did before issue 14)."""
    from shuangyu.training.optim import clip_and_step

    batch = torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len), device=accelerator.device)

    def step(decided_on: str) -> None:
        loss = model(input_ids=batch, labels=batch, return_logits=False).loss
        accelerator.backward(loss)
        if decided_on == "device":
            clip_and_step(accelerator, model, optimizer, max_grad_norm=1.0)
            return
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), 1.0)
        if bool(torch.isfinite(grad_norm)):  # the host waits for the backward pass before launching the step
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for decided_on in SKIP_DECIDED_ON:  # each variant's own first steps (its host read, its kernels) untimed
        for _ in range(args.warmup):
            warm_up(lambda decided_on=decided_on: step(decided_on))
    seconds = dict.fromkeys(SKIP_DECIDED_ON, 0.0)
    with my_turn() as turn:  # alone on the device when bench/gpu_suite.py runs several processes side by side
        step("device")  # refills the allocator's cache, emptied while this process waited for its turn
        for round_ in range(args.rounds):
            # the variant timed first in a round ran slower (569 ms against 417-423 on a CPU): each goes first
            # in every other round
            for decided_on in SKIP_DECIDED_ON[:: 1 if round_ % 2 == 0 else -1]:
                sync(args.device)
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step(decided_on)
                sync(args.device)
                seconds[decided_on] += time.perf_counter() - t0
    return seconds | {"timed_alone": turn["alone"]}


def loop(args) -> str:
    """Steps per second of forward + backward + clip + optimizer step, for each optimizer, with the skip of a
    non-finite step decided on the device or on the host. Both run on the same model in alternating rounds (one
    compilation, and drift in clocks or load falls on both); the device is synchronised only between rounds."""
    from accelerate import Accelerator
    from accelerate.utils import TorchDynamoPlugin

    accelerator = Accelerator(
        cpu=args.device == "cpu",
        mixed_precision="bf16" if args.device == "cuda" else "no",
        dynamo_plugin=TorchDynamoPlugin(backend="inductor") if args.compile else None,
    )
    rows = []
    for name in args.optimizers.split(","):
        torch.manual_seed(0)
        model = ShuangyuForCausalLM(ShuangyuConfig.from_preset(args.preset, vocab_size=args.vocab_size))
        optimizer = build_optimizer(model, OptimizerArguments(optimizer=name, learning_rate=1e-3))
        seconds = time_loop(accelerator, *accelerator.prepare(model, optimizer), args)
        for decided_on in SKIP_DECIDED_ON:
            step_s = seconds[decided_on] / (args.rounds * args.steps)
            tokens_per_s = args.batch_size * args.seq_len / step_s
            rows.append({"optimizer": name, "skip_decided_on": decided_on, "step_ms": 1e3 * step_s,
                         "tokens_per_s": tokens_per_s, "timed_alone": seconds["timed_alone"]})  # fmt: skip
        accelerator.free_memory()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    lines = [
        f"`python bench/optim.py loop --device {args.device} --preset {args.preset} --batch_size {args.batch_size} "
        f"--seq_len {args.seq_len}{' --compile' if args.compile else ''}` on {device}, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}: {args.rounds} rounds of {args.steps} steps per variant",
        "",
        "| optimizer | non-finite step skipped | step ms | tokens/s |",
        "|---|---|---:|---:|",
    ]
    described = {"device": "on the device (as shipped)", "host": "after a host read of the norm (before)"}
    lines += [
        f"| {r['optimizer']} | {described[r['skip_decided_on']]} | {r['step_ms']:.2f} | {r['tokens_per_s']:,.0f} |"
        for r in rows
    ]
    lines.append("")
    for device, host in zip(rows[::2], rows[1::2], strict=True):
        lines.append(f"{device['optimizer']}: tokens/s {device['tokens_per_s'] / host['tokens_per_s'] - 1:+.1%} "
                     "with the skip decided on the device.")  # fmt: skip
    return "\n".join(lines)


def race_run(args, name: str, lr: float) -> dict:
    """One train_clm.py run; its evaluations (step, mean held-out loss over the languages) and its steady
    seconds per step (the median logged interval: intervals holding compilation or an evaluation are slower)."""
    out = Path(args.output_root) / f"{name}-lr{lr:g}"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / args.config_file),
           "--num_processes", "1", str(REPO / "train_clm.py"), "--model_config", args.preset, "--block_size",
           str(args.block_size), "--per_device_train_batch_size", str(args.batch_size), "--compile",
           str(args.compile), "--lr_scheduler_type", "warmup_stable_decay", "--data_dir", args.data_dir,
           "--tokenizer_name", args.tokenizer_name, "--output_dir", str(out), "--overwrite_output_dir",
           "--optimizer", name, "--learning_rate", str(lr), "--max_steps", str(args.max_steps), "--warmup_steps",
           str(args.warmup_steps), "--eval_steps", str(args.eval_steps), "--logging_steps",
           str(max(1, args.eval_steps // 5)), "--eval_rows", str(args.eval_rows), "--save_steps",
           str(args.max_steps), "--gradient_accumulation_steps", "1", "--report_to", "none", "--seed", "0",
           *shlex.split(args.train_args)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} at {lr:g} failed:\n{proc.stderr[-4000:]}")
    rows = read_train_log(out / "train_log.jsonl")[0]  # null (a non-finite value) as NaN
    evals = []
    for row in rows:
        losses = [v for k, v in row.items() if k.startswith("eval/") and k.endswith("/loss")]
        if losses:
            evals.append((row["step"], sum(losses) / len(losses), row))
    tokens_per_step = rows[-1]["train/tokens"] / rows[-1]["step"]
    speeds = sorted(r["train/tokens_per_s"] for r in rows if "train/tokens_per_s" in r)
    return {"optimizer": name, "lr": lr, "evals": evals, "step_s": tokens_per_step / speeds[len(speeds) // 2]}


def steps_to_reach(evals: list, target: float) -> float | None:
    """The step at which the held-out loss first reaches `target`, linear between evaluations."""
    previous = None
    for step, loss, _ in evals:
        if loss <= target:
            if previous is None:
                return float(step)
            s0, l0 = previous
            return s0 + (l0 - target) / (l0 - loss) * (step - s0)
        previous = (step, loss)
    return None


def race(args) -> str:
    """Each optimizer at each of its learning rates through train_clm.py, the same tokens in the same order;
    then the time Muon's best run takes to reach the held-out loss AdamW's best run ends at, against the time
    AdamW's takes (steps x steady seconds per step, so compilation and evaluation count for neither)."""
    rates = {"adamw": args.adamw_lrs or str(args.learning_rate), "muon": args.muon_lrs or str(args.learning_rate)}
    runs = [race_run(args, name, float(lr)) for name in ("adamw", "muon") for lr in rates[name].split(",")]
    langs = sorted({k.split("/")[1] for r in runs for *_, row in r["evals"] for k in row if k.startswith("eval/")})
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    lines = [
        f"`python bench/optim.py race --max_steps {args.max_steps} --adamw_lrs {rates['adamw']} --muon_lrs "
        f"{rates['muon']}` ({device}, {time.strftime('%Y-%m-%d')}): preset {args.preset}, batch {args.batch_size} "
        f"x {args.block_size}, {'compiled' if args.compile else 'eager'}, warmup-stable-decay, the same tokens in "
        "the same order for every run; held-out loss = the mean over the languages.",
        "",
        "| optimizer | learning rate | " + " | ".join(f"final loss {lang}" for lang in langs)
        + " | final mean | s per step |",
        "|---|---:|" + "---:|" * (len(langs) + 2),
    ]  # fmt: skip
    for r in runs:
        last = r["evals"][-1]
        cells = [f"{last[2][f'eval/{lang}/loss']:.3f}" for lang in langs]
        lines.append(f"| {r['optimizer']} | {r['lr']:g} | {' | '.join(cells)} | {last[1]:.3f} | {r['step_s']:.3f} |")
    best = {name: min((r for r in runs if r["optimizer"] == name), key=lambda r: r["evals"][-1][1]) for name in rates}
    target = best["adamw"]["evals"][-1][1]
    adamw_s = best["adamw"]["evals"][-1][0] * best["adamw"]["step_s"]
    muon_steps = steps_to_reach(best["muon"]["evals"], target)
    lines.append("")
    if muon_steps is None:
        lines.append(f"Muon's best run ({best['muon']['lr']:g}) never reached AdamW's best final loss {target:.3f}.")
    else:
        muon_s = muon_steps * best["muon"]["step_s"]
        lines.append(
            f"AdamW's best ({best['adamw']['lr']:g}) ends at {target:.3f} after {adamw_s:.0f} s of training; Muon's "
            f"best ({best['muon']['lr']:g}) reaches it at step {muon_steps:.0f}, after {muon_s:.0f} s: "
            f"**{muon_s / adamw_s:.2f}x** AdamW's time."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    o = sub.add_parser("overhead")
    o.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    o.add_argument("--preset", default="tiny")
    o.add_argument("--vocab_size", type=int, default=32000)
    o.add_argument("--batch_size", type=int, default=8)
    o.add_argument("--seq_len", type=int, default=256)
    o.add_argument("--steps", type=int, default=10)
    o.add_argument("--warmup", type=int, default=3)
    o.add_argument("--accumulation", type=int, default=1, help="Micro-batches per optimizer step, for the share.")
    o.add_argument("--compile", action="store_true", help="torch.compile the model, as train_clm.py --compile")
    lp = sub.add_parser("loop")
    lp.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    lp.add_argument("--preset", default="tiny")
    lp.add_argument("--vocab_size", type=int, default=32000)
    lp.add_argument("--batch_size", type=int, default=8)
    lp.add_argument("--seq_len", type=int, default=256)
    lp.add_argument("--optimizers", default="adamw,muon")
    lp.add_argument("--compile", action="store_true", help="torch.compile the model, as train_clm.py --compile")
    lp.add_argument("--steps", type=int, default=10, help="steps per round and variant")
    lp.add_argument("--rounds", type=int, default=4, help="even: each variant is timed first in half of them")
    lp.add_argument("--warmup", type=int, default=3)
    lp.add_argument("--json", help="Write the rows here too.")
    r = sub.add_parser("race")
    r.add_argument("--data_dir", required=True)
    r.add_argument("--tokenizer_name", required=True)
    r.add_argument("--output_root", default="outputs/bench-optim")
    r.add_argument("--max_steps", type=int, default=1500)
    r.add_argument("--warmup_steps", type=int, default=100)
    r.add_argument("--learning_rate", type=float, default=2e-3, help="Both optimizers', without the lists below.")
    r.add_argument("--adamw_lrs", default="", help="AdamW's learning rates to sweep, e.g. 3e-4,6e-4,1.2e-3")
    r.add_argument("--muon_lrs", default="", help="Muon's, e.g. 1e-3,2e-3,4e-3")
    r.add_argument("--preset", default="124m")
    r.add_argument("--block_size", type=int, default=1024)
    r.add_argument("--batch_size", type=int, default=16)
    r.add_argument("--config_file", default="accelerate_configs/single_gpu.yaml")
    r.add_argument("--compile", type=lambda v: v.lower() in ("1", "true", "yes"), default=True)
    r.add_argument("--eval_steps", type=int, default=150)
    r.add_argument("--eval_rows", type=int, default=160)
    r.add_argument("--train_args", default="", help="More train_clm.py flags, e.g. '--model_config tiny'.")
    for p in (o, lp, r):
        p.add_argument("--results", help="Append the markdown to this file too.")
    args = parser.parse_args()
    text = {"overhead": overhead, "loop": loop, "race": race}[args.command](args)
    print(text)
    if args.results:
        with open(args.results, "a") as fh:
            fh.write(text + "\n\n")


if __name__ == "__main__":
    main()
