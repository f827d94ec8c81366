"""Plan a pretraining run from a compute budget: model shape, tokens, batch, learning rate, time, cost, memory,
and a training config that train_clm.py takes as is.

    python -m shuangyu.planning.plan --gpu H100 --gpus 1 --hours 8                    # the law picks the model
    python -m shuangyu.planning.plan --model 124m --gpu H100 --hours 8 --output plans/124m.yaml
    python -m shuangyu.planning.plan --model 1b --tokens 20B --gpu H100 --gpus 8     # how long, how much
    python -m shuangyu.planning.plan --flops 1e19 --law chinchilla
    python -m shuangyu.planning.plan --model 1b --gpu H100                          # memory and tokens/s only

The arithmetic is in planner.py; the laws and their sources in laws.py; the memory model in memory.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
from dataclasses import fields
from pathlib import Path

import yaml

from shuangyu.errors import UsageError, ctrl_c_is_one_line, print_error, refuse_in_one_line
from shuangyu.files import check_writable_folder, parse_count
from shuangyu.planning import hardware, laws, memory
from shuangyu.planning.planner import Estimate, Plan, Request, estimate_model, make_plan

PROG = "python -m shuangyu.planning.plan"
SHARED_CORPUS = "../shared/data/corpus"
DEFAULT_TRAIN_FILES = [f"zh={SHARED_CORPUS}/zh/*.jsonl:0.5", f"en={SHARED_CORPUS}/en/*.jsonl:0.5"]
DEFAULT_VALIDATION_FILES = [f"zh={SHARED_CORPUS}/zh/*_val.jsonl", f"en={SHARED_CORPUS}/en/*_val.jsonl"]
DEFAULT_EXCLUDE = ["*_val.jsonl"]  # only with the default corpus: files a user names are theirs to choose
NUMERIC_FLAGS = ("--gpus", "--hours", "--flops", "--mfu", "--peak_tflops", "--memory_gib", "--usd_per_gpu_hour")
NUMERIC_FLAGS += ("--seq_len", "--vocab_size", "--tokens", "--corpus_tokens")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    budget = p.add_argument_group("budget (hours on --gpus x --gpu, or --flops)")
    budget.add_argument("--gpu", default="H100", help=f"one of {hardware.known_names()} (default H100, the SXM card)")
    budget.add_argument("--gpus", type=int, default=1, help="GPUs, one training process each (default 1)")
    budget.add_argument("--hours", type=float, help="wall-clock hours to spend")
    budget.add_argument("--flops", type=float, help="or the budget in FLOPs, e.g. 1e19")
    budget.add_argument("--mfu", type=float, help="model FLOPs utilisation (default: measured, see bench/RESULTS.md)")
    budget.add_argument("--peak_tflops", type=float, help="dense bf16 TFLOP/s of a GPU not in the table (or a CPU)")
    budget.add_argument(
        "--memory_gib",
        type=float,
        help="memory per GPU in GiB, for a GPU not in the table (--gpu cpu: the host's, shared by its processes)",
    )
    budget.add_argument("--usd_per_gpu_hour", type=float, help="price, for the cost (default: Modal's list price)")
    model = p.add_argument_group("model and data")
    model.add_argument(
        "--model", help="fix the model: a preset (tiny, mini, 124m, 350m), 760m, 1b, dN, or a config.json"
    )
    model.add_argument("--tokens", help="fix the training tokens, e.g. 2.5B")
    model.add_argument("--seq_len", type=int, default=1024, help="tokens per row: train_clm's --block_size (1024)")
    model.add_argument("--vocab_size", type=int, default=32000, help="the tokenizer's vocabulary (32000)")
    model.add_argument("--law", choices=laws.LAWS, default="deepseek", help="model/data split (default deepseek)")
    model.add_argument("--optimizer", choices=["muon", "adamw"], default="muon", help="(default muon)")
    model.add_argument("--corpus_tokens", help="tokens in your corpus, to warn about too many passes over it")
    out = p.add_argument_group("the training config")
    out.add_argument("--output", help="write the plan as a train_clm.py --config YAML here")
    out.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    out.add_argument("--train_files", nargs="+", default=DEFAULT_TRAIN_FILES, help="as train_clm.py takes them")
    out.add_argument("--validation_files", nargs="+", default=DEFAULT_VALIDATION_FILES)
    out.add_argument(
        "--exclude",
        nargs="*",
        help=f"as train_clm.py takes them (default with the default corpus: {DEFAULT_EXCLUDE[0]})",
    )
    return p


def request_from_args(args: argparse.Namespace) -> Request:
    for flag in ("gpus", "seq_len", "vocab_size"):
        if getattr(args, flag) < (2 if flag == "seq_len" else 1):
            raise UsageError(f"--{flag} {getattr(args, flag)}: must be at least {2 if flag == 'seq_len' else 1}")
    for flag in ("hours", "flops", "peak_tflops", "memory_gib", "usd_per_gpu_hour", "mfu"):
        value = getattr(args, flag)
        if value is not None and not (value > 0 and math.isfinite(value)):  # 1e400 reads as inf
            raise UsageError(f"--{flag} {value}: must be a finite number above 0")
    from shuangyu.tokenizer.bpe import BYTE_ALPHABET_SIZE, MIN_VOCAB_SIZE, SPECIAL_TOKENS

    if args.vocab_size < MIN_VOCAB_SIZE:  # what tokenizer/train_bpe.py refuses: no tokenizer has such a vocabulary
        raise UsageError(
            f"--vocab_size {args.vocab_size} is smaller than the byte alphabet plus special tokens "
            f"({BYTE_ALPHABET_SIZE} + {len(SPECIAL_TOKENS)} = {MIN_VOCAB_SIZE})"
        )
    if args.mfu is not None and args.mfu > 1:
        raise UsageError(f"--mfu {args.mfu}: a fraction of the peak, at most 1 (e.g. 0.3)")
    if args.hours and args.flops:
        raise UsageError("give the budget once: --hours or --flops")
    gpu = hardware.resolve(args.gpu, args.peak_tflops, args.memory_gib)
    if not gpu.is_cpu and memory.usable_bytes(gpu.memory_gib) <= 0:
        raise UsageError(
            f"--memory_gib {gpu.memory_gib:g}: nothing is left once the CUDA context ({memory.CUDA_RESERVED_GIB:g} "
            "GiB) is taken: give the GPU's whole memory in GiB (e.g. 24)"
        )
    return Request(
        gpu=gpu,
        gpus=args.gpus,
        hours=args.hours,
        flops=args.flops,
        mfu=args.mfu,
        model=args.model,
        tokens=parse_count(args.tokens, "--tokens") if args.tokens is not None else None,
        seq_len=args.seq_len,
        vocab_size=args.vocab_size,
        law=args.law,
        optimizer=args.optimizer,
        corpus_tokens=parse_count(args.corpus_tokens, "--corpus_tokens") if args.corpus_tokens is not None else None,
        usd_per_gpu_hour=args.usd_per_gpu_hour,
    )


def _count(n: float) -> str:
    rounded = float(f"{n:.3g}")  # 999.9B is 1T, not 1e+03B
    if rounded >= 1e15:
        return f"{n:.3g}"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if rounded >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def _per_parameter(tokens: float, parameters: int) -> str:
    ratio = tokens / parameters
    return f"{ratio:,.0f}" if ratio >= 100 else f"{ratio:.2g}"


def report(plan: Plan) -> list[str]:
    """The plan in words, one line per decision."""
    r, s, seq = plan.request, plan.shape, plan.request.seq_len
    gpu = r.gpu
    device = f"{r.gpus} x {gpu.name}"
    lines = [f"plan: {s.name} on {device}, {_count(plan.tokens)} tokens"]
    if gpu.peak_flops:
        lines.append(
            f"  budget       {plan.train_flops:.3g} FLOPs = {gpu.peak_flops / 1e12:g} TFLOP/s peak x MFU {plan.mfu:.3f} "
            f"x {r.gpus} x {plan.hours:.2f} h; MFU {plan.mfu_source}"
        )
    else:
        lines.append(f"  budget       {plan.train_flops:.3g} FLOPs (a CPU: time unknown without --peak_tflops)")
    lines += [
        f"  model        {s.name}: {s.describe()}; {s.parameters / 1e6:,.1f}M parameters",
        f"               M = {_count(s.model_scale(seq))} non-embedding FLOPs/token; "
        f"{_count(s.train_flops_per_token(seq))} training FLOPs/token at sequence {seq}",
        f"  tokens       {_count(plan.tokens)} ({_per_parameter(plan.tokens, s.parameters)} per parameter); "
        f"C = M x D = {plan.compute:.3g} FLOPs",
    ]
    m_opt, d_opt = laws.deepseek_allocation(plan.compute)
    n_opt, d_chin = laws.chinchilla_allocation(6 * s.parameters * plan.tokens)
    lines.append(
        f"  laws at C    DeepSeek LLM: M_opt {_count(m_opt)} FLOPs/token on {_count(d_opt)} tokens; "
        f"Chinchilla: {_count(n_opt)} parameters on {_count(d_chin)} tokens"
    )
    lines += [
        f"  batch        {plan.global_batch_tokens:,} tokens/step (law: {plan.batch_law_tokens:,.0f}) = "
        f"micro-batch {plan.micro_batch} x {seq} tokens x accumulation {plan.accumulation} x {plan.processes} "
        f"process{'es' if plan.processes > 1 else ''}",
        f"  steps        {plan.steps:,}; warmup {plan.warmup_steps:,}, then warmup_stable_decay: constant, the last 20% "
        "decaying to 10% of the peak (DeepSeek LLM's multi-step schedule ends at 10% too)",
        f"  learning rate {plan.learning_rate:.3g} peak ({r.optimizer}), weight decay 0.1, gradient clipping 1.0",
    ]
    if plan.hours is not None:
        used = "" if gpu.is_cpu else f", {plan.hours * r.gpus:,.1f} GPU-hours"
        cost = f", ${plan.cost_usd:,.0f} at ${plan.usd_per_gpu_hour:g}/GPU-hour" if plan.cost_usd is not None else ""
        lines.append(f"  time         {plan.hours:,.2f} h wall clock{used}{cost}")
    gc = ", with gradient checkpointing (+1/3 compute)" if plan.gradient_checkpointing else ""
    lines += [
        f"  memory       {memory.size(plan.memory.total)} per {'process' if gpu.is_cpu else 'GPU'} of "
        f"{memory.size(plan.usable_bytes)} usable{shared_host(r)} ({plan.memory.describe()}){gc}: fits",
        f"               {alternatives_line(plan)}",
        f"  checkpoints  every {plan.save_steps:,} steps"
        + (f" ({minutes(plan.save_steps / plan.steps * plan.hours)})" if plan.hours else "")
        + "; validation as often",
    ]
    lines += [f"  note: {note}" for note in plan.notes]
    return lines


def estimate_report(e: Estimate) -> list[str]:
    """A model on a GPU without a budget: the memory a plan would hold and the speed it would run at."""
    r, s = e.request, e.shape
    unit = "process" if r.gpu.is_cpu else "GPU"
    gc = ", with gradient checkpointing (+1/3 compute)" if e.gradient_checkpointing else ""
    lines = [
        f"estimate: {s.name} on {r.gpus} x {r.gpu.name}, sequence {r.seq_len} (no budget: no tokens, steps or time)",
        f"  model        {s.name}: {s.describe()}; {s.parameters / 1e6:,.1f}M parameters",
        f"  memory       {memory.size(e.memory.total)} per {unit} of {memory.size(e.usable_bytes)} usable"
        f"{shared_host(r)} at "
        f"micro-batch {e.micro_batch} x {r.seq_len} ({e.memory.describe()}){gc}: fits",
        f"               {alternatives_line(e)}",
    ]
    rate = e.tokens_per_second
    if rate is None:
        lines.append("  throughput   unknown on a CPU without --peak_tflops")
    else:
        lines.append(
            f"  throughput   {rate:,.0f} tokens/s, {_count(rate * 3600)} tokens/hour on {r.gpus} x {r.gpu.name} "
            f"at MFU {e.mfu:.3f} ({e.mfu_source})"
        )
    return lines


def shared_host(r: Request) -> str:
    """On a CPU the processes share the host's memory: each plans with its share."""
    if not r.gpu.is_cpu or r.gpus == 1:
        return ""
    return f" (the host's {memory.size(memory.usable_bytes(r.gpu.memory_gib, True))} shared by {r.gpus} processes)"


