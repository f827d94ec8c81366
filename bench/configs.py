"""Runs train_clm.py under each accelerate config and checks what a user relies on: the loss falls, a
checkpoint saves, a resume from it continues with the same losses, and the final folder loads and generates.

    python bench/configs.py --data_dir DIR --tokenizer_name DIR \
        --configs single_gpu,multi_gpu,fsdp2,deepspeed_zero2 --num_processes 1

Each config trains --max_steps steps with a checkpoint half way, then a second run resumes from that
checkpoint in a fresh folder; the table compares their losses after the checkpoint. DeepSpeed runs AdamW
(Muon is refused under ZeRO), the others Muon. Results go to stdout as markdown (`--results FILE` appends).

With `--dpo_model CHAT_FOLDER --dpo_pairs FILE`, each config also runs DPO (`python -m shuangyu.training.dpo`, TRL's
Trainer, its own path through FSDP and DeepSpeed) the same way: train with a checkpoint half way, resume from it in a
fresh folder, compare the losses the Trainer logged, and load and generate from final/. Any small chat folder does
(a tokenizer trained by tokenizer/train_bpe.py carries the chat tokens; the prepared data's tokenizer need not).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from shuangyu.training.run_log import read_train_log

REPO = Path(__file__).resolve().parent.parent


def optimizer_of(config: str) -> str:
    return "adamw" if config.startswith("deepspeed") else "muon"


def train(config: str, out: Path, args, extra: list[str]) -> tuple[int, float, str]:
    optimizer = optimizer_of(config)
    cmd = [
        *launch(config, args),
        str(REPO / "train_clm.py"),
        "--model_config",
        args.preset,
        "--block_size",
        str(args.block_size),
        "--per_device_train_batch_size",
        str(args.batch_size),
        "--data_dir",
        args.data_dir,
        "--tokenizer_name",
        args.tokenizer_name,
        "--output_dir",
        str(out),
        "--optimizer",
        optimizer,
        "--learning_rate",
        "2e-3",
        "--warmup_steps",
        "5",
        "--max_steps",
        str(args.max_steps),
        "--logging_steps",
        "5",
        "--eval_steps",
        str(args.max_steps),
        "--eval_rows",
        "32",
        "--save_steps",
        str(args.max_steps // 2),
        "--report_to",
        "none",
        "--seed",
        "0",
        *extra,
    ]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    return proc.returncode, time.perf_counter() - started, proc.stdout + proc.stderr


def losses(out: Path) -> dict[int, float]:
    rows, _ = read_train_log(out / "train_log.jsonl")  # null (a non-finite value) as NaN
    return {row["step"]: row["train/loss"] for row in rows if "train/loss" in row}


def loads_and_generates(final: Path) -> str:
    code = (
        "import sys, torch\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "d = 'cuda' if torch.cuda.is_available() else 'cpu'\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).to(d)\n"
        "t = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "ids = m.generate(**t('今天', return_tensors='pt').to(d), max_new_tokens=8, do_sample=False)\n"
        "print(repr(t.decode(ids[0])))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(final)], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "FAILED: " + proc.stderr.strip().splitlines()[-1]


def failure(log: str, rc: int) -> str:
    """train_clm.py's own one-line error when it gave one (the launcher prints its report below it), else the last
    line of the output."""
    lines = log.strip().splitlines()
    said = [line for line in lines if line.startswith(("train_clm.py: error:", "train_clm.py: stopped:"))]
    return (said or lines or [f"exit {rc}"])[-1]


def launch(config: str, args) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / f"accelerate_configs/{config}.yaml"),
        "--num_processes",
        str(args.num_processes),
        *(["--main_process_port", str(args.main_process_port)] if args.main_process_port else []),
    ]


def dpo(config: str, out: Path, args, extra: list[str]) -> tuple[int, float, str]:
    half = max(args.dpo_steps // 2, 1)
    cmd = [*launch(config, args), "-m", "shuangyu.training.dpo", "--model_name_or_path", args.dpo_model,
           "--train_files", args.dpo_pairs, "--output_dir", str(out), "--max_steps", str(args.dpo_steps),
           "--save_steps", str(half), "--logging_steps", "1", "--per_device_train_batch_size", "2",
           "--max_length", "128", "--learning_rate", "1e-4", "--seed", "0", "--report_to", "none", *extra]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    return proc.returncode, time.perf_counter() - started, proc.stdout + proc.stderr


def dpo_losses(out: Path, step: int) -> dict[int, float]:
    """The losses the Trainer logged, from the checkpoint at `step` (its state holds the whole history)."""
    state = json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


def dpo_check(config: str, args, work: Path) -> dict:
    out, resumed = work / f"{config}-dpo", work / f"{config}-dpo-resumed"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(resumed, ignore_errors=True)
    row = {"config": f"{config} (DPO)", "optimizer": "adamw (Trainer)"}
    rc, seconds, log = dpo(config, out, args, [])
    row["log"] = log
    if rc:
        return {**row, "error": failure(log, rc)}
    full, half = dpo_losses(out, args.dpo_steps), max(args.dpo_steps // 2, 1)
    resumed.mkdir(parents=True)
    shutil.copytree(out / f"checkpoint-{half}", resumed / f"checkpoint-{half}")
    rc2, _, log2 = dpo(config, resumed, args, ["--resume_from_checkpoint", "latest"])
    row["log"] += "\n--- resumed ---\n" + log2
    after = dpo_losses(resumed, args.dpo_steps) if rc2 == 0 else {}
    return {**row, **outcome(full, after, half, seconds, failure(log2, rc2) if rc2 else None, out / "final")}


def outcome(full: dict, after: dict, half: int, seconds: float, resume_error: str | None, final: Path) -> dict:
    """A check's row: the losses of the whole run, how far the resumed run's differ after the checkpoint at `half`,
    and what the final folder generates."""
    shared = [s for s in after if s > half and s in full]
    if resume_error is None and not shared:  # nothing to compare is no evidence that the resume is exact
        resume_error = f"the resumed run logged no step after {half} that the whole run logged"
    return {
        "seconds": seconds,
        "first_loss": full[min(full)],
        "last_loss": full[max(full)],
        "resume_max_diff": max((abs(after[s] - full[s]) for s in shared), default=float("nan")),
        "resume_error": resume_error,
        "generates": loads_and_generates(final),
    }


def check(config: str, args, work: Path) -> dict:
    out, resumed = work / config, work / f"{config}-resumed"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(resumed, ignore_errors=True)
    rc, seconds, log = train(config, out, args, [])
    if rc:
        return {"config": config, "optimizer": optimizer_of(config), "error": failure(log, rc), "log": log}
    full = losses(out)
    half = args.max_steps // 2
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(out / "checkpoints" / f"step-{half:08d}", resumed / "checkpoints" / f"step-{half:08d}")
    rc2, _, log2 = train(config, resumed, args, ["--resume_from_checkpoint", "latest"])
    after = losses(resumed) if rc2 == 0 else {}
    row = outcome(full, after, half, seconds, failure(log2, rc2) if rc2 else None, out / "final")
    return {"config": config, "optimizer": optimizer_of(config), **row, "log": log}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--tokenizer_name", required=True)
    p.add_argument("--configs", default="single_gpu,multi_gpu,fsdp2,deepspeed_zero2")
    p.add_argument("--num_processes", type=int, default=1)
    p.add_argument("--preset", default="124m")
    p.add_argument("--block_size", type=int, default=1024)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--max_steps", type=int, default=40)
    p.add_argument("--main_process_port", type=int, default=0, help="for several checks side by side (0: default)")
    p.add_argument("--work_dir", default="/tmp/shuangyu-configs")
    p.add_argument("--logs", default=None, help="folder for each run's full output")
    p.add_argument("--results", default=None)
    p.add_argument("--dpo_model", default=None, help="a small chat model folder: DPO is checked under each config too")
    p.add_argument("--dpo_pairs", default=None, help="preference pairs (.jsonl) for the DPO check")
    p.add_argument("--dpo_steps", type=int, default=6)
    args = p.parse_args()
    if bool(args.dpo_model) != bool(args.dpo_pairs):
        p.error("--dpo_model and --dpo_pairs go together")
    rows = []
    for config in args.configs.split(","):
        checks = [("", check)] + ([("-dpo", dpo_check)] if args.dpo_model else [])
        for suffix, run_check in checks:
            row = run_check(config, args, Path(args.work_dir))
            if args.logs:
                Path(args.logs).mkdir(parents=True, exist_ok=True)
                Path(args.logs, f"{config}{suffix}.log").write_text(row["log"])
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "log"}, ensure_ascii=False), flush=True)
    lines = [
        f"`python bench/configs.py --configs {args.configs} --num_processes {args.num_processes}` "
        f"({args.preset}, batch {args.batch_size} x {args.block_size}, "
        f"{args.max_steps} steps, checkpoint at {args.max_steps // 2}, eager)"
        + (
            f"; DPO: `--dpo_model {args.dpo_model}`, 2 pairs x 128 tokens, {args.dpo_steps} steps, checkpoint at "
            f"{max(args.dpo_steps // 2, 1)}"
            if args.dpo_model
            else ""
        ),
        "",
        "| config | optimizer | time (s) | loss first -> last | resumed run: max loss diff | final folder generates |",
        "|---|---|---:|---|---:|---|",
    ]
    for r in rows:
        opt = r["optimizer"]
        if "error" in r:
            lines.append(f"| {r['config']} | {opt} | - | FAILED: {r['error']} | - | - |")
            continue
        resume = r["resume_error"] or f"{r['resume_max_diff']:.2e}"
        lines.append(
            f"| {r['config']} | {opt} | {r['seconds']:.0f} | {r['first_loss']:.3f} -> {r['last_loss']:.3f} | "
            f"{resume} | {r['generates']} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.results:
        with open(args.results, "a", encoding="utf-8") as fh:
            fh.write("\n" + text)
    return 0 if all("error" not in r and not r["resume_error"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
