"""What must hold before a run starts: the flags it cannot do without, and an output folder it may write to."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

from shuangyu.devices import training_device
from shuangyu.errors import UsageError
from shuangyu.files import check_writable_folder, holds
from shuangyu.text.sources import local_paths, parse_file_source, resolve_files
from shuangyu.training import checkpoint as ckpt
from shuangyu.training import resume_checks
from shuangyu.training.arguments import TrainConfig


def check_run(config: TrainConfig) -> tuple[Path, Path | None]:
    """The output folder and the checkpoint to resume from (None: start afresh), after checking the flags."""
    if not config.checkpoint.output_dir:
        raise UsageError("give --output_dir")
    if not config.model.tokenizer_name:
        raise UsageError("give --tokenizer_name (a folder written by tokenizer/train_bpe.py)")
    if not (config.train.max_steps or config.train.max_train_tokens):
        raise UsageError("give --max_steps or --max_train_tokens")
    check_trackers(config.logging.report_to)
    check_machine(config)
    out = Path(config.checkpoint.output_dir)
    check_output_dir(out, config.checkpoint.overwrite_output_dir, config.checkpoint.resume_from_checkpoint)
    if config.hub.push_to_hub:
        from shuangyu.training.hub import check_hub

        if config.lora.lora_r:  # eval/push.py refuses the adapter: say so before training, not after it
            raise UsageError(
                "--push_to_hub with --lora_r: an adapter is not pushed (its base model is named by a local path); "
                "train without --push_to_hub, merge the adapter (python -m shuangyu.training.merge_lora) and push "
                "the merged folder with eval/push.py"
            )

        check_hub(config.hub)
    warn = print if is_first_process() else (lambda message: None)
    resume_dir = ckpt.resolve_resume(out, config.checkpoint.resume_from_checkpoint, warn)
    if resume_dir:  # before any work: preparing a corpus, then refusing the checkpoint, would waste it
        resume_checks.check_data_kind(resume_dir, config.data.streaming, out)
        resume_checks.check_resume_flags(resume_dir, config)
    if config.checkpoint.overwrite_output_dir and resume_dir is None:
        check_fresh_start_keeps_inputs(config, out)
    return out, resume_dir


# --report_to's trackers: the package accelerate needs for each (any one of them)
TRACKERS = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


def check_trackers(report_to: str) -> None:
    """--report_to names trackers this code logs to, whose packages are installed: accelerate would raise a
    traceback for an unknown name, and only warn (then train untracked) for a missing package."""
    if report_to in ("all", "none"):
        return
    for name in report_to.split(","):  # accelerator.trackers passes a comma list on
        if name not in TRACKERS:
            raise UsageError(
                f"--report_to {report_to}: unknown tracker {name!r}; use tensorboard, wandb, a comma list of "
                "them, all or none"
            )
        if not any(importlib.util.find_spec(package) for package in TRACKERS[name]):
            other = "wandb" if name == "tensorboard" else "tensorboard"
            raise UsageError(f"--report_to {name}: {name} is not installed: pip install {name}, or --report_to {other}")


def check_machine(config: TrainConfig) -> None:
    """The flags this machine cannot train with, refused before any work: torch would raise at the first step."""
    attention, compiling = config.model.attn_implementation, config.train.compile
    fp16 = config.train.mixed_precision == "fp16"
    if not (compiling or fp16 or attention.startswith(("flex", "flash"))):
        return  # nothing to ask of the machine (and no torch import for it)
    device = training_device()
    if device == "cpu" and attention.startswith(("flex", "flash")):
        # FlexAttention runs forward on the CPU but has no backward there; flash-attn kernels are CUDA only
        raise UsageError(f"--attn_implementation {attention} does not train on the CPU: use sdpa (the default)")
    if device == "cpu" and fp16:
        # Accelerate enables fp16 on GPUs only: on the CPU the run trained in fp32 and recorded fp16
        raise UsageError(
            "--mixed_precision fp16 does not train on the CPU (it would run in fp32): use bf16 (fast on CPUs with "
            "AMX) or leave the flag out; fp16 with loss scaling is for GPUs without bf16"
        )
    if compiling and device == "cpu" and cpp_compiler() is None:
        if "CXX" in os.environ:  # inductor tries $CXX alone: installing g++ would not help
            raise UsageError(
                f"--compile needs a C++ compiler (torch inductor): $CXX ({os.environ['CXX'] or 'empty'}) is not "
                "one found on PATH; set $CXX to an installed compiler or unset it (g++), or leave out --compile"
            )
        raise UsageError("--compile needs a C++ compiler (torch inductor): install g++ or leave out --compile")
    if compiling and device == "cuda" and c_compiler() is None:
        # triton builds each kernel's launcher with the system's C compiler on first use
        raise UsageError("--compile needs a C compiler (triton): install gcc, set $CC, or leave out --compile")


def cpp_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU code is built with: inductor tries $CXX alone where it is set, else
    g++ (clang++ on macOS), and nothing else."""
    name = os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")
    return shutil.which(name) if name else None


