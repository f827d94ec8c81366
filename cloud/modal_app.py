"""Train, evaluate, chat with and share Shuangyu models on rented GPUs, with no server to log in to: Modal.

    pip install -r requirements-cloud.txt && modal setup            # once: the client, and a Modal token
    modal volume put shuangyu-data outputs/tokenizer tokenizer      # your tokenizer (make tokenizer)
    modal volume put shuangyu-data ../shared/data data              # your text, laid out as ../shared/data here
    modal run cloud/modal_app.py --config configs/124m.yaml --gpu A10G           # try things on one A10G
    modal run --detach cloud/modal_app.py --config configs/124m.yaml --gpu H100:8  # the run, 8 x H100
    modal run cloud/modal_app.py::evaluate --run 124m --tasks arc_easy_local,xcopa_zh_local --limit 100
    modal run cloud/modal_app.py::chat --run 124m --prompt "今天天气"
    HF_TOKEN=hf_... modal run cloud/modal_app.py::push --run 124m --hub-model-id USER/NAME

What happens: an image is built from requirements.txt (torch 2.13.0's CUDA build from the PyTorch index first)
with this checkout copied in at /root/shuangyu; the Volume `shuangyu-data` is mounted at /root/shared, where a
checkout keeps ../shared (so the configs' `../shared/data/corpus/...` paths work unchanged), and holds the
tokenizer, the text and the prepared data; the Volume `shuangyu-runs` at /runs holds each run's checkpoints, logs
(train_log.jsonl, tensorboard) and final model. Data is prepared first on CPUs (`prepare`), so GPUs never wait on
tokenisation; then `accelerate launch` starts one training process per GPU, always with
`--resume_from_checkpoint latest`. A preemption makes Modal restart the function on the same input; an attempt
stops itself 20 minutes before Modal's 24-hour limit, saving a checkpoint, and fails so that Modal's retries
start the next attempt; each attempt resumes from the latest checkpoint.

Only this file imports `modal`: the rest of Shuangyu never does, and the plain functions below (GPU specs, the
commands each entry runs) work without it (tests/test_modal_app.py). `chat` runs `python -m shuangyu.chat` on the
run's final model with one `--prompt` (and `--max_new_tokens`), printing the reply. Run this file with `modal run`;
`python cloud/modal_app.py` only says so.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

try:
    import modal
except ModuleNotFoundError:  # the plain functions below need no Modal
    modal = None

PROG = "modal_app.py"
APP_NAME = "shuangyu"
REPO = Path(__file__).resolve().parent.parent
REMOTE_REPO = PurePosixPath("/root/shuangyu")
DATA_MOUNT = PurePosixPath("/root/shared")  # ../shared of the remote checkout
RUNS_MOUNT = PurePosixPath("/runs")
DATA_VOLUME, RUNS_VOLUME = "shuangyu-data", "shuangyu-runs"
REMOTE_TOKENIZER = DATA_MOUNT / "tokenizer"
PYTHON_VERSION = "3.11"
TORCH = "torch==2.13.0"
TORCH_INDEX = "https://download.pytorch.org/whl/cu130"  # CUDA 13.0 build (bench/ ran 2.11.0+cu130 on H100)
ATTEMPT_TIMEOUT_S = 24 * 3600  # Modal's longest timeout for one attempt
STOP_BEFORE_TIMEOUT_S = 20 * 60  # time to finish the step, save a checkpoint and commit the Volume
SHUTDOWN_GRACE_S = 15 * 60
MAX_RETRIES = 10  # attempts after the first: ~11 days of training at most
# GPU types Modal accepts and the most per container (modal.com/docs/guide/gpu): A10 (A10G) up to 4, others 8.
MODAL_GPUS = {
    "T4": 8,
    "L4": 8,
    "A10": 4,
    "A10G": 4,
    "L40S": 8,
    "A100": 8,
    "A100-40GB": 8,
    "A100-80GB": 8,
    "RTX-PRO-6000": 8,
    "H100": 8,
    "H100!": 8,
    "H200": 8,
    "B200": 8,
    "B200+": 8,
}
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# exit statuses of train_clm.py that another attempt would not change: a usage error, a diverged run
FINAL_FAILURES = {2: "a usage error", 3: "a diverged run (too many non-finite steps)"}


class LaunchError(ValueError):
    """A bad flag: said in one line (`modal_app.py: error: ...`), exit status 2."""


def parse_gpu(spec: str) -> tuple[str, int]:
    """`TYPE` or `TYPE:COUNT` as Modal's `gpu=` takes it: ("H100", 8) for "h100:8"."""
    kind, _, count_text = spec.strip().partition(":")
    kind = kind.upper()
    if kind not in MODAL_GPUS:
        raise LaunchError(f"--gpu {spec!r}: Modal has no GPU {kind!r}; choose one of {', '.join(MODAL_GPUS)}")
    if not count_text:
        return kind, 1
    if not count_text.isdigit() or int(count_text) < 1:
        raise LaunchError(f"--gpu {spec!r}: the count after ':' must be a whole number of GPUs, at least 1")
    if int(count_text) > MODAL_GPUS[kind]:
        raise LaunchError(f"--gpu {spec!r}: Modal gives at most {MODAL_GPUS[kind]} x {kind} per container")
    return kind, int(count_text)