def alternatives_line(plan: Plan | Estimate) -> str:
    """What the other choices would hold: both optimizers' state (AdamW 8 bytes per parameter, Muon 4 on its
    matrices) and the activations with and without gradient checkpointing, at the plan's micro-batch."""
    r = plan.request

    def est(optimizer: str, checkpointing: bool) -> memory.MemoryEstimate:
        return memory.estimate(plan.shape, plan.micro_batch, r.seq_len, optimizer, checkpointing, r.gpus, r.gpu.is_cpu)

    return (
        f"optimizer state: AdamW {memory.size(est('adamw', False).optimizer)}, "
        f"Muon {memory.size(est('muon', False).optimizer)}; activations: "
        f"{memory.size(est(r.optimizer, False).activations)}, "
        f"{memory.size(est(r.optimizer, True).activations)} with gradient checkpointing"
    )


REPO = Path(__file__).resolve().parents[2]


def from_the_repo(path: str | Path) -> str:
    """A path as train_clm finds it when run from the repository's root, as the printed command is: relative to the
    root inside it, absolute outside (the planner may have run elsewhere)."""
    full = Path(path).resolve()
    return str(full.relative_to(REPO)) if full.is_relative_to(REPO) else str(full)


def minutes(hours: float) -> str:
    return f"about {hours * 60:.0f} min" if hours * 60 >= 1 else "under a minute"