def c_compiler() -> str | None:
    """The C compiler triton builds its kernel launchers with: $CC where it is set, else gcc, else clang."""
    if "CC" in os.environ:
        return shutil.which(os.environ["CC"]) if os.environ["CC"] else None
    return shutil.which("gcc") or shutil.which("clang")


def check_fresh_start_keeps_inputs(config: TrainConfig, out: Path) -> None:
    """--overwrite_output_dir deletes the previous run's checkpoints and final model (checkpoint.start_fresh):
    refuse, before anything is deleted, when this run reads from them (a model, tokenizer or text in final/)."""
    inputs = [
        (flag, path)
        for flag, path in (
            ("--tokenizer_name", config.model.tokenizer_name),
            ("--model_name_or_path", config.model.model_name_or_path),
            ("--data_dir", config.data.data_dir),
        )
        if path and Path(path).exists()
    ]
    for flag, values, exclude in (
        ("--train_files", config.data.train_files, config.data.exclude),
        ("--validation_files", config.data.validation_files, ()),
    ):
        specs = [parse_file_source(value, flag) for value in values]
        inputs += local_paths(specs, [resolve_files(spec, exclude, flag) for spec in specs])
    for name in ckpt.FRESH_START_DELETES:
        for what, path in inputs:
            if holds(out / name, path):
                raise UsageError(
                    f"--overwrite_output_dir would delete {out / name}, which is or holds {what} {path}: copy it "
                    "out of --output_dir first, or choose another --output_dir"
                )


def is_first_process() -> bool:
    """Rank 0 of a launch (or a plain run): the process that speaks for the run."""
    return int(os.environ.get("RANK", "0")) == 0


# What a run writes into its --output_dir (train_clm.py; accelerate's trackers under shuangyu/ and wandb/;
# python -m shuangyu.report), besides dot-named temporary files and the lock
RUN_ENTRIES = frozenset(
    {"checkpoints", "final", "data", "shuangyu", "wandb", "run_args.json", "environment.json", "train_log.jsonl",
     "report.md", "loss.png"}
)  # fmt: skip


def check_output_dir(
    out: Path, overwrite: bool, resume, holds_run: bool | None = None, run_entries: frozenset = RUN_ENTRIES
) -> None:
    """Refuse to train over another run unless resuming it or told to overwrite it, into a folder of other files
    unless told to, and into a folder that cannot be written, before the work rather than after it. `holds_run`
    and `run_entries` are another command's (DPO's Trainer folders), where its run is not train_clm.py's."""
    check_writable_folder(out, "--output_dir")
    if holds_run is None:
        checkpoints, finished = bool(ckpt.complete_checkpoints(out)), (out / "final").exists()
        holds_run = checkpoints or finished
        if resume == "latest" and finished and not checkpoints and not overwrite:
            # `latest` with no checkpoint starts afresh (a run stopped before its first save), but here it would
            # train over a finished run's final/ and log
            raise UsageError(
                f"--output_dir {out} holds a finished run (final/) and no checkpoint to resume from: pass "
                "--overwrite_output_dir to train afresh over it, or choose a new --output_dir"
            )
    if holds_run and not resume and not overwrite:
        raise UsageError(
            f"--output_dir {out} holds another run; pass --resume_from_checkpoint latest to continue it, "
            "or --overwrite_output_dir to start over"
        )
    others = [] if holds_run or not out.is_dir() else foreign_entries(out, run_entries)
    if others and not overwrite:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise UsageError(
            f"--output_dir {out} holds files that are not a run's ({shown}): choose a new or empty folder, or pass "
            "--overwrite_output_dir to train there anyway (they are left as they are)"
        )


def foreign_entries(out: Path, run_entries: frozenset = RUN_ENTRIES) -> list[str]:
    """The names in `out` that no run writes (a copied tokenizer, a user's files): training would mix its own in."""
    return sorted(p.name for p in out.iterdir() if p.name not in run_entries and not p.name.startswith("."))
