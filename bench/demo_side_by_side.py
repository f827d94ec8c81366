"""The demo before and after issue 13, timed back to back on one machine (the comparison bench/RESULTS.md's
"The demo's recipe" reports):

    python bench/demo_side_by_side.py --out /tmp/demo_side_by_side

before: what `make demo` ran until then: a 32k tokenizer on 40 MB, then configs/tiny-cpu.yaml (the tiny preset,
        300 steps) on 2 CPU processes;
after:  `python -m shuangyu.demo --device cpu`: tokenizer, data, pretraining (configs/demo-cpu.yaml),
        evaluation, instruction tuning and the report.
Each starts from an empty folder. It holds /tmp/shuangyu-cpu.lock while it runs, so that other timed jobs that
take the lock wait; the machine should otherwise be idle. Held-out bits per byte are read from each
pretraining run's train_log.jsonl (the same `_val` files, configs/tiny-cpu.yaml's and configs/demo-cpu.yaml's).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import sys
from pathlib import Path

from demo_sweep import (
    CPU_LOCK,  # bench/ is the script's folder: on sys.path
    last_validation,
)
from demo_sweep import run as timed

CORPUS = "../shared/data/corpus"


def before(out: Path) -> dict:
    tok, run = out / "before" / "tokenizer", out / "before" / "tiny-cpu"
    tokenizer_s = timed(
        [sys.executable, "tokenizer/train_bpe.py", "--files", f"zh={CORPUS}/zh/*.jsonl:0.5",
         f"en={CORPUS}/en/*.jsonl:0.5", "--exclude", "*_val.jsonl", "--validation_files",
         f"zh={CORPUS}/zh/*_val.jsonl", f"en={CORPUS}/en/*_val.jsonl", "--max_bytes", "40MB",
         "--vocab_size", "32000", "--output_dir", str(tok), "--overwrite"],
        out / "before-tokenizer.log",
    )  # fmt: skip
    train_s = timed(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/cpu.yaml",
         "train_clm.py", "--config", "configs/tiny-cpu.yaml", "--tokenizer_name", str(tok), "--output_dir", str(run),
         "--overwrite_output_dir"],
        out / "before-train.log",
    )  # fmt: skip
    return {"total_s": round(tokenizer_s + train_s, 1), "tokenizer_s": round(tokenizer_s, 1)} | last_validation(run)


def after(out: Path) -> dict:
    demo = out / "after"
    total_s = timed(
        [sys.executable, "-m", "shuangyu.demo", "--device", "cpu", "--output_dir", str(demo)], out / "after.log"
    )
    return {"total_s": round(total_s, 1)} | last_validation(demo / "pretrain")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", choices=("before", "after"), default=None)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    with open(CPU_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name, run in (("before", before), ("after", after)):
            if args.only and name != args.only:
                continue
            shutil.rmtree(args.out / name, ignore_errors=True)
            results[name] = run(args.out)
            results_file.write_text(json.dumps(results, indent=1, ensure_ascii=False))
            print(name, results[name], flush=True)
    print("| demo | wall time | tokens trained | zh bits/byte | en bits/byte |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['total_s'] / 60:.1f} min | {r['tokens']:,} | {r['zh_bpb']} | {r['en_bpb']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