def launch_command(plan: Plan, config_path: str) -> str:
    r = plan.request
    if r.gpu.is_cpu:
        launch = "accelerate launch --config_file accelerate_configs/cpu.yaml"
        if r.gpus != 2:
            launch += f" --num_processes {r.gpus}"
    elif r.gpus == 1:
        launch = "accelerate launch --config_file accelerate_configs/single_gpu.yaml"
    else:
        launch = f"accelerate launch --config_file accelerate_configs/multi_gpu.yaml --num_processes {r.gpus}"
    name = Path(config_path).stem
    return (
        f"{launch} train_clm.py --config {config_path} --tokenizer_name outputs/tokenizer --output_dir outputs/{name}"
    )


def training_config(plan: Plan, model_config: str, args: argparse.Namespace) -> dict:
    """The plan as train_clm.py's flags (only keys it knows: checked against its argument classes)."""
    r = plan.request
    values = {
        "model_config": model_config,
        "train_files": list(args.train_files),
        "exclude": exclude_patterns(args),
        "validation_files": list(args.validation_files),
        "block_size": r.seq_len,
        "per_device_train_batch_size": plan.micro_batch,
        "gradient_accumulation_steps": plan.accumulation,
        "max_steps": plan.steps,
        "optimizer": r.optimizer,
        "learning_rate": float(f"{plan.learning_rate:.3g}"),
        "weight_decay": 0.1,
        "max_grad_norm": 1.0,
        "lr_scheduler_type": "warmup_stable_decay",
        "warmup_steps": plan.warmup_steps,
        "decay_fraction": 0.2,
        "min_lr_ratio": 0.1,
        "gradient_checkpointing": plan.gradient_checkpointing,
        "mixed_precision": "auto",
        "compile": not r.gpu.is_cpu,
        "logging_steps": max(1, min(20, plan.steps // 50)),
        "eval_steps": plan.save_steps,
        "save_steps": plan.save_steps,
        "save_total_limit": 3,
        "resume_from_checkpoint": "latest",
    }
    if not r.gpu.is_cpu:
        values["preprocessing_num_workers"] = 8
    if not values["exclude"]:
        del values["exclude"]
    from shuangyu.training.arguments import ARGUMENT_CLASSES

    known = {f.name for cls in ARGUMENT_CLASSES for f in fields(cls)}
    assert set(values) <= known, sorted(set(values) - known)
    return values


def exclude_patterns(args: argparse.Namespace) -> list[str]:
    if args.exclude is not None:
        return list(args.exclude)
    return list(DEFAULT_EXCLUDE) if args.train_files == DEFAULT_TRAIN_FILES else []


def negative_values_joined(argv: list[str]) -> list[str]:
    """`--flops -1e19` as `--flops=-1e19`: argparse takes a word starting with '-' that is not a plain negative
    number (an exponent, `-inf`) for a flag, and would say `expected one argument` instead of the range error."""
    joined, i = [], 0
    while i < len(argv):
        if argv[i] in NUMERIC_FLAGS and i + 1 < len(argv) and is_negative_number(argv[i + 1]):
            joined.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        joined.append(argv[i])
        i += 1
    return joined


def is_negative_number(word: str) -> bool:
    """-1e19, -inf, and a count with its multiplier (-5B); not a flag such as --gpu."""
    if not word.startswith("-"):
        return False
    try:
        float(word)
    except ValueError:
        return re.match(r"-\.?[0-9]", word) is not None
    return True


def write_outputs(plan: Plan, args: argparse.Namespace, argv: list[str]) -> list[str]:
    """The YAML and, for a shape train_clm does not know by name, its config.json under models/ beside it."""
    output = Path(args.output)
    check_writable_folder(output.parent, "--output")  # and models/ beside it
    if output.is_dir():
        raise UsageError(f"--output {output} is a folder: give a file name such as {output / 'plan.yaml'}")
    if output.exists() and not args.overwrite:
        raise UsageError(f"--output {output} exists: pass --overwrite to replace it")
    shape, seq = plan.shape, plan.request.seq_len
    files = {}  # path -> text, written together below
    if seq <= (shape.max_positions or seq) and (shape.source or shape.preset):
        model_config = from_the_repo(shape.source) if shape.source else shape.name
    else:
        # a shape train_clm does not know by name, or one whose context is shorter than --seq_len (train_clm
        # refuses a --block_size above max_position_embeddings): its config.json, with the context the plan needs
        model_path = output.parent / "models" / f"{shape.name}.json"
        text = json_text(longer_copy(shape.source, seq) if shape.source else shape.config(seq))
        if model_path.exists() and model_path.read_text(encoding="utf-8") != text and not args.overwrite:
            raise UsageError(f"{model_path} exists with another shape: pass --overwrite to replace it")
        model_config, files[model_path] = from_the_repo(model_path), text
    values = training_config(plan, model_config, args)
    header = [f"# Planned by: {PROG} {shlex.join(argv)}", "#"]
    header += ["# " + line for line in report(plan)]
    each = "CPU processes sharing the host" if plan.request.gpu.is_cpu else "one process per GPU"
    header += ["#", f"# Train ({each}):", "#   " + launch_command(plan, from_the_repo(output))]
    body = yaml.safe_dump(values, sort_keys=False, allow_unicode=True, width=200)
    files[output] = "\n".join(header) + "\n" + body
    write_together(files)
    return [str(path) for path in files]


def longer_copy(source: str, seq_len: int) -> dict:
    """A --model config.json (or run folder) as it is, but for its context: the one the plan trains at."""
    path = Path(source)
    fields = json.loads((path / "config.json" if path.is_dir() else path).read_text(encoding="utf-8"))
    fields.pop("auto_map", None)  # its code stays in the run folder; train_clm knows model_type shuangyu anyway
    return fields | {"max_position_embeddings": seq_len}


def write_together(files: dict[Path, str]) -> None:
    """Each file to a temporary name beside it, then all renamed into place: a full disk or a quota leaves no
    half-written file and no model config without the YAML that names it. The PID keeps two runs apart."""
    temps: dict[Path, Path] = {}
    made: list[Path] = []
    path = next(iter(files))
    try:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            temps[path] = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            temps[path].write_text(text, encoding="utf-8")
        for path, tmp in temps.items():
            existed = path.exists()
            tmp.replace(path)
            if not existed:
                made.append(path)
    except OSError as err:
        for written in [*temps.values(), *made]:
            written.unlink(missing_ok=True)
        reason = err.strerror or type(err).__name__
        raise UsageError(
            f"--output: could not write {path} ({reason}): nothing written; free space or pick another folder"
        ) from None


def json_text(config: dict) -> str:
    return json.dumps(config, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = refuse_in_one_line(build_parser())
    try:
        args = parser.parse_args(negative_values_joined(argv))
        request = request_from_args(args)
        if request.model and request.tokens is None and request.hours is None and request.flops is None:
            if args.output:
                raise UsageError("--output needs a plan: give a budget (--hours or --flops) or --tokens")
            lines = estimate_report(estimate_model(request))
            print("\n".join(lines))
            return 0
        plan = make_plan(request)
        written = write_outputs(plan, args, argv) if args.output else []
    except UsageError as err:
        return print_error(PROG, err)
    print("\n".join(report(plan)))
    for path in written:
        print(f"wrote {path}")
    if written:
        print("train with:\n  " + launch_command(plan, from_the_repo(written[-1])))
    return 0


if __name__ == "__main__":
    # a Ctrl-C that main() lets through is one line too, with the exit status for Ctrl-C
    with ctrl_c_is_one_line(PROG):
        sys.exit(main())