def gpu_argument(kind: str, count: int) -> str:
    return kind if count == 1 else f"{kind}:{count}"


def run_name(config: str, run: str = "") -> str:
    name = run or Path(config).stem
    if not RUN_NAME.fullmatch(name):
        raise LaunchError(f"--run {name!r}: use letters, digits, '.', '_' and '-' (it names a folder in /runs)")
    return name


def remote_config(config: str, repo: Path = REPO) -> str:
    """The config's path inside the remote checkout: it must live in this checkout, which is what is uploaded."""
    path = Path(config).resolve()
    if not path.is_file():
        raise LaunchError(f"--config {config}: no such file")
    try:
        return path.relative_to(repo.resolve()).as_posix()
    except ValueError:
        raise LaunchError(f"--config {config}: not inside {repo}; put it under configs/ so it is uploaded") from None


def output_dir(run: str) -> str:
    return str(RUNS_MOUNT / run)


def data_dir(run: str) -> str:
    return str(DATA_MOUNT / "prepared" / run)


def train_command(
    config: str, gpus: int, run: str, tokenizer: str = str(REMOTE_TOKENIZER), extra: str = ""
) -> list[str]:
    """`accelerate launch` with one process per GPU; resuming from the latest checkpoint, so every attempt (first,
    after a preemption, after the time limit) is the same command. `extra`: more train_clm.py flags, which win."""
    if gpus == 1:
        launch = ["accelerate", "launch", "--config_file", "accelerate_configs/single_gpu.yaml"]
    else:
        launch = ["accelerate", "launch", "--config_file", "accelerate_configs/multi_gpu.yaml"]
        launch += ["--num_processes", str(gpus)]
    flags = ["--config", config, "--tokenizer_name", tokenizer, "--output_dir", output_dir(run)]
    flags += ["--data_dir", data_dir(run), "--resume_from_checkpoint", "latest"]
    return [*launch, "train_clm.py", *flags, *shlex.split(extra)]


def prepare_command(data, run: str, tokenizer: str, seed: int, num_proc: int) -> list[str]:
    """`python -m shuangyu.data.prepare` with the data flags of a parsed training config (its DataArguments),
    writing the folder train_clm.py then finds up to date (the same inputs: train_clm prepares with these)."""
    cmd = ["python", "-m", "shuangyu.data.prepare", "--output_dir", data_dir(run), "--tokenizer_name", tokenizer]
    for flag, values in (("--files", data.train_files), ("--dataset", data.dataset_name), ("--exclude", data.exclude)):
        if values:
            cmd += [flag, *values]
    if data.validation_files:
        cmd += ["--validation_files", *data.validation_files]
    cmd += ["--text_column", data.text_column, "--block_size", str(data.block_size)]
    return cmd + ["--num_proc", str(num_proc), "--seed", str(seed)]


def evaluate_command(run: str, tasks: str, limit: int = 0) -> list[str]:
    cmd = ["python", "eval/run.py", f"{output_dir(run)}/final", "--tasks", tasks]
    return cmd + (["--limit", str(limit)] if limit else [])


def chat_command(run: str, prompt: str, max_new_tokens: int = 200) -> list[str]:
    """`python -m shuangyu.chat` on the run's final model: one reply to `prompt`, then exit."""
    cmd = ["python", "-m", "shuangyu.chat", f"{output_dir(run)}/final", "--prompt", prompt]
    return cmd + ["--max_new_tokens", str(max_new_tokens)]


