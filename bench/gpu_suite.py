"""Every GPU measurement issue 14 asks for, in one call, so a short device lease is spent measuring.

    python bench/gpu_suite.py --out OUT --tokenizer_name TOK --data_dir DATA      # on the GPU machine
    python bench/gpu_suite.py --tiny --out /tmp/suite --tokenizer_name TOK --data_dir DATA   # CPU self-check
(--tiny: the tiny preset, on data prepared with --block_size 256 at most, its context)

Phases (each process with a time limit; a failing one is recorded and the suite goes on):
  matmul     the bf16 matmul rate this GPU reaches (8192^3), the reference for MFU in the same run
  group      processes started side by side, each compiling on the CPU, then timing alone (bench/turns.py):
             - throughput: bench/model.py's step, ours (as train_clm runs it) vs stock LlamaForCausalLM, compiled,
               bf16, sequence 1024, at vocabulary 50,304 (comparable with published GPT-2-small figures) and at
               the preset's 32,000, at micro-batches 16 and 32 (--autotune: one max-autotune row too); MFU =
               tokens/s x FLOPs per token / measured matmul rate, FLOPs per token = 6 x (every matmul weight, the
               head included) + 12 x layers x width x sequence (attention)
             - memory: the 350m preset at each micro-batch (peak memory; does it train on one GPU?)
             - loop: bench/optim.py loop, train_clm's step through an Accelerator (clip_and_step), AdamW and Muon
             While the group compiles, bench/configs.py checks single_gpu, fsdp2 and deepspeed_zero2 with one
             process each (train, checkpoint, resume with equal losses, load and generate); the group's timing
             waits for them, so nothing else runs on the GPU while a row is timed. With --dpo_model and
             --dpo_pairs, each config also runs DPO (TRL's Trainer) the same way.
  configs    (only when named, without group) the config checks alone, one after another
  muon       bench/optim.py overhead, compiled: Muon's optimizer step against AdamW's, per micro-batch and per
             step of the preset's recipe (4 micro-batches)
  trainloop  train_clm.py itself (accelerate launch, single_gpu.yaml, compiled, the preset's recipe: Muon, 16 x 4
             micro-batches) on --data_dir: tokens/s and MFU from its train_log.jsonl, the first logged row
             (compilation) left out
  race       (only when named in --phases) bench/optim.py race: time to quality, AdamW and Muon each at a few
             learning rates (--adamw_lrs, --muon_lrs, --race_steps steps each): Muon's best run's time to AdamW's
             best final held-out loss, as a share of AdamW's time
Writes OUT/suite.json and OUT/suite.md after every phase (rows for bench/RESULTS.md, with the command, GPU and
date), and each process's output under OUT/logs.

The GPU image lacks this project's pins: carry wheels (see the device README's recipe: transformers, tokenizers,
datasets and its needs, and DeepSpeed built here with DS_BUILD_OPS=0 plus hjson and pydantic's; peft and trl for
the DPO checks) and a prepared data slice with its tokenizer (python -m shuangyu.data.prepare here, then carry both
folders), and for the DPO checks a small chat folder (an SFT run's final/, e.g. the demo's) with a few hundred pairs.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPE_ACCUMULATION = 4  # configs/124m.yaml: 16 x 1024 tokens x 4 micro-batches per optimizer step


@dataclass
class Member:
    """One process of the group: what it runs, its peak device memory while it warms up (an estimate, to
    decide how many warm up at once) and what it keeps while it waits for its turn."""

    name: str
    cmd: list[str]
    warm_gib: float
    waiting_gib: float
    meta: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    started: float = 0.0


def run_step(name: str, cmd: list[str], timeout: int, log_dir: Path) -> dict:
    started = time.perf_counter()
    with open(log_dir / f"{name}.log", "w") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        try:
            status = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = "timeout"
        except KeyboardInterrupt:  # the lease is ending: stop it (it runs in its own session) and say so
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    return {"step": name, "status": status, "seconds": round(time.perf_counter() - started, 1)}


def matmul_rate(device: str, size: int) -> float:
    """FLOP/s of a square bf16 matmul (fp32 on CPU) on random data, the best of a few timed rounds."""
    import torch

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / 10)
    return 2 * size**3 / best


def flops_per_token(preset: str, vocab: int, seq: int) -> float:
    from shuangyu.modeling import ShuangyuConfig

    c = ShuangyuConfig.from_preset(preset, vocab_size=vocab)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv = c.num_key_value_heads * head_dim
    per_layer = c.hidden_size * (c.hidden_size + 2 * kv) + c.hidden_size * c.hidden_size  # q, k, v, o
    per_layer += 3 * c.hidden_size * c.intermediate_size  # gate, up, down
    matmul_weights = c.num_hidden_layers * per_layer + vocab * c.hidden_size  # + the head
    return 6 * matmul_weights + 12 * c.num_hidden_layers * c.num_attention_heads * head_dim * seq


def group_members(args, preset: str, seq: int, dtype: str, device: str) -> list[Member]:
    """The group, most wanted first: members start in this order as device memory allows."""
    model_py = [sys.executable, str(REPO / "bench" / "model.py"), "--device", device, "--seq_len", str(seq),
                "--dtype", dtype, "--warmup", "3"]  # fmt: skip
    big = "tiny" if args.tiny else "350m"
    small, large = (2, 4) if args.tiny else (16, 32)
    vocabs = [512, 256] if args.tiny else [50304, 32000]
    gib = 0.0 if args.tiny else 1.0  # estimates below are for the 124m/350m presets on a GPU

    def row(model, vocab, batch, warm, preset=preset, steps=20, mode=None, waiting=2.5):
        name = f"{model}-{preset}-v{vocab}-b{batch}" + (f"-{mode}" if mode else "")
        cmd = [*model_py, "--preset", preset, "--vocab_size", str(vocab), "--batch_size", str(batch),
               "--steps", str(steps), "--worker", f"{model}:{'eager' if args.tiny else 'compiled'}"]  # fmt: skip
        if mode:
            cmd += ["--compile_mode", mode]
        meta = {"kind": "throughput", "vocab": vocab, "batch": batch, "preset": preset}
        return Member(name, cmd, warm * gib, waiting * gib, meta)

    members = [
        row("shuangyu", vocabs[0], small, 10),
        row("llama", vocabs[0], small, 14),
        row("shuangyu", vocabs[1], small, 9),
        row("llama", vocabs[1], small, 11),
        row("shuangyu", vocabs[0], large, 18),
        row("shuangyu", vocabs[1], large, 17),
    ]
    for name in ("adamw", "muon"):
        cmd = [sys.executable, str(REPO / "bench" / "optim.py"), "loop", "--device", device, "--preset", preset,
               "--batch_size", str(small), "--seq_len", str(seq), "--vocab_size", str(vocabs[1]),
               "--optimizers", name, "--json", str(args.out / f"loop-{name}.json")]  # fmt: skip
        cmd += ["--steps", "2", "--rounds", "1", "--warmup", "1"] if args.tiny else ["--compile", "--steps", "20"]
        members.append(Member(f"loop-{name}", cmd, 11 * gib, 2.5 * gib, {"kind": "loop"}))
    if args.autotune:  # matmul kernels chosen by benchmarking: 377 s to compile, no faster on the H200
        members.append(row("shuangyu", vocabs[0], large, 18, mode="max-autotune-no-cudagraphs"))
    members += [
        row("shuangyu", vocabs[1], small, 24, preset=big, steps=10, waiting=6),
        row("shuangyu", vocabs[1], large, 44, preset=big, steps=10, waiting=6),
        row("llama", vocabs[0], large, 28),
    ]
    unique = {m.name: m for m in reversed(members)}  # --tiny's "350m" rows are its tiny ones again
    return [m for m in members if unique[m.name] is m]


def config_checks(args, preset: str, seq: int) -> list[tuple[str, list[str]]]:
    if not (args.data_dir and args.tokenizer_name):
        return []
    configs = ["cpu"] if args.tiny else ["single_gpu", "fsdp2", "deepspeed_zero2"]
    checks = []
    for i, config in enumerate(configs):
        cmd = [sys.executable, str(REPO / "bench" / "configs.py"), "--data_dir", args.data_dir, "--tokenizer_name",
               args.tokenizer_name, "--configs", config, "--num_processes", "1", "--preset", preset,
               "--block_size", str(seq), "--batch_size", "2" if args.tiny else "16",
               "--max_steps", "4" if args.tiny else "20", "--main_process_port", str(29611 + i),
               "--work_dir", f"/tmp/shuangyu-configs-{config}", "--results", str(args.out / "configs.md")]  # fmt: skip
        if args.dpo_model:
            cmd += ["--dpo_model", args.dpo_model, "--dpo_pairs", args.dpo_pairs]
        checks.append((f"configs-{config}", cmd))
    return checks


def check_timeout(args) -> int:
    """A config check's time limit: the DPO check (two short runs and a generate) doubles it."""
    return args.check_timeout * (2 if args.dpo_model else 1)


