"""Which recipe gives `make demo` the lowest held-out bits per byte for its CPU minutes (issue 13's sweep).

Each candidate is a real run of the demo's path: a tokenizer (tokenizer/train_bpe.py, cached per vocabulary
and text budget), then `accelerate launch` of train_clm.py on 2 CPU processes with configs/demo-cpu.yaml and the
candidate's overrides. Reported per candidate: the wall time of tokenizer, data preparation and training, and
the held-out bits per byte per language at the end (the same `_val` files as the demo).

    python bench/demo_sweep.py --out /tmp/demo_sweep [--only NAME ...]

Writes OUT/results.json and prints markdown rows for bench/RESULTS.md. Timings are only comparable inside one
run on an otherwise idle machine (the script holds /tmp/shuangyu-cpu.lock while it times).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import subprocess
import sys
import time
from pathlib import Path

from shuangyu.training.run_log import read_train_log

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "corpus"
CPU_LOCK = Path("/tmp/shuangyu-cpu.lock")

# name -> (tokenizer vocabulary, tokenizer text, train_clm.py overrides of configs/demo-cpu.yaml)
CANDIDATES: dict[str, tuple[int, str, dict | str, list[str]]] = {}


def shape(d: int, layers: int, heads: int, ffn: int | None = None) -> dict:
    return dict(
        hidden_size=d,
        intermediate_size=ffn or 64 * round(8 * d / 3 / 64),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
    )


def add(name: str, vocab: int, text: str, model: dict | str, config: str = "configs/demo-cpu.yaml", **overrides):
    args = ["--config", config]
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    CANDIDATES[name] = (vocab, text, model, args)


def model_config(out: Path, name: str, tokenizer: Path, model: dict | str) -> str:
    """A preset name as is, or a config.json for this shape with the tokenizer's vocabulary and special ids."""
    if isinstance(model, str):
        return model
    from transformers import AutoTokenizer

    from shuangyu.modeling import ShuangyuConfig

    tok = AutoTokenizer.from_pretrained(tokenizer)
    config = ShuangyuConfig(
        vocab_size=64 * -(-len(tok) // 64),
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **model,
    )
    folder = out / "configs" / name
    config.save_pretrained(folder)
    return str(folder)


# today's demo (configs/tiny-cpu.yaml: the tiny preset, a 32k tokenizer on 40 MB, 300 steps of 16 x 256)
add("before: tiny 32k", 32000, "40MB", "tiny", config="configs/tiny-cpu.yaml")
# Steps are chosen so that each candidate trains about 5 minutes on 2 idle cores (tokens/s measured per shape
# first); the bits per byte at the end are what the time buys.
add("8k d128 L4", 8192, "20MB", shape(128, 4, 4), max_steps=740)
add("8k d192 L4", 8192, "20MB", shape(192, 4, 6), max_steps=540)
add("8k d256 L4", 8192, "20MB", shape(256, 4, 4), max_steps=390)
add("16k d128 L4", 16384, "20MB", shape(128, 4, 4), max_steps=500)
# learning rate and vocabulary at 300 steps (the 300-step 8k d128 L4 run at 1e-2 is the reference)
add("8k d128 L4 300", 8192, "20MB", shape(128, 4, 4), max_steps=300)
add("8k d128 L4 300 lr2e-2", 8192, "20MB", shape(128, 4, 4), max_steps=300, learning_rate=2e-2)
add("8k d128 L4 300 lr5e-3", 8192, "20MB", shape(128, 4, 4), max_steps=300, learning_rate=5e-3)
add("4k d128 L4 300", 4096, "20MB", shape(128, 4, 4), max_steps=300)
add("8k d128 L4 600 x half batch", 8192, "20MB", shape(128, 4, 4), max_steps=600, per_device_train_batch_size=4)


def run(cmd: list[str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"{Path(sys.argv[0]).name}: {' '.join(cmd[:4])}... failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - start


def last_validation(run_dir: Path) -> dict:
    rows = read_train_log(run_dir / "train_log.jsonl")[0]  # null (a non-finite value) as NaN
    row = [r for r in rows if "eval/zh/bits_per_byte" in r][-1]
    return {
        "step": row["step"],
        "tokens": row["train/tokens"],
        "zh_bpb": round(row["eval/zh/bits_per_byte"], 4),
        "en_bpb": round(row["eval/en/bits_per_byte"], 4),
        "sample_zh": row.get("samples/zh"),
        "sample_en": row.get("samples/en"),
    }


def tokenizer(out: Path, vocab: int, text: str) -> tuple[Path, float]:
    folder = out / f"tokenizer-{vocab}-{text}"
    if (folder / "tokenizer.json").exists():
        return folder, json.loads((folder / "sweep_time.json").read_text())["s"]
    seconds = run(
        [sys.executable, "tokenizer/train_bpe.py", "--files", f"zh={CORPUS}/zh/*.jsonl:0.5",
         f"en={CORPUS}/en/*.jsonl:0.5", "--exclude", "*_val.jsonl", "--max_bytes", text,
         "--vocab_size", str(vocab), "--output_dir", str(folder), "--overwrite"],
        out / f"tokenizer-{vocab}-{text}.log",
    )  # fmt: skip
    (folder / "sweep_time.json").write_text(json.dumps({"s": seconds}))
    return folder, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", nargs="*", help="candidate names (default: all)")
    parser.add_argument(
        "--no_lock",
        action="store_true",
        help="do not wait for other timed jobs (bits per byte at a "
        "fixed step count do not depend on the machine's load; the times do)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    with open(CPU_LOCK, "w") as lock:
        if not args.no_lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
        for name, (vocab, text, model, overrides) in CANDIDATES.items():
            if args.only and name not in args.only:
                continue
            tok, tok_s = tokenizer(args.out, vocab, text)
            slug = name.replace(" ", "_").replace(":", "")
            run_dir = args.out / slug
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/cpu.yaml",
                   "train_clm.py", "--model_config", model_config(args.out, slug, tok, model), "--tokenizer_name", str(tok), "--output_dir", str(run_dir),
                   "--overwrite_output_dir", *overrides]  # fmt: skip
            train_s = run(cmd, args.out / f"{slug}.log")
            results[name] = {
                "tokenizer_s": round(tok_s, 1),
                "data_and_train_s": round(train_s, 1),
                **last_validation(run_dir),
                "overrides": overrides,
            }
            results_file.write_text(json.dumps(results, indent=1, ensure_ascii=False))
            print(name, results[name], flush=True)
    print("| candidate | tokenizer s | data + train s | tokens | zh bits/byte | en bits/byte |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['tokenizer_s']} | {r['data_and_train_s']} | {r['tokens']:,} | {r['zh_bpb']} | {r['en_bpb']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