def push_command(run: str, hub_model_id: str, private: bool = False) -> list[str]:
    cmd = ["python", "eval/push.py", f"{output_dir(run)}/final", "--hub_model_id", hub_model_id]
    return cmd + (["--private"] if private else [])


def supervise(
    cmd: list[str], deadline_s: float, cwd: str = str(REMOTE_REPO), poll_s: float = 10.0
) -> tuple[int, str | None]:
    """Run `cmd`; on SIGTERM or SIGINT (Modal's preemption notice) or at `deadline_s` seconds, pass SIGTERM on,
    which makes train_clm finish its step, save a checkpoint and exit 0. Returns its status and what stopped it."""
    print("$ " + shlex.join(cmd), flush=True)
    child = subprocess.Popen(cmd, cwd=cwd)
    started, stopped_by = time.monotonic(), None

    def stop(reason: str) -> None:
        nonlocal stopped_by
        if stopped_by is None and child.poll() is None:
            stopped_by = reason
            print(f"{PROG}: {reason}: asking training to save a checkpoint and stop", flush=True)
            child.send_signal(signal.SIGTERM)

    previous = None
    try:  # handlers can only be set from the main thread; elsewhere KeyboardInterrupt below still works
        previous = signal.signal(signal.SIGTERM, lambda *_: stop("SIGTERM"))
    except ValueError:
        pass
    try:
        while child.poll() is None:
            try:
                child.wait(timeout=poll_s)
            except subprocess.TimeoutExpired:
                if time.monotonic() - started > deadline_s:
                    stop("the attempt's time limit is near")
            except KeyboardInterrupt:
                stop("interrupted (preemption)")
        if stopped_by:
            child.wait(timeout=SHUTDOWN_GRACE_S)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return child.returncode, stopped_by


class AttemptStopped(RuntimeError):
    """Raised so that Modal's retries start the next attempt, which resumes from the latest checkpoint."""


def attempt_outcome(returncode: int, stopped_by: str | None) -> dict:
    """What a finished attempt means: done, a failure another attempt would repeat, or one to retry."""
    if returncode in FINAL_FAILURES:
        return {"returncode": returncode, "done": False, "reason": FINAL_FAILURES[returncode]}
    if returncode == 0 and stopped_by is None:
        return {"returncode": 0, "done": True, "reason": "finished"}
    reason = f"stopped ({stopped_by})" if stopped_by else f"exit status {returncode}"
    raise AttemptStopped(f"training {reason}; the next attempt resumes from the latest checkpoint")


def build_image(repo: Path = REPO):
    """CUDA torch first (from the PyTorch index), then requirements.txt (its `torch==2.13.0` is then satisfied),
    then this checkout, last so that code changes rebuild only that layer. Copied, not mounted: eval/run.py
    writes its task files inside the checkout."""
    ignore = [".git", ".venv", "outputs", "runs", "**/__pycache__", ".ruff_cache", ".pytest_cache", ".hypothesis"]
    return (
        modal.Image.debian_slim(python_version=PYTHON_VERSION)
        .pip_install(TORCH, index_url=TORCH_INDEX)
        .pip_install_from_requirements(str(repo / "requirements.txt"))
        .env({"PYTHONPATH": str(REMOTE_REPO), "TOKENIZERS_PARALLELISM": "false", "HF_HOME": str(DATA_MOUNT / "hf")})
        .add_local_dir(str(repo), str(REMOTE_REPO), copy=True, ignore=ignore)
    )


def run_checked(cmd: list[str]) -> int:
    print("$ " + shlex.join(cmd), flush=True)
    return subprocess.run(cmd, cwd=str(REMOTE_REPO)).returncode