def run_group(members: list[Member], checks: list[tuple[str, list[str]]], args, logs: Path) -> list[dict]:
    """Start members as device memory allows (and the config checks at once), mark each one's exit for the
    others (bench/turns.py), and hold the timing lock until the checks are done."""
    folder = args.out / "turns"
    folder.mkdir(exist_ok=True)
    # many compilations at once: a few compile workers each
    env = {**os.environ, "BENCH_TURNS": f"{folder}:{len(members)}", "PYTHONUNBUFFERED": "1",
           "TORCHINDUCTOR_COMPILE_THREADS": "2"}  # fmt: skip
    lock = open(folder / "lock", "a")
    fcntl.flock(lock, fcntl.LOCK_EX)  # no member times while a config check trains
    started = time.monotonic()
    steps, running_checks = [], []
    for name, cmd in checks:
        log = open(logs / f"{name}.log", "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
        running_checks.append((name, proc, time.monotonic()))
    pending, running = list(members), []
    try:
        watch(pending, running, running_checks, steps, folder, env, lock, started, args, logs)
    except KeyboardInterrupt:  # the lease is ending: stop every process of the group, keep what finished
        args.interrupted = True
        for proc in [m.proc for m in running] + [proc for _, proc, _ in running_checks]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    lock.close()
    return steps


def watch(pending, running, running_checks, steps, folder, env, lock, started, args, logs) -> None:
    check_gib = 0.0 if args.tiny else 15.0
    holding = True
    while pending or running or running_checks:
        in_use = check_gib * len(running_checks) + sum(
            m.waiting_gib if (folder / f"ready-{m.name}").exists() else m.warm_gib for m in running
        )
        while pending and (in_use + pending[0].warm_gib <= args.memory_budget_gib or not running):
            m = pending.pop(0)
            log = open(logs / f"{m.name}.log", "w")
            log.write(f"$ {' '.join(m.cmd)}\n")
            log.flush()
            m.proc = subprocess.Popen(m.cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                      env={**env, "BENCH_TURN_NAME": m.name}, start_new_session=True)  # fmt: skip
            m.started = time.monotonic()
            running.append(m)
            in_use += m.warm_gib
        now = time.monotonic()
        for name, proc, t0 in list(running_checks):
            if proc.poll() is None and now - t0 > check_timeout(args):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            if proc.poll() is not None:
                running_checks.remove((name, proc, t0))
                steps.append({"step": name, "status": proc.returncode, "seconds": round(now - t0, 1)})
        if holding and not running_checks:
            fcntl.flock(lock, fcntl.LOCK_UN)
            holding = False
        for m in list(running):
            # a member still compiling at --group_wait is stopped: timing beside its compilation (autotuning
            # runs on the GPU) cost other rows up to 14% on the H200 (bench/RESULTS.md, 2026-12-04)
            slow = now - started > args.group_wait and not (folder / f"ready-{m.name}").exists()
            if m.proc.poll() is None and (slow or now - m.started > args.step_timeout):
                os.killpg(m.proc.pid, signal.SIGKILL)
                m.proc.wait()
            if m.proc.poll() is not None:
                (folder / f"gone-{m.name}").touch()
                running.remove(m)
                steps.append({"step": m.name, "status": m.proc.returncode, "seconds": round(now - m.started, 1)})
        time.sleep(0.5)


def throughput_rows(members: list[Member], logs: Path, matmul: float | None, seq: int) -> list[dict]:
    rows = []
    for m in members:
        if m.meta.get("kind") != "throughput":
            continue
        found = [line for line in (logs / f"{m.name}.log").read_text().splitlines() if line.startswith("ROW ")]
        if not found:
            continue
        row = json.loads(found[-1][4:]) | m.meta
        row["flops_per_token"] = flops_per_token(m.meta["preset"], m.meta["vocab"], seq)
        if matmul:
            row["mfu_vs_measured_matmul"] = row["tokens_per_s"] * row["flops_per_token"] / matmul
        rows.append(row)
    return rows


def trainloop(args, preset: str, seq: int, logs: Path) -> tuple[dict, dict]:
    """train_clm.py as a user runs it: the preset's recipe, compiled; tokens/s from its own log."""
    out = Path("/tmp/shuangyu-trainloop")
    shutil.rmtree(out, ignore_errors=True)
    config = "cpu" if args.tiny else "single_gpu"
    steps = 6 if args.tiny else 30
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / f"accelerate_configs/{config}.yaml"), "--num_processes", "1", str(REPO / "train_clm.py"),
           "--model_config", preset, "--block_size", str(seq), "--per_device_train_batch_size",
           "2" if args.tiny else "16", "--gradient_accumulation_steps", str(RECIPE_ACCUMULATION),
           "--optimizer", "muon", "--learning_rate", "3e-3", "--warmup_steps", "5", "--max_steps", str(steps),
           "--logging_steps", "2" if args.tiny else "5", "--eval_steps", "100000", "--save_steps", "100000",
           "--eval_rows", "8", "--report_to", "none", "--data_dir", args.data_dir, "--tokenizer_name",
           args.tokenizer_name, "--output_dir", str(out)]  # fmt: skip
    if not args.tiny:
        cmd.append("--compile")
    step = run_step("trainloop", cmd, args.step_timeout, logs)
    from shuangyu.training.run_log import read_train_log

    summary = {}
    if (out / "train_log.jsonl").is_file():
        rows, _ = read_train_log(out / "train_log.jsonl")
        timed = [r for r in rows if "train/tokens_per_s" in r][1:]  # the first interval holds the compilation
        if timed:
            speeds = sorted(r["train/tokens_per_s"] for r in timed)
            summary = {"tokens_per_s_median": speeds[len(speeds) // 2], "intervals": len(timed),
                       "mfu_vs_datasheet": timed[-1].get("train/mfu"), "tokens_per_step":
                       (2 if args.tiny else 16) * seq * RECIPE_ACCUMULATION}  # fmt: skip
    return step, summary


def data_block_size(args) -> int:
    """The prepared data's rows are this long: train_clm.py takes it as --block_size."""
    if not args.data_dir:
        return 0
    return json.loads((Path(args.data_dir) / "manifest.json").read_text())["block_size"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--tiny", action="store_true", help="CPU self-check: tiny preset, short sequences")
    p.add_argument("--data_dir", default=None, help="a prepared data folder, for the configs and trainloop phases")
    p.add_argument("--tokenizer_name", default=None, help="its tokenizer")
    p.add_argument("--phases", default="matmul,group,muon,trainloop")
    p.add_argument("--step_timeout", type=int, default=420)
    p.add_argument("--check_timeout", type=int, default=300)
    p.add_argument("--group_wait", type=int, default=300, help="seconds after which a member still compiling stops")
    p.add_argument("--autotune", action="store_true", help="add a row compiled with max-autotune-no-cudagraphs")
    p.add_argument("--race_steps", type=int, default=400, help="the race phase: steps per run")
    p.add_argument("--adamw_lrs", default="3e-4,6e-4,1.2e-3", help="the race phase: AdamW's learning rates")
    p.add_argument("--muon_lrs", default="1e-3,2e-3,4e-3", help="the race phase: Muon's learning rates")
    p.add_argument("--memory_budget_gib", type=float, default=118.0, help="device memory the group may plan on")
    p.add_argument("--dpo_model", default=None, help="a small chat folder: the config checks run DPO under each too")
    p.add_argument("--dpo_pairs", default=None, help="preference pairs (.jsonl) for the DPO checks")
    args = p.parse_args()
    if bool(args.dpo_model) != bool(args.dpo_pairs):
        p.error("--dpo_model and --dpo_pairs go together")
    if "configs" in args.phases.split(",") and not (args.data_dir and args.tokenizer_name):
        p.error("--phases configs needs --data_dir and --tokenizer_name (the prepared data the checks train on)")
    args.out.mkdir(parents=True, exist_ok=True)
    logs = args.out / "logs"
    logs.mkdir(exist_ok=True)
    device = "cpu" if args.tiny else "cuda"
    preset, seq, dtype = ("tiny", 64, "fp32") if args.tiny else ("124m", 1024, "bf16")
    phases = args.phases.split(",")
    results: dict = {"date": time.strftime("%Y-%m-%d"), "device": device, "steps": []}
    import torch

    results["torch"] = torch.__version__
    if device == "cuda":
        results["gpu"] = torch.cuda.get_device_name()

    def save() -> None:
        (args.out / "suite.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "suite.md").write_text(markdown(results, " ".join(sys.argv[1:])))

    args.interrupted = False
    try:
        run_phases(args, phases, results, device, preset, seq, dtype, logs, save)
    except KeyboardInterrupt:
        results["interrupted"] = True
    save()
    print((args.out / "suite.md").read_text())
    return 0 if all(s["status"] == 0 for s in results["steps"]) and not results.get("interrupted") else 1


def run_phases(args, phases, results, device, preset, seq, dtype, logs, save) -> None:
    if "matmul" in phases:
        results["matmul_flops"] = matmul_rate(device, 512 if args.tiny else 8192)
        save()
    if "group" in phases:
        members = group_members(args, preset, seq, dtype, device)
        checks = config_checks(args, preset, data_block_size(args))
        results["steps"] += run_group(members, checks, args, logs)
        results["throughput"] = throughput_rows(members, logs, results.get("matmul_flops"), seq)
        results["loop"] = [r for n in ("adamw", "muon") if (args.out / f"loop-{n}.json").is_file()
                           for r in json.loads((args.out / f"loop-{n}.json").read_text())]  # fmt: skip
        if (args.out / "configs.md").is_file():
            results["configs_md"] = (args.out / "configs.md").read_text()
        save()
        if args.interrupted:
            raise KeyboardInterrupt
    if "configs" in phases and "group" not in phases:  # the config checks alone (the group runs them beside it)
        for name, cmd in config_checks(args, preset, data_block_size(args)):
            results["steps"].append(run_step(name, cmd, check_timeout(args), logs))
        if (args.out / "configs.md").is_file():
            results["configs_md"] = (args.out / "configs.md").read_text()
        save()
    if "muon" in phases:
        cmd = [sys.executable, str(REPO / "bench" / "optim.py"), "overhead", "--device", device, "--preset", preset,
               "--batch_size", "2" if args.tiny else "16", "--seq_len", str(seq), "--vocab_size",
               "256" if args.tiny else "32000", "--accumulation", str(RECIPE_ACCUMULATION)]  # fmt: skip
        cmd += [] if args.tiny else ["--compile"]  # as the recipe trains
        results["steps"].append(run_step("muon", cmd, args.step_timeout, logs))
        results["muon_md"] = "\n".join(
            line for line in (logs / "muon.log").read_text().splitlines()[1:] if line.startswith(("|", "Muon", "`"))
        )
        save()
    if "trainloop" in phases and args.data_dir and args.tokenizer_name:
        step, results["trainloop"] = trainloop(args, preset, data_block_size(args), logs)
        results["steps"].append(step)
        save()
    if "race" in phases and args.data_dir and args.tokenizer_name:
        # time to quality: each optimizer at each learning rate, on the same tokens (bench/optim.py race)
        cmd = [
            sys.executable,
            str(REPO / "bench" / "optim.py"),
            "race",
            "--data_dir",
            args.data_dir,
            "--tokenizer_name",
            args.tokenizer_name,
            "--output_root",
            "/tmp/shuangyu-race",
            "--preset",
            preset,
            "--block_size",
            str(data_block_size(args)),
            "--max_steps",
            str(args.race_steps),
            "--warmup_steps",
            str(args.race_steps // 10),
            "--eval_steps",
            str(args.race_steps // 8),
            "--eval_rows",
            "64",
            "--adamw_lrs",
            args.adamw_lrs,
            "--muon_lrs",
            args.muon_lrs,
            "--results",
            str(args.out / "race.md"),
        ]  # fmt: skip
        if args.tiny:
            cmd += ["--batch_size", "2", "--config_file", "accelerate_configs/cpu.yaml", "--compile", "false"]
        results["steps"].append(run_step("race", cmd, args.step_timeout, logs))
        if (args.out / "race.md").is_file():
            results["race_md"] = (args.out / "race.md").read_text()


def markdown(results: dict, argv: str) -> str:
    where = results.get("gpu", "CPU")
    lines = [f"`python bench/gpu_suite.py {argv}` on {where}, torch {results['torch']}, {results['date']}", ""]
    if results.get("matmul_flops"):
        lines += [f"Measured matmul rate: {results['matmul_flops'] / 1e12:.1f} TFLOP/s", ""]
    if results.get("throughput"):
        lines += [
            "| model | preset | vocab | micro-batch | compile mode | tokens/s | MFU (vs measured matmul) | peak GiB "
            "| timed alone |",
            "|---|---|---:|---:|---|---:|---:|---:|---|",
        ]
        for r in results["throughput"]:
            mfu = r.get("mfu_vs_measured_matmul")
            lines.append(
                f"| {r['model']} | {r['preset']} | {r['vocab']:,} | {r['batch']} | {r.get('compile_mode') or 'default'} "
                f"| {r['tokens_per_s']:,.0f} | {'-' if mfu is None else f'{mfu:.1%}'} | {r['peak_gib']:.1f} "
                f"| {'yes' if r.get('timed_alone') else 'no'} |"
            )
        lines.append("")
    if results.get("loop"):
        lines += [
            "| optimizer | non-finite step skipped | step ms | tokens/s | timed alone |",
            "|---|---|---:|---:|---|",
        ]
        lines += [
            f"| {r['optimizer']} | on the {r['skip_decided_on']} | {r['step_ms']:.2f} | {r['tokens_per_s']:,.0f} "
            f"| {'yes' if r.get('timed_alone') else 'no'} |"
            for r in results["loop"]
        ]
        lines.append("")
    for key in ("muon_md", "configs_md", "race_md"):
        if results.get(key):
            lines += [results[key].strip(), ""]
    if results.get("trainloop"):
        t = results["trainloop"]
        mfu = t.get("mfu_vs_datasheet")
        lines += [
            f"train_clm.py (recipe, compiled): median {t['tokens_per_s_median']:,.0f} tokens/s over "
            f"{t['intervals']} logged intervals, {t['tokens_per_step']:,} tokens per optimizer step"
            + (f", MFU {mfu:.1%} against the datasheet peak" if mfu else ""),
            "",
        ]
    if results.get("interrupted"):
        lines += ["Interrupted: the phases after this point did not run; processes still running were stopped.", ""]
    lines += ["| step | status | seconds |", "|---|---|---:|"]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']} |" for s in results["steps"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
