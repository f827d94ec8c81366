"""The whole flow in one command, on the sample corpus: tokenizer -> data -> pretraining -> evaluation ->
instruction tuning -> report (`make demo` runs it).

    python -m shuangyu.demo [--device auto|cpu|gpu] [--amx auto|on|off] [--output_dir outputs/demo] [--fast]

Each step is the command a user would type (printed before it runs), so the demo also shows the flow. Every
step is cached or resumable: run the same command again after an interruption (Ctrl-C, a closed laptop) and
it skips what is done and resumes training from the latest checkpoint (OUTPUT_DIR/demo.json records the recipe
and --fast, and a run with others into the folder is refused). With a GPU it picks the GPU recipe by
itself (and says so); --device forces either. On a CPU with AMX it trains in bf16, compiled, and so gets
further in the same time (--amx off: fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from shuangyu.errors import UsageError, ctrl_c_is_one_line, print_error, print_interrupted, refuse_in_one_line
from shuangyu.files import atomic_write_text
from shuangyu.launcher_report import copy_without_the_launchers_report, open_stderr_for_a_step
from shuangyu.progress import bars_only_on_a_terminal
from shuangyu.report.build import build_report
from shuangyu.step_signals import end_with_the_demo, tell_the_step, to_the_whole_step
from shuangyu.terminal import leave_a_closed_terminal, outlive_a_closed_terminal, stop_signals
from shuangyu.training.arguments import ARGUMENT_CLASSES
from shuangyu.training.checks import cpp_compiler  # the one train_clm.py's --compile is checked with
from shuangyu.training.config_file import load_yaml_config

PROG = "python -m shuangyu.demo"
REPO = Path(__file__).resolve().parents[1]
# the embedded default: the sample corpus beside the checkout (configs/demo-*.yaml name the same files)
CORPUS = Path("../shared/data/corpus")


@dataclass(frozen=True)
class Recipe:
    """What the demo trains; chosen by the measured sweep in bench/RESULTS.md ("The demo's recipe")."""

    name: str
    minutes: str  # how long it takes, as the README says (--fast says its own)
    tokenizer_vocab: int
    tokenizer_text: str  # how much text the tokenizer trains on
    pretrain_config: str
    sft_config: str
    accelerate_config: str
    eval_tasks: str
    eval_limit: int


CPU = Recipe(
    name="CPU (2 cores, fp32)",
    minutes="8-25 minutes by CPU and load",
    tokenizer_vocab=8192,
    tokenizer_text="20MB",
    pretrain_config="configs/demo-cpu.yaml",
    sft_config="configs/sft-demo-cpu.yaml",
    accelerate_config="accelerate_configs/cpu.yaml",
    eval_tasks="arc_easy_local,xcopa_zh_local,hellaswag_local",
    eval_limit=100,
)
RECIPES = {
    "cpu": CPU,
    # the same model in the same time: AMX's bf16 matmuls and a compiled model train 1.25x the tokens in it
    "cpu-amx": replace(
        CPU,
        name="CPU with AMX (2 cores, bf16 matmuls, compiled)",
        minutes="7-25 minutes by CPU and load",
        pretrain_config="configs/demo-cpu-amx.yaml",
    ),
    "gpu": Recipe(
        name="one GPU",
        minutes="",  # not measured end to end yet
        tokenizer_vocab=32000,
        tokenizer_text="200MB",
        pretrain_config="configs/demo-gpu.yaml",
        sft_config="configs/sft-demo-gpu.yaml",
        accelerate_config="accelerate_configs/single_gpu.yaml",
        eval_tasks="arc_easy_local,xcopa_zh_local,hellaswag_local,cmmlu_local",
        eval_limit=500,
    ),
}
# --fast: the same flow in a few minutes (the end-to-end test runs it); the model learns little
FAST_MINUTES = "--fast: a few minutes (2 on 2 idle cores), a model that learns little"
# fmt: off
FAST_OVERRIDES = {
    "tokenizer": ["--max_bytes", "2MB", "--validation_max_bytes", "200KB"],
    # a warmup that fits the shorter run (the recipes' own would take all of it, and train_clm notes that)
    "pretrain": ["--max_steps", "20", "--warmup_steps", "4", "--eval_steps", "10", "--save_steps", "10",
                 "--eval_rows", "32"],
    "sft": ["--max_steps", "10", "--warmup_steps", "2", "--eval_steps", "10", "--save_steps", "10", "--eval_rows", "32"],
    "eval": ["--limit", "5", "--bpb_max_bytes", "100000"],
}
# fmt: on


def pick_device(asked: str) -> str:
    import torch

    has_gpu = torch.cuda.is_available()
    if asked == "gpu" and not has_gpu:
        raise UsageError("--device gpu: this machine's torch sees no CUDA GPU; use --device cpu (or auto)")
    if asked == "auto":
        return "gpu" if has_gpu else "cpu"
    return asked


def cpu_has_amx_bf16() -> bool:
    import torch

    capabilities = getattr(torch.cpu, "get_capabilities", dict)()  # torch >= 2.10
    return bool(capabilities.get("amx_bf16"))


def pick_recipe(device: str, amx: str) -> tuple[str, str]:
    """The recipe's key, and a line saying why (or "")."""
    if device != "cpu":
        return device, ""
    if amx == "off":
        return "cpu", "fp32 (--amx off)"
    missing = [] if cpu_has_amx_bf16() else ["this CPU has no AMX bf16 (bf16 matmuls would be slower than fp32)"]
    if cpp_compiler() is None:
        missing.append("no C++ compiler for torch.compile (install g++ or set CXX)")
    if amx == "on" and missing:
        raise UsageError(f"--amx on: {'; '.join(missing)}; use --amx auto")
    if missing:
        return "cpu", f"fp32: {'; '.join(missing)}"
    return "cpu-amx", "--amx off trains in fp32 (configs/demo-cpu.yaml)"