if modal is not None:
    app = modal.App(APP_NAME)
    image = build_image()
    data_volume = modal.Volume.from_name(DATA_VOLUME, create_if_missing=True)
    runs_volume = modal.Volume.from_name(RUNS_VOLUME, create_if_missing=True)
    volumes = {str(DATA_MOUNT): data_volume, str(RUNS_MOUNT): runs_volume}
    # your local HF_TOKEN, if set, reaches `push` and `train` (for --push_to_hub) as an ephemeral Modal secret
    hub_secret = modal.Secret.from_dict({"HF_TOKEN": os.environ.get("HF_TOKEN")})

    @app.function(image=image, volumes=volumes, cpu=8.0, memory=32768, timeout=ATTEMPT_TIMEOUT_S)
    def prepare(config: str, run: str = "", tokenizer: str = str(REMOTE_TOKENIZER), args: str = "") -> int:
        """Tokenise and pack the config's data on CPUs into the data Volume, where training finds it."""
        from shuangyu.training.arguments import parse_args

        os.chdir(REMOTE_REPO)  # the config's paths are relative to the checkout, as on your machine
        name = run_name(config, run)
        parsed = parse_args(["--config", config, "--output_dir", output_dir(name), *shlex.split(args)])
        cmd = prepare_command(parsed.data, name, tokenizer, parsed.train.seed, os.cpu_count() or 8)
        status = run_checked(cmd)
        data_volume.commit()
        return status

    @app.function(
        image=image,
        volumes=volumes,
        gpu="H100",  # replaced by --gpu through with_options
        timeout=ATTEMPT_TIMEOUT_S,
        retries=modal.Retries(max_retries=MAX_RETRIES, backoff_coefficient=1.0, initial_delay=30.0),
        secrets=[hub_secret],
    )
    def train(cmd: list[str]) -> dict:
        """One attempt: train until done, preempted, or near the time limit; commit what was saved."""
        try:
            returncode, stopped_by = supervise(cmd, ATTEMPT_TIMEOUT_S - STOP_BEFORE_TIMEOUT_S)
        finally:
            runs_volume.commit()
            data_volume.commit()
        return attempt_outcome(returncode, stopped_by)

    @app.function(image=image, volumes=volumes, gpu="L4", timeout=4 * 3600)
    def evaluate(run: str, tasks: str = "arc_easy_local,xcopa_zh_local", limit: int = 0) -> int:
        """eval/run.py on RUN's final model; results and the updated model card stay in the runs Volume."""
        status = run_checked(evaluate_command(run_name("", run), tasks, limit))
        runs_volume.commit()
        return status

    @app.function(image=image, volumes=volumes, gpu="L4", timeout=1800)
    def chat(run: str, prompt: str, max_new_tokens: int = 200) -> int:
        return run_checked(chat_command(run_name("", run), prompt, max_new_tokens))

    @app.function(image=image, volumes=volumes, timeout=3600, secrets=[hub_secret])
    def push(run: str, hub_model_id: str, private: bool = False) -> int:
        return run_checked(push_command(run_name("", run), hub_model_id, private))

    @app.local_entrypoint()
    def main(
        config: str,
        gpu: str = "A10G",
        run: str = "",
        tokenizer: str = str(REMOTE_TOKENIZER),
        args: str = "",
        prepare_on_cpu: bool = True,
        dry_run: bool = False,
    ):
        """Train CONFIG on GPU (TYPE or TYPE:COUNT) into /runs/RUN (default: the config's name)."""
        try:
            kind, count = parse_gpu(gpu)
            name, remote = run_name(config, run), remote_config(config)
        except LaunchError as err:
            print(f"{PROG}: error: {err}")
            raise SystemExit(2) from None
        cmd = train_command(remote, count, name, tokenizer, args)
        print(f"run {name} on {gpu_argument(kind, count)}: " + shlex.join(cmd))
        if dry_run:
            return
        if prepare_on_cpu and prepare.remote(remote, name, tokenizer, args) != 0:
            raise SystemExit(2)
        outcome = train.with_options(gpu=gpu_argument(kind, count)).remote(cmd)
        print(f"{name}: {outcome['reason']} (exit status {outcome['returncode']}); outputs in {RUNS_VOLUME}:/{name}")
        if not outcome["done"]:
            raise SystemExit(outcome["returncode"])


if __name__ == "__main__":
    # Modal's CLI imports this file and calls the app; run by python it would define the app and do nothing
    if modal is None:
        print(
            f"{PROG}: error: modal is not installed: pip install -r requirements-cloud.txt && modal setup",
            file=sys.stderr,
        )
    else:
        print(
            f"{PROG}: error: run it with Modal's CLI: modal run cloud/modal_app.py --config CONFIG --gpu A10G",
            file=sys.stderr,
        )
    raise SystemExit(2)
