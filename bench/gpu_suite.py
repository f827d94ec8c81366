"""Every GPU measurement issue 14 asks for, in one call, so a short device lease is spent measuring.

    python bench/gpu_suite.py --out OUT --tokenizer_name TOK --data_dir DATA      # on the GPU machine
    python bench/gpu_suite.py --tiny --out /tmp/suite                               # CPU self-check, tiny shapes

Steps (each in its own subprocess with a time limit; a failing step is recorded and the suite goes on):
  matmul     the bf16 matmul rate this GPU reaches (8192^3), the reference for MFU in the same run
  throughput bench/model.py: ours (as train_clm runs it) vs stock LlamaForCausalLM, compiled, bf16, sequence
             1024, at vocabulary 50,304 (comparable with published GPT-2-small figures) and at 32,000, for each
             micro-batch in --batch_sizes; MFU = tokens/s x FLOPs per token / measured matmul rate, with FLOPs
             per token = 6 x (every matmul weight, the head included) + 12 x layers x width x sequence (attention)
  muon       bench/optim.py overhead: Muon's optimizer step against AdamW's, as a share of a training step
  loop       bench/optim.py loop: train_clm's step as the loop runs it (Accelerator, bf16, compiled, clip_and_step)
             for AdamW and Muon, a non-finite step skipped on the device (as shipped: no host sync) against the
             norm read on the host before the optimizer step (one sync per step, as before issue 14)
  memory     peak memory of the 350m preset at each micro-batch (does it train on one GPU?)
  configs    bench/configs.py: single_gpu, fsdp2 and deepspeed_zero2 with one process: train, checkpoint,
             resume with equal losses, load and generate (needs --data_dir and --tokenizer_name; DeepSpeed
             needs its wheel)
Writes OUT/suite.json and OUT/suite.md (rows for bench/RESULTS.md, with the command, GPU and date).

The GPU image lacks this project's pins: carry wheels (transformers, tokenizers, huggingface_hub, safetensors,
accelerate, and for DeepSpeed its wheel built with DS_BUILD_OPS=0 plus hjson, pydantic, pydantic-core,
annotated-types, typing-inspection) and a prepared data slice (python -m shuangyu.data.prepare ... here, then
carry the folder and the tokenizer): see the device README's wheel recipe.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_step(name: str, cmd: list[str], timeout: int, log_dir: Path) -> dict:
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        status, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        status, output = "timeout", f"{err.stdout or ''}{err.stderr or ''}"
    (log_dir / f"{name}.log").write_text(f"$ {' '.join(cmd)}\n{output}")
    return {"step": name, "status": status, "seconds": round(time.perf_counter() - started, 1)}


def matmul_rate(device: str, size: int) -> float:
    """FLOP/s of a square bf16 matmul (fp32 on CPU), the best of a few timed rounds."""
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--tiny", action="store_true", help="CPU self-check: tiny preset, short sequences, no configs")
    p.add_argument("--batch_sizes", default="16,32")
    p.add_argument("--vocabs", default="50304,32000")
    p.add_argument("--data_dir", default=None, help="a prepared data folder, for the configs step")
    p.add_argument("--tokenizer_name", default=None, help="its tokenizer, for the configs step")
    p.add_argument("--steps", default="matmul,throughput,muon,loop,memory,configs")
    p.add_argument("--step_timeout", type=int, default=420)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    logs = args.out / "logs"
    logs.mkdir(exist_ok=True)
    device = "cpu" if args.tiny else "cuda"
    preset, seq, dtype = ("tiny", 64, "fp32") if args.tiny else ("124m", 1024, "bf16")
    batches = [2] if args.tiny else [int(b) for b in args.batch_sizes.split(",")]
    vocabs = [512] if args.tiny else [int(v) for v in args.vocabs.split(",")]
    steps = args.steps.split(",")
    results: dict = {"date": time.strftime("%Y-%m-%d"), "device": device, "steps": []}
    if device == "cuda":
        import torch

        results["gpu"] = torch.cuda.get_device_name()
        results["torch"] = torch.__version__
    model_py = [sys.executable, str(REPO / "bench" / "model.py"), "--device", device, "--seq_len", str(seq)]
    if "matmul" in steps:
        results["matmul_flops"] = matmul_rate(device, 512 if args.tiny else 8192)
    if "throughput" in steps:
        results["throughput"] = []
        for vocab in vocabs:
            for batch in batches:
                name, rows_file = f"throughput-v{vocab}-b{batch}", args.out / f"throughput-v{vocab}-b{batch}.json"
                cmd = [*model_py, "--preset", preset, "--vocab_size", str(vocab), "--batch_size", str(batch),
                       "--dtype", dtype, "--models", "shuangyu,llama", "--modes", "compiled", "--steps", "10",
                       "--warmup", "3", "--json", str(rows_file)]  # fmt: skip
                results["steps"].append(run_step(name, cmd, args.step_timeout, logs))
                if rows_file.is_file():
                    fpt = flops_per_token(preset, vocab, seq)
                    for row in json.loads(rows_file.read_text()):
                        row |= {"vocab": vocab, "batch": batch, "flops_per_token": fpt}
                        if results.get("matmul_flops"):
                            row["mfu_vs_measured_matmul"] = row["tokens_per_s"] * fpt / results["matmul_flops"]
                        results["throughput"].append(row)
    if "muon" in steps:
        cmd = [sys.executable, str(REPO / "bench" / "optim.py"), "overhead", "--device", device, "--preset", preset,
               "--batch_size", str(batches[0]), "--seq_len", str(seq), "--vocab_size", str(vocabs[-1])]  # fmt: skip
        results["steps"].append(run_step("muon", cmd, args.step_timeout, logs))
    if "loop" in steps:
        rows_file = args.out / "loop.json"
        cmd = [sys.executable, str(REPO / "bench" / "optim.py"), "loop", "--device", device, "--preset", preset,
               "--batch_size", str(batches[0]), "--seq_len", str(seq), "--vocab_size", str(vocabs[-1]),
               "--json", str(rows_file)]  # fmt: skip
        cmd += ["--steps", "2", "--rounds", "1", "--warmup", "1"] if args.tiny else ["--compile", "--steps", "20"]
        results["steps"].append(run_step("loop", cmd, args.step_timeout, logs))
        if rows_file.is_file():
            results["loop"] = json.loads(rows_file.read_text())
    if "memory" in steps:
        big = "tiny" if args.tiny else "350m"
        for batch in batches:
            rows_file = args.out / f"memory-{big}-b{batch}.json"
            cmd = [*model_py, "--preset", big, "--vocab_size", str(vocabs[-1]), "--batch_size", str(batch),
                   "--dtype", dtype, "--models", "shuangyu", "--modes", "compiled", "--steps", "3", "--warmup", "2",
                   "--json", str(rows_file)]  # fmt: skip
            results["steps"].append(run_step(f"memory-{big}-b{batch}", cmd, args.step_timeout, logs))
            if rows_file.is_file():
                results.setdefault("memory", []).extend(json.loads(rows_file.read_text()))
    if "configs" in steps and not args.tiny and args.data_dir and args.tokenizer_name:
        cmd = [sys.executable, str(REPO / "bench" / "configs.py"), "--data_dir", args.data_dir, "--tokenizer_name",
               args.tokenizer_name, "--configs", "single_gpu,fsdp2,deepspeed_zero2", "--num_processes", "1",
               "--max_steps", "20", "--results", str(args.out / "configs.md")]  # fmt: skip
        results["steps"].append(run_step("configs", cmd, 3 * args.step_timeout, logs))
    (args.out / "suite.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "suite.md").write_text(markdown(results, " ".join(sys.argv[1:])))
    print((args.out / "suite.md").read_text())
    return 0 if all(s["status"] == 0 for s in results["steps"]) else 1


def markdown(results: dict, argv: str) -> str:
    where = results.get("gpu", "CPU")
    lines = [f"`python bench/gpu_suite.py {argv}` on {where}, {results['date']}", ""]
    if results.get("matmul_flops"):
        lines += [f"Measured matmul rate: {results['matmul_flops'] / 1e12:.1f} TFLOP/s", ""]
    if results.get("throughput"):
        lines += [
            "| model | vocab | micro-batch | tokens/s | MFU (vs measured matmul) | peak GiB |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in results["throughput"]:
            mfu = r.get("mfu_vs_measured_matmul")
            lines.append(
                f"| {r['model']} | {r['vocab']:,} | {r['batch']} | {r['tokens_per_s']:,.0f} | "
                f"{'-' if mfu is None else f'{mfu:.1%}'} | {r['peak_gib']:.1f} |"
            )
        lines.append("")
    if results.get("loop"):
        lines += ["| optimizer | non-finite step skipped | step ms | tokens/s |", "|---|---|---:|---:|"]
        lines += [
            f"| {r['optimizer']} | on the {r['skip_decided_on']} | {r['step_ms']:.2f} | {r['tokens_per_s']:,.0f} |"
            for r in results["loop"]
        ]
        lines.append("")
    for row in results.get("memory", []):
        lines.append(f"memory: {row['model']} peak {row['peak_gib']:.1f} GiB, {row['tokens_per_s']:,.0f} tokens/s")
    lines += ["", "| step | status | seconds |", "|---|---|---:|"]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']} |" for s in results["steps"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