class StoppedBySignal(Exception):
    """The demo was asked to stop; a step that was running has saved what it could."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stop_on_signal(signum, frame):
    """Between steps (or before the first) SIGTERM or SIGHUP stops the demo as Ctrl-C does: with one line."""
    raise StoppedBySignal(signum)


class Steps:
    """Runs each step as its own command, printed first; stops the demo at the first that fails."""

    def __init__(self, total: int):
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def header(self, title: str) -> None:
        self.done += 1
        elapsed = (time.perf_counter() - self.start) / 60
        print(f"\n== [{self.done}/{self.total}] {title}  ({elapsed:.1f} min so far)", flush=True)

    def skip(self, title: str, why: str) -> None:
        self.header(title)
        print(f"   done already ({why}): skipped", flush=True)

    def run(self, title: str, cmd: list[str], makes: Path | None = None, note: str = "") -> None:
        """Run the step; `makes`: the file it must leave behind (a training run stopped by a signal exits 0
        with a checkpoint, not a model); `note`: said after the title in the step's header only."""
        self.header(f"{title} {note}" if note else title)
        print("$ " + shlex.join(["python" if part == sys.executable else part for part in cmd]), flush=True)
        # an `accelerate launch` step: its launcher's own report of a failure repeats the line the demo gives
        launcher = "accelerate.commands.launch" in cmd
        stopped_by, started, told, copying = [], [], [], None

        def pass_on(signum, frame):
            """Ctrl-C or SIGTERM: the step finishes its training step, saves a checkpoint and exits; the demo waits.
            Only the first is passed on, and a second Ctrl-C (the user's "stop now"): the step takes any second
            signal as that, and a second SIGTERM or SIGHUP is the same stop again (a closed terminal's second
            hang-up; a scheduler that signals every process of the job, the step's included)."""
            leave_a_closed_terminal()  # a closed terminal: the step's stderr, copied here, goes nowhere from now
            first = not stopped_by
            stopped_by.append(signal.Signals(signum))
            if started and (first or signum == signal.SIGINT):
                told.append(signum)
                tell_the_step(started[0], signum, launcher)

        def pause(signum, frame):
            """Ctrl-Z: the step is in a session of its own, so the terminal stops the demo alone; stop both."""
            if started:
                to_the_whole_step(started[0], signal.SIGSTOP)
            os.kill(os.getpid(), signal.SIGSTOP)  # here until `fg` or `bg` continues the demo (then `resume`)

        def resume(signum, frame):
            if started:
                to_the_whole_step(started[0], signal.SIGCONT)

        # what stops the demo cleanly: Ctrl-C, a `kill` or a job scheduler's SIGTERM, a closed terminal (not with nohup)
        handlers = {**dict.fromkeys(stop_signals(), pass_on), signal.SIGTSTP: pause, signal.SIGCONT: resume}
        previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
        try:
            read_end, write_end = open_stderr_for_a_step() if launcher else (None, None)
            try:
                # its own session, so a Ctrl-C at the terminal reaches the demo alone, which passes it on (pass_on)
                process = subprocess.Popen(cmd, stderr=write_end, start_new_session=True, preexec_fn=end_with_the_demo)
            except OSError as err:
                for end in (read_end, write_end) if launcher else ():
                    os.close(end)
                why = f"{err.strerror or err}: {err.filename or cmd[0]}"
                raise UsageError(
                    f"step {self.done} ({title}) could not be started ({why}); fix it and run the demo again"
                ) from None
            started.append(process)  # from here pass_on tells it
            if stopped_by and not told:  # a signal while it was being started
                told.append(stopped_by[0])
                tell_the_step(process, stopped_by[0], launcher)
            if launcher:
                os.close(write_end)
                copying = copy_without_the_launchers_report(read_end)
            code = process.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if copying is not None:
            copying.join(timeout=30)  # a process the step left behind may hold its stderr open: not for ever
        if stopped_by:
            # the step has said where it stopped; the demo says how to go on
            raise StoppedBySignal(stopped_by[0])
        if code == 0 and makes is not None and not makes.exists():
            raise UsageError(f"step {self.done} ({title}) stopped before the end; run the demo again to resume it")
        if code:
            # the step has printed its own error; the demo only says where it stopped and how to go on
            raise UsageError(f"step {self.done} ({title}) failed with exit {code}; fix it and run the demo again")


