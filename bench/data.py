"""Data pipeline throughput on the shared corpus: `prepare` (MB/s of text) and the loader (tokens/s).

    python bench/data.py                          # whole ../shared corpus, 2 processes, block 1024, batch 32
    python bench/data.py --write_results          # also replace the `## Data` section of bench/RESULTS.md

prepare: every train file of the corpus (zh and en, 0.5:0.5 in tokens, `_val` files held out as validation),
from scratch (the output folder is removed first), then again to time a cache hit. Loader: int64 tensors
of shape [batch, block] from the memory-mapped blocks, for --loader_seconds, with 0 and 2 workers.
Without --tokenizer_name a 32k Shuangyu tokenizer is trained on a 10 MB sample first (not timed).
"""

import argparse
import json
import os
import platform
import re
import resource
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def bench_tokenizer(corpus: Path, out: Path) -> Path:
    if (out / "tokenizer.json").exists():
        return out
    from shuangyu.tokenizer.train_bpe import TrainBPEArguments, run

    run(
        TrainBPEArguments(
            output_dir=str(out),
            files=[f"zh={corpus}/zh/*.jsonl:0.5", f"en={corpus}/en/*.jsonl:0.5"],
            exclude=["*_val.jsonl"],
            max_bytes="10MB",
            vocab_size=32000,
            overwrite=True,
        )
    )
    return out


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the map workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def loader_throughput(data, batch_size: int, seconds: float, num_workers: int) -> dict:
    loader = data.train_loader(batch_size, seed=0, num_workers=num_workers)
    tokens = batches = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for batch in loader:
            x = batch["input_ids"]
            assert x.shape == (batch_size, data.block_size)
            tokens += x.numel()
            batches += 1
            if time.perf_counter() - start >= seconds:
                break
    elapsed = time.perf_counter() - start
    return {"num_workers": num_workers, "batches": batches, "tokens_per_s": tokens / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "corpus"))
    parser.add_argument("--tokenizer_name", default=None)
    parser.add_argument("--output_dir", default=str(ROOT / "outputs" / "bench_data"))
    parser.add_argument("--num_proc", type=int, default=2)
    parser.add_argument("--block_size", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--loader_seconds", type=float, default=10.0)
    parser.add_argument("--write_results", action="store_true")
    args = parser.parse_args()

    from shuangyu.data.inputs import PrepareArguments
    from shuangyu.data.prepare import format_report, prepare

    corpus = Path(args.corpus)
    out = Path(args.output_dir)
    tok_dir = args.tokenizer_name or str(bench_tokenizer(corpus, out / "tokenizer"))
    prep_args = PrepareArguments(
        output_dir=str(out / "data"),
        tokenizer_name=tok_dir,
        files=[f"zh={corpus}/zh/*.jsonl:0.5", f"en={corpus}/en/*.jsonl:0.5"],
        exclude=["*_val.jsonl"],
        validation_files=[f"zh={corpus}/zh/*_val.jsonl", f"en={corpus}/en/*_val.jsonl"],
        block_size=args.block_size,
        num_proc=args.num_proc,
    )
    shutil.rmtree(out / "data", ignore_errors=True)
    load_before = os.getloadavg()[0]
    cpu_before = cpu_seconds()
    start = time.perf_counter()
    data = prepare(prep_args)
    prepare_s = time.perf_counter() - start
    prepare_cpu = cpu_seconds() - cpu_before  # robust to other jobs on the machine, unlike wall time
    load_after = os.getloadavg()[0]
    start = time.perf_counter()
    again = prepare(prep_args)
    cached_s = time.perf_counter() - start
    assert again.reused
    print(format_report(data))

    m = data.manifest
    text_mb = m["text_bytes"] / 1e6
    loads = [loader_throughput(data, args.batch_size, args.loader_seconds, w) for w in (0, 2)]
    rows = [
        "## Data",
        "",
        f"`python bench/data.py --num_proc {args.num_proc} --block_size {args.block_size} --batch_size "
        f"{args.batch_size}` on the whole shared corpus ({text_mb:,.1f} MB of text read: every train file, zh "
        f"and en; `_val` files as validation), {os.cpu_count()} CPU cores, {platform.python_version()}, a 32k "
        "Shuangyu tokenizer. Other engineers' jobs share this machine, so wall times are noisy: the load "
        f"average was {load_before:.1f} before and {load_after:.1f} after prepare; MB per CPU-second is the "
        "steadier figure.",
        "",
        "| step | result |",
        "|---|---|",
        f"| prepare from scratch, {args.num_proc} processes | {prepare_s:.1f} s, **{text_mb / prepare_s:.2f} MB/s** "
        f"of text (read {m['time_s']['read']:.1f} s, tokenize {m['time_s']['tokenize']:.1f} s, mix+pack+write "
        f"the rest); {prepare_cpu:.0f} CPU-s = {text_mb / prepare_cpu:.2f} MB per CPU-second |",
        f"| prepare again, same inputs (cache hit) | {cached_s:.2f} s, no tokenisation |",
        f"| train blocks | {m['train']['blocks']:,} x {m['block_size']} = {m['train']['tokens']:,} tokens "
        f"({m['dtype']}); mix asked 50/50, got "
        + "/".join(f"{s['share']:.1%} {s['name']}" for s in m["sources"])
        + " |",
    ]
    for load in loads:
        rows.append(
            f"| loader, batch [{args.batch_size}, {args.block_size}] int64, {load['num_workers']} workers | "
            f"**{load['tokens_per_s'] / 1e6:,.1f} M tokens/s** ({load['batches']:,} batches) |"
        )
    section = "\n".join(rows) + "\n"
    print("\n" + section)
    (out / "results.json").write_text(
        json.dumps(
            {
                "prepare_s": prepare_s,
                "prepare_cpu_s": prepare_cpu,
                "cached_s": cached_s,
                "text_mb": text_mb,
                "loader": loads,
            },
            indent=2,
        )
    )
    if args.write_results:
        results = ROOT / "bench" / "RESULTS.md"
        text = results.read_text() if results.exists() else "# Benchmarks\n\n"
        pattern = re.compile(r"^## Data\n.*?(?=^## |\Z)", re.S | re.M)
        text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
        results.write_text(text)


if __name__ == "__main__":
    main()