def launch(recipe: Recipe, *args: str) -> list[str]:
    """accelerate launch train_clm.py, as the README shows it (through python -m, so no PATH lookup)."""
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", recipe.accelerate_config]
    return [*accelerate, "train_clm.py", *args]


def tokenizer_command(recipe: Recipe, output: Path, corpus: Path) -> list[str]:
    """train_bpe.py on the text the pretraining config trains on, in the same shares: fitted to the model's text
    it packs more of it into each token (the CPU recipe's news and novels: 11% more bytes per token in Chinese,
    5% in English than one trained on the whole corpus; bench/RESULTS.md). The compression report still covers
    every held-out file."""
    pretraining = load_yaml_config(recipe.pretrain_config, ARGUMENT_CLASSES)
    exclude = ["--exclude", *pretraining["exclude"]] if pretraining.get("exclude") else []
    return [sys.executable, "tokenizer/train_bpe.py", "--files", *pretraining["train_files"], *exclude,
            "--validation_files", f"zh={corpus}/zh/*_val.jsonl", f"en={corpus}/en/*_val.jsonl",
            "--max_bytes", recipe.tokenizer_text, "--vocab_size", str(recipe.tokenizer_vocab),
            "--output_dir", str(output)]  # fmt: skip


def with_flags(cmd: list[str], flags: list[str]) -> list[str]:
    """cmd with each --flag of `flags` set to its values there: replaced where cmd has it, else appended, so the
    printed command carries each flag once, with the value used."""
    cmd = list(cmd)
    starts = [i for i, part in enumerate(flags) if part.startswith("--")]
    for start, end in zip(starts, [*starts[1:], len(flags)], strict=False):
        flag, values = flags[start], flags[start + 1 : end]
        if flag not in cmd:
            cmd += [flag, *values]
            continue
        at = cmd.index(flag) + 1
        stop = next((i for i in range(at, len(cmd)) if cmd[i].startswith("--")), len(cmd))
        cmd[at:stop] = values
    return cmd


# how a recipe is asked for again, for the line that refuses a folder of another one
RECIPE_FLAGS = {"cpu": "--device cpu --amx off", "cpu-amx": "--device cpu --amx on", "gpu": "--device gpu"}
RECORD = "demo.json"


def claim_folder(out: Path, recipe_key: str, fast: bool) -> None:
    """Records in OUT what the demo runs; refuses a folder that holds a demo run with other settings, whose
    finished steps would otherwise be skipped and reported as this one's. A folder with none of the steps'
    folders yet (or from before this record) is taken as it is."""
    record, flags = out / RECORD, RECIPE_FLAGS[recipe_key] + (" --fast" if fast else "")
    started = any((out / step).exists() for step in ("tokenizer", "pretrain", "sft"))
    if started and record.is_file():
        try:
            was = json.loads(record.read_text(encoding="utf-8"))
            old = RECIPE_FLAGS[was["recipe"]] + (" --fast" if was["fast"] else "")
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"{record}: not a demo's record (not its JSON); give another --output_dir") from None
        if old != flags:
            raise UsageError(
                f"--output_dir {out} holds a demo run with {old}, not {flags}: run it with {old} to resume it, "
                "or give another --output_dir"
            )
    atomic_write_text(record, json.dumps({"recipe": recipe_key, "fast": fast}) + "\n")


def run_demo(recipe_key: str, out: Path, fast: bool, why: str = "") -> Path:
    recipe = RECIPES[recipe_key]
    claim_folder(out, recipe_key, fast)
    fast_args = FAST_OVERRIDES if fast else {k: [] for k in FAST_OVERRIDES}
    other = "cpu" if recipe_key == "gpu" else "gpu"
    took = FAST_MINUTES if fast else recipe.minutes
    took = f"; {took}" if took else ""
    print(f"recipe: {recipe.name} ({recipe.pretrain_config}){took}; --device {other} picks the other")
    if why:
        print(f"        {why}")
    tokenizer, pretrain, sft, corpus = out / "tokenizer", out / "pretrain", out / "sft", CORPUS
    steps = Steps(total=6)
    py = sys.executable

    if (tokenizer / "tokenizer.json").is_file():  # written whole or not at all (an atomic folder)
        steps.skip("tokenizer", str(tokenizer))
    else:
        steps.run(
            "tokenizer: byte-level BPE on Chinese + English",
            with_flags(tokenizer_command(recipe, tokenizer, corpus), fast_args["tokenizer"]),
        )

    def train(title: str, config: str, output: Path, *args: str) -> None:
        """A train_clm.py step: skipped once its final model exists, else started or resumed."""
        if (output / "final" / "config.json").is_file():
            steps.skip(title, str(output / "final"))
            return
        steps.run(
            title,
            launch(
                recipe, "--config", config, *args, "--output_dir", str(output), "--resume_from_checkpoint", "latest"
            ),
            makes=output / "final" / "config.json",
            note="(resumes from the latest checkpoint if interrupted)",
        )

    # data preparation happens inside train_clm.py (cached in OUTPUT_DIR/data, keyed by its inputs)
    train(
        "data + pretraining",
        recipe.pretrain_config,
        pretrain,
        "--tokenizer_name",
        str(tokenizer),
        *fast_args["pretrain"],
    )

    base = pretrain / "final"
    if (base / "eval_results.json").is_file():
        steps.skip("evaluation", str(base / "eval_results.json"))
    else:
        steps.run(
            "evaluation: held-out bits per byte and lm-eval tasks",
            with_flags([py, "eval/run.py", str(base), "--tasks", recipe.eval_tasks, "--limit", str(recipe.eval_limit),
                        "--corpus", str(corpus)], fast_args["eval"]),
        )  # fmt: skip

    train("instruction tuning (SFT) on zh + en conversations", recipe.sft_config, sft,
          "--model_name_or_path", str(base), *fast_args["sft"])  # fmt: skip

    steps.header("report")
    report = build_report(pretrain, corpus=corpus, chat_run=sft)
    print(report.read_text(encoding="utf-8"), flush=True)

    steps.header("talk to it")
    print(f"report: {report}  (curves: {report.parent / 'loss.png'})")
    print("chat with the instruction-tuned model, or continue text with the base model:")
    print(f"  python -m shuangyu.chat {sft / 'final'}")
    print(f'  python -m shuangyu.chat {base} --prompt "今天天气很好，"')
    print(f"demo done in {(time.perf_counter() - steps.start) / 60:.1f} min", flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    p = refuse_in_one_line(argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0]))
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help="which recipe (auto: gpu if any)")
    p.add_argument(
        "--amx",
        choices=("auto", "on", "off"),
        default="auto",
        help="on a CPU: train in bf16 on AMX, compiled (auto: when the CPU has AMX and a C++ compiler is found)",
    )
    p.add_argument("--output_dir", type=Path, default=Path("outputs/demo"), help="every step's folder goes here")
    p.add_argument(
        "--fast", action="store_true", help="a run of the same flow in a few minutes (the model learns little)"
    )
    outlive_a_closed_terminal()  # a closed terminal stops the demo: saying so must not fail
    previous = {sig: signal.signal(sig, stop_on_signal) for sig in stop_signals() if sig != signal.SIGINT}
    try:
        args = p.parse_args(argv)
        bars_only_on_a_terminal()  # for the report built here, and (TQDM_DISABLE) every step's process
        if not (REPO / CORPUS / "zh").is_dir() or not (REPO / CORPUS / "en").is_dir():
            raise UsageError(f"no sample corpus at {(REPO / CORPUS).resolve()}: clone this next to shared/")
        recipe, why = pick_recipe(pick_device(args.device), args.amx)
        out = args.output_dir.resolve()
        os.chdir(REPO)  # the configs name the corpus relative to the checkout, as the README's commands do
        run_demo(recipe, Path(os.path.relpath(out)) if out.is_relative_to(REPO) else out, args.fast, why)
    except UsageError as err:
        return print_error(PROG, err)
    except KeyboardInterrupt:
        return print_interrupted(PROG, "run it again to resume where it stopped")
    except StoppedBySignal as stop:
        if stop.signum == signal.SIGINT:
            return print_interrupted(PROG, "run it again to resume where it stopped")
        print(f"{PROG}: stopped by {stop}; run it again to resume where it stopped", file=sys.stderr, flush=True)
        return 128 + stop.signum  # what a shell reports for a command ended by that signal
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    # a Ctrl-C that main() lets through is one line too, with the exit status for Ctrl-C
    with ctrl_c_is_one_line(PROG, "run it again to resume where it stopped"):
        sys.exit(main())
