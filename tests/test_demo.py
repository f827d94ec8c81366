"""The one-command demo (python -m shuangyu.demo): the whole flow end to end, shortened (--fast), every artifact
checked; a second run skips what is done."""

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_demo(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "shuangyu.demo", *args], capture_output=True, cwd=REPO, env=env, timeout=timeout
    )
    # decoded here, not with text=True: that turns carriage returns (a progress bar's redraws) into newlines
    done.stdout, done.stderr = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    return done


def test_asking_for_a_gpu_without_one_is_one_line():
    done = run_demo("--device", "gpu", "--output_dir", "/nonexistent/demo", timeout=120)
    if "cuda" in done.stdout.lower() and done.returncode == 0:  # pragma: no cover - a GPU machine
        pytest.skip("this machine has a GPU")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "python -m shuangyu.demo: error: --device gpu: this machine's torch sees no CUDA GPU; use --device cpu (or auto)"
    ]


@pytest.mark.parametrize("device", ["cpu", "cpu-amx", "gpu"])
def test_each_recipe_names_configs_train_clm_takes(device, tmp_path):
    from shuangyu.demo import RECIPES
    from shuangyu.training.arguments import parse_args

    recipe = RECIPES[device]
    assert (REPO / recipe.accelerate_config).is_file()
    pretrain = parse_args(["--config", str(REPO / recipe.pretrain_config), "--output_dir", str(tmp_path / "p")])
    sft = parse_args(["--config", str(REPO / recipe.sft_config), "--output_dir", str(tmp_path / "s")])
    assert sft.sft.sft and not pretrain.sft.sft
    for source in [*pretrain.data.train_files, *pretrain.data.validation_files, *sft.data.train_files]:
        first_glob = source.split("=", 1)[-1].split(",")[0].rsplit(":", 1)[0]
        assert list(REPO.glob(first_glob)), source  # the configs name the shared corpus relative to the checkout


@pytest.mark.parametrize("device", ["cpu", "cpu-amx", "gpu"])
def test_the_tokenizer_learns_from_the_text_the_model_pretrains_on(device, tmp_path):
    from shuangyu.demo import CORPUS, RECIPES, tokenizer_command
    from shuangyu.training.arguments import parse_args

    recipe = RECIPES[device]
    cmd = tokenizer_command(recipe, tmp_path / "tokenizer", CORPUS)
    pretrain = parse_args(["--config", str(REPO / recipe.pretrain_config), "--output_dir", str(tmp_path / "p")])

    def values(flag: str) -> list[str]:
        if flag not in cmd:
            return []
        start = cmd.index(flag) + 1
        end = next((i for i in range(start, len(cmd)) if cmd[i].startswith("--")), len(cmd))
        return cmd[start:end]

    assert values("--files") == pretrain.data.train_files  # the same files in the same shares
    assert values("--exclude") == (pretrain.data.exclude or [])
    assert values("--vocab_size") == [str(recipe.tokenizer_vocab)]


def test_the_cpu_recipe_trains_in_bf16_compiled_only_with_amx_and_a_compiler(monkeypatch, tmp_path):
    from shuangyu import demo
    from shuangyu.errors import UsageError
    from shuangyu.training.arguments import parse_args

    def machine(amx: bool, compiler: str | None):
        monkeypatch.setattr(demo, "cpu_has_amx_bf16", lambda: amx)
        monkeypatch.setattr(demo, "cpp_compiler", lambda: compiler)

    machine(True, "/usr/bin/g++")
    assert demo.pick_recipe("cpu", "auto")[0] == "cpu-amx"
    assert demo.pick_recipe("cpu", "off") == ("cpu", "fp32 (--amx off)")
    assert demo.pick_recipe("gpu", "auto") == ("gpu", "")
    machine(False, "/usr/bin/g++")
    assert demo.pick_recipe("cpu", "auto") == (
        "cpu",
        "fp32: this CPU has no AMX bf16 (bf16 matmuls would be slower than fp32)",
    )
    machine(True, None)
    key, why = demo.pick_recipe("cpu", "auto")
    assert key == "cpu" and "no C++ compiler" in why
    with pytest.raises(UsageError, match="^--amx on: no C\\+\\+ compiler"):
        demo.pick_recipe("cpu", "on")
    # the two CPU recipes differ in precision, compiling and steps only: the same model, data and schedule shape
    plain, amx = (
        parse_args(["--config", str(REPO / demo.RECIPES[key].pretrain_config), "--output_dir", str(tmp_path)])
        for key in ("cpu", "cpu-amx")
    )
    assert (amx.train.mixed_precision, amx.train.compile, plain.train.mixed_precision, plain.train.compile) == (
        "bf16",
        True,
        "auto",
        False,
    )
    assert amx.train.max_steps == 1000 and plain.train.max_steps == 800
    assert amx.data == plain.data and amx.model == plain.model and amx.optim == plain.optim


@pytest.fixture
def dry_demo(monkeypatch, tmp_path):
    """demo.main with its steps recorded, not run (the end-to-end test runs them): returns the call and the list
    of the commands it would have run."""
    from shuangyu import demo

    ran: list[list[str]] = []
    report = tmp_path / "report.md"
    report.write_text("# Report\n")
    monkeypatch.chdir(REPO)  # main() goes there; put back after the test
    monkeypatch.setattr(demo.Steps, "run", lambda self, title, cmd, *args, **kwargs: ran.append(cmd))
    monkeypatch.setattr(demo, "build_report", lambda *args, **kwargs: report)
    monkeypatch.setattr(demo, "bars_only_on_a_terminal", lambda: False)
    return lambda *args: demo.main(list(args)), ran


def value(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


@pytest.mark.parametrize("fast", [True, False])
def test_each_printed_command_has_each_flag_once_and_the_time_fits_the_run(dry_demo, fast, tmp_path, capsys):
    main, ran = dry_demo
    assert main(*(["--fast"] if fast else []), "--device", "cpu", "--amx", "off", "--output_dir", str(tmp_path)) == 0
    tokenizer, pretrain, evaluation, sft = ran
    for cmd in ran:
        flags = [part for part in cmd if part.startswith("--")]
        assert len(flags) == len(set(flags)), cmd
    assert (value(tokenizer, "--max_bytes"), value(evaluation, "--limit")) == (
        ("2MB", "5") if fast else ("20MB", "100")
    )
    assert ("--max_steps" in pretrain and "--max_steps" in sft) == fast
    first = capsys.readouterr().out.splitlines()[0]
    assert ("--fast: a few minutes" in first, "8-25 minutes" in first) == (fast, not fast), first


def test_a_folder_of_a_demo_run_with_other_settings_is_refused(dry_demo, monkeypatch, tmp_path, capsys):
    from shuangyu import demo

    main, ran = dry_demo
    out = tmp_path / "demo"
    assert main("--fast", "--device", "cpu", "--amx", "off", "--output_dir", str(out)) == 0
    assert json.loads((out / "demo.json").read_text()) == {"recipe": "cpu", "fast": True}
    (out / "tokenizer").mkdir()  # a step done (the stubbed steps leave nothing)
    capsys.readouterr()
    monkeypatch.setattr(demo, "cpu_has_amx_bf16", lambda: True)
    monkeypatch.setattr(demo, "cpp_compiler", lambda: "/usr/bin/g++")
    for flags, asked in (([], "--device cpu --amx off"), (["--fast", "--amx", "on"], "--device cpu --amx on --fast")):
        assert main("--device", "cpu", "--amx", "off", *flags, "--output_dir", str(out)) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"python -m shuangyu.demo: error: --output_dir {out} holds a demo run with --device cpu --amx off --fast, "
            f"not {asked}: run it with --device cpu --amx off --fast to resume it, or give another --output_dir"
        ]
    assert len(ran) == 4  # the refused runs ran nothing
    assert sorted(path.name for path in out.iterdir()) == ["demo.json", "tokenizer"]  # nothing half written
    # the same flags go on (here: the stubbed steps again)
    assert main("--fast", "--device", "cpu", "--amx", "off", "--output_dir", str(out)) == 0
    assert len(ran) == 8


@pytest.mark.slow(minutes=6)
def test_the_demo_runs_every_step_and_leaves_every_artifact(tmp_path):
    # fp32 on every machine (--amx off): the AMX recipe's training is train_clm.py's compiled bf16 test
    out = tmp_path / "demo"
    done = run_demo("--fast", "--device", "cpu", "--amx", "off", "--output_dir", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = done.stdout
    for step in ("[1/6] tokenizer", "[2/6] data + pretraining", "[3/6] evaluation", "[4/6] instruction tuning",
                 "[5/6] report", "[6/6] talk to it"):  # fmt: skip
        assert step in log, step
    assert "recipe: CPU" in log
    # every artifact exists and parses
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoTokenizer.from_pretrained(out / "tokenizer")
    for final in (out / "pretrain" / "final", out / "sft" / "final"):
        AutoModelForCausalLM.from_pretrained(final, trust_remote_code=True)
    results = json.loads((out / "pretrain" / "final" / "eval_results.json").read_text())
    tasks = {row["task"] for row in results["table"]}
    assert {"arc_easy_local", "xcopa_zh_local"} <= tasks and results["limit"] == 5
    assert all(row["random_guess"] is not None for row in results["table"])
    assert set(results["held_out"]) == {"zh", "en"}
    report = (out / "pretrain" / "report.md").read_text()
    for heading in ("## Environment (recorded by the run)", "## Tokenizer", "### Recipe", "## Loss curves",
                    "## Evaluation", "## Samples", "## Instruction tuning", "### Samples (replies", "## Talk to it"):  # fmt: skip
        assert heading in report, heading
    assert "| GPT-2 |" in report and "| MiniMind |" in report and "xcopa_zh_local" in report
    assert (out / "pretrain" / "loss.png").read_bytes().startswith(PNG_MAGIC)
    assert "](loss.png)" in (out / "pretrain" / "final" / "README.md").read_text()
    assert report.strip() in log  # printed as well as written
    tail = log.strip().splitlines()[-4:]
    assert any(line.strip() == f"python -m shuangyu.chat {out / 'sft' / 'final'}" for line in tail), tail
    assert "\r" not in log + done.stderr  # a log file gets plain lines, no progress bars
    assert "Removed shared tensor" not in log + done.stderr
    assert "note: --warmup_steps" not in log + done.stderr  # the demo's own flags need no advice
    # no framework warning a user cannot act on (accelerate's about a busy port comes from tests launched side by side)
    noise = [line for line in (log + done.stderr).splitlines() if "Warning" in line and "already in use" not in line]
    assert not noise, noise

    # the same command again: every step is done, nothing is trained twice
    again = run_demo("--fast", "--device", "cpu", "--amx", "off", "--output_dir", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done already") == 4
    # other settings: refused in one line, not reported as this run
    other = run_demo("--device", "cpu", "--amx", "off", "--output_dir", str(out))
    assert other.returncode == 2 and "holds a demo run with --device cpu --amx off --fast" in other.stderr

    # a step that did not finish (here: its final model gone) resumes from its latest checkpoint
    shutil.rmtree(out / "sft" / "final")
    resumed = run_demo("--fast", "--device", "cpu", "--amx", "off", "--output_dir", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("done already") == 3
    assert f"resumed from {out / 'sft' / 'checkpoints' / 'step-00000010'}" in resumed.stdout
    assert (out / "sft" / "final" / "config.json").is_file()


DEMO = "python -m shuangyu.demo"


def test_a_failing_training_step_is_its_own_line_and_the_demos(tmp_path):
    """No launcher report (torch's E1204 line, a ChildFailedError traceback, a `train_clm.py FAILED` block) after
    the step's one-line error: the demo's line says the rest."""
    out = tmp_path / "demo"
    (out / "tokenizer").mkdir(parents=True)
    (out / "tokenizer" / "tokenizer.json").write_text("junk")  # counts as done: the pretraining step fails on it
    done = run_demo("--fast", "--device", "cpu", "--amx", "off", "--output_dir", str(out), timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("train_clm.py: error: --tokenizer_name"), lines
    assert lines[1] == f"{DEMO}: error: step 2 (data + pretraining) failed with exit 1; fix it and run the demo again"


def test_the_launchers_report_is_dropped_and_a_training_processs_traceback_kept():
    from shuangyu.launcher_report import LauncherReportFilter

    worker = (
        "Traceback (most recent call last):\n"
        '  File "/repo/train_clm.py", line 9, in <module>\n'
        "    main()\n"
        "ZeroDivisionError: division by zero\n"
    )
    launcher = (
        "W1204 17:00:07.720000 6357 site-packages/torch/distributed/elastic/multiprocessing/api.py:1028] Sending "
        "process 6401 closing signal SIGTERM\n"
        "E1204 17:00:07.736000 6357 site-packages/torch/distributed/elastic/multiprocessing/api.py:1002] failed "
        "(exitcode: 1) local_rank: 0 (pid: 6400) of binary: /usr/bin/python\n"
        "Traceback (most recent call last):\n"
        '  File "/site-packages/accelerate/commands/launch.py", line 1029, in multi_gpu_launcher\n'
        "    distrib_run.run(args)\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
        "============================================================\n"
        "train_clm.py FAILED\n"
        "------------------------------------------------------------\n"
        "  exitcode  : 1 (pid: 6400) \n"
        "============================================================\n"
    )
    bar = "\rtraining:  50%|#####     | 5/10"
    written = []
    report = LauncherReportFilter(written.append)
    data = (bar + "\n" + worker + launcher + "done\n").encode()
    for start in range(0, len(data), 5):  # as a pipe hands it over: in pieces
        report.feed(data[start : start + 5])
    report.close()
    assert b"".join(written).decode() == bar + "\n" + worker + "done\n"
    shown = []
    LauncherReportFilter(shown.append).feed(bar.encode())
    assert b"".join(shown).decode() == bar  # a progress bar shows at once, not at the end of its line


def start_demo(out: Path, log: Path) -> subprocess.Popen:
    """The demo in its own process group, as a terminal runs a command, with its output in files."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "shuangyu.demo", "--fast", "--device", "cpu", "--amx", "off", "--output_dir", str(out)],
        cwd=REPO,
        env=env,
        stdout=open(log.with_suffix(".out"), "wb"),
        stderr=open(log.with_suffix(".err"), "wb"),
        start_new_session=True,
    )


def wait_for(path: Path, process: subprocess.Popen, timeout: int = 600) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, f"the demo ended before {path} was written"
        assert time.time() < deadline, f"no {path}"
        time.sleep(0.2)


@pytest.mark.slow(minutes=5)
def test_ctrl_c_and_sigterm_stop_a_training_step_with_one_line_and_leave_nothing_running(tmp_path):
    import psutil

    out = tmp_path / "demo"
    # Ctrl-C at the terminal: SIGINT to the whole process group
    demo = start_demo(out, tmp_path / "ctrl-c")
    wait_for(out / "pretrain" / "run_args.json", demo)
    time.sleep(3)
    os.killpg(demo.pid, signal.SIGINT)
    assert demo.wait(timeout=300) == 130
    stderr = (tmp_path / "ctrl-c.err").read_text()
    lines = stderr.strip().splitlines()
    assert lines[-1] == f"{DEMO}: interrupted; run it again to resume where it stopped", lines
    assert "Traceback" not in stderr and "torch/distributed" not in stderr and "FAILED" not in stderr, stderr

    assert_the_step_saved(stderr + (tmp_path / "ctrl-c.out").read_text(), out / "pretrain", "SIGINT")

    # SIGTERM to the demo alone (kill PID, a job scheduler), twice as a scheduler's may reach it: passed on to the
    # step once, which saves and stops before the demo does
    demo = start_demo(out, tmp_path / "sigterm")
    wait_for(out / "sft" / "run_args.json", demo)
    time.sleep(3)
    demo.send_signal(signal.SIGTERM)
    time.sleep(0.01)
    demo.send_signal(signal.SIGTERM)
    assert demo.wait(timeout=300) == 143
    stderr = (tmp_path / "sigterm.err").read_text()
    lines = stderr.strip().splitlines()
    assert lines[-1] == f"{DEMO}: stopped by SIGTERM; run it again to resume where it stopped", lines
    assert "Traceback" not in stderr and "torch/distributed" not in stderr, stderr
    left = [
        p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"]) if str(out) in " ".join(p.info["cmdline"] or [])
    ]
    assert not left, "the step's processes outlived the demo"
    assert_the_step_saved(stderr + (tmp_path / "sigterm.out").read_text(), out / "sft", "SIGTERM")


@pytest.mark.slow(minutes=3)
@pytest.mark.parametrize("output", ["terminal", "tee"])
def test_a_closed_terminal_stops_the_training_step_after_it_saves(tmp_path, terminal_window, output):
    """Closing the demo's terminal window passed the stop on, but the step's writes to the closed terminal (or to
    `| tee`, which the window's SIGHUP ends too) then failed and it could end before it saved (the README said to
    expect the steps since the last checkpoint lost)."""
    import psutil

    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "shuangyu.demo", "--fast", "--device", "cpu", "--amx", "off", "--output_dir", str(out)]
    if output == "tee":  # a shell without job control: the demo and tee in the terminal's foreground group
        cmd = ["sh", "-c", f"{shlex.join(cmd)} 2>&1 | tee {shlex.quote(str(tmp_path / 'tee.log'))}"]
    window = terminal_window(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wait_for(out / "pretrain" / "checkpoints" / "step-00000010" / "checkpoint.json", window.process)
    window.close()

    def left() -> list[int]:
        processes = psutil.process_iter(["pid", "cmdline"])
        return [p.info["pid"] for p in processes if str(out) in " ".join(p.info["cmdline"] or [])]

    deadline = time.time() + 300
    while left() and time.time() < deadline:  # the demo, not only the shell that started it
        time.sleep(0.5)
    assert not left(), "the demo or its step's processes did not stop"
    # the step's processes agree on a stop at their next vote, step 20 of --fast's 20: it finishes and saves its model
    assert (out / "pretrain" / "final" / "config.json").is_file(), window.shown()[-3000:]
    assert not (out / "pretrain" / "final" / "eval_results.json").exists()  # and the demo stopped there


def assert_the_step_saved(output: str, run: Path, stopped_by: str) -> None:
    """The step's own word on how it stopped, and its folder agrees: a checkpoint at the step it names, its final
    model (the signal came at its last step), or nothing to save (the signal came while it was being set up)."""
    import re

    stopped = re.search(rf"^stopped by {stopped_by} at step (\d+);", output, re.M)
    if stopped:
        assert (run / "checkpoints" / f"step-{int(stopped[1]):08d}" / "checkpoint.json").is_file(), output
    elif re.search(r"^done: \d+ steps", output, re.M):
        assert (run / "final" / "config.json").is_file(), output
    else:
        # Ctrl-C in the set-up is a KeyboardInterrupt ("interrupted"); a SIGTERM says so (an "interrupted" after a
        # SIGTERM is a second signal that stopped it at once)
        said = "interrupted" if stopped_by == "SIGINT" else f"stopped by {stopped_by} before training"
        set_up = rf"^train_clm.py: {said}; no step was saved"
        assert re.search(set_up, output, re.M) and not list(run.glob("checkpoints/step-*/checkpoint.json")), output


# a stand-in for a training step under `accelerate launch`: a launcher process and one worker that stops as
# train_clm.py does (training/stopping.py), saying whether it saved; the demo's Steps.run runs it
STAND_IN_WORKER = """
import os, sys, time
from shuangyu.training.stopping import StopRequest, stop_with_the_launcher
stop = StopRequest()
stop_with_the_launcher()  # as under accelerate launch (ACCELERATE_MIXED_PRECISION is set)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
try:
    for _ in range(1200):
        time.sleep(0.05)
        if stop.requested:
            time.sleep(2)  # saving a checkpoint
            print("worker: stopped by", stop.requested, "and saved", flush=True)
            sys.exit(0)
except KeyboardInterrupt:
    print("worker: stopped at once, nothing saved", flush=True)
    sys.exit(130)
"""
STAND_IN_DEMO = """
import sys
from shuangyu.demo import Steps, StoppedBySignal
launcher = [sys.executable, "-c", "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"]
try:
    Steps(1).run("training", [*launcher, sys.executable, *sys.argv[1:], "accelerate.commands.launch"])
except StoppedBySignal as stop:
    print("demo: stopped by", stop, flush=True)
"""


@pytest.fixture
def stand_in_demo(tmp_path: Path, request):
    """(the stand-in demo, its worker's pid); both are ended after the test, whatever it left behind. With the
    parameter "nohup" it starts with SIGHUP ignored, as `nohup` starts a command."""
    (tmp_path / "worker.py").write_text(STAND_IN_WORKER)
    (tmp_path / "demo.py").write_text(STAND_IN_DEMO)
    pid_file = tmp_path / "worker.pid"
    nohup = getattr(request, "param", None) == "nohup"
    demo = subprocess.Popen(
        [sys.executable, str(tmp_path / "demo.py"), str(tmp_path / "worker.py"), str(pid_file)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "ACCELERATE_MIXED_PRECISION": "no"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # under nohup SIGHUP is ignored; else heard, even where the tests run under nohup
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN if nohup else signal.SIG_DFL),
    )
    try:
        wait_for(pid_file, demo, timeout=120)
        yield demo, int(pid_file.read_text())
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)  # the demo (stopped by Ctrl-Z, perhaps), not its step's session
            demo.communicate()
        if pid_file.exists():
            import psutil

            with contextlib.suppress(psutil.NoSuchProcess):
                worker = psutil.Process(int(pid_file.read_text()))
                if str(tmp_path / "worker.py") in worker.cmdline():  # still ours, not a new process with its pid
                    worker.kill()


@pytest.mark.parametrize(
    "how, said",
    [
        # a closed terminal can send SIGHUP twice: one stop, passed on once
        ("two SIGHUPs", ["worker: stopped by SIGTERM and saved", "demo: stopped by SIGHUP"]),
        # Slurm's scancel or time limit: SIGTERM to every process of the job, the worker's included
        ("a scheduler's SIGTERM", ["worker: stopped by SIGTERM and saved", "demo: stopped by SIGTERM"]),
        # the user's "stop now" is passed on
        ("two Ctrl-Cs", ["worker: stopped at once, nothing saved", "demo: stopped by SIGINT"]),
    ],
)
def test_a_stop_that_reaches_the_demo_twice_still_saves_but_a_second_ctrl_c_stops_at_once(stand_in_demo, how, said):
    demo, worker = stand_in_demo
    if how == "two SIGHUPs":
        demo.send_signal(signal.SIGHUP)
        time.sleep(0.01)
        demo.send_signal(signal.SIGHUP)
    elif how == "a scheduler's SIGTERM":
        os.kill(worker, signal.SIGTERM)
        demo.send_signal(signal.SIGTERM)
    else:
        demo.send_signal(signal.SIGINT)
        time.sleep(0.5)  # the first has reached the worker
        demo.send_signal(signal.SIGINT)
    output, _ = demo.communicate(timeout=60)
    assert [line for line in output.splitlines() if line.startswith(("worker:", "demo:"))] == said, output


@pytest.mark.parametrize("stand_in_demo", ["nohup"], indirect=True)
def test_under_nohup_a_closed_terminal_leaves_the_demo_and_its_step_running(stand_in_demo):
    """`nohup make demo &` (the README's advice for a long run): the terminal's SIGHUP stopped the step all the same,
    since the demo's own handler replaced nohup's "ignore"."""
    demo, worker = stand_in_demo
    demo.send_signal(signal.SIGHUP)  # what the shell sends its jobs when its terminal is closed
    time.sleep(3)
    assert demo.poll() is None
    demo.send_signal(signal.SIGTERM)
    output, _ = demo.communicate(timeout=60)
    assert [line for line in output.splitlines() if line.startswith(("worker:", "demo:"))] == [
        "worker: stopped by SIGTERM and saved",
        "demo: stopped by SIGTERM",
    ], output


def test_ctrl_z_stops_the_step_with_the_demo_and_fg_continues_both(stand_in_demo):
    import psutil

    demo, worker = stand_in_demo

    def settles(pid: int, stopped: bool) -> bool:
        deadline = time.time() + 10
        while (psutil.Process(pid).status() == psutil.STATUS_STOPPED) != stopped and time.time() < deadline:
            time.sleep(0.05)
        return (psutil.Process(pid).status() == psutil.STATUS_STOPPED) == stopped

    demo.send_signal(signal.SIGTSTP)
    assert settles(demo.pid, stopped=True) and settles(worker, stopped=True)
    demo.send_signal(signal.SIGCONT)  # what `fg` sends
    assert settles(demo.pid, stopped=False) and settles(worker, stopped=False)
    demo.send_signal(signal.SIGTERM)
    output, _ = demo.communicate(timeout=60)
    assert "worker: stopped by SIGTERM and saved" in output, output


def test_a_demo_killed_outright_has_its_step_stop_and_save(stand_in_demo):
    """kill -9 or the out-of-memory killer: the demo cannot pass a signal on; Linux sends its launcher SIGTERM."""
    demo, worker = stand_in_demo
    demo.kill()
    output, _ = demo.communicate(timeout=60)  # its stdout closes when the step's last process has exited
    assert "worker: stopped by SIGTERM and saved" in output, output


def test_a_step_that_cannot_be_started_is_one_line_and_leaves_no_file_open(tmp_path):
    from shuangyu import demo
    from shuangyu.errors import UsageError

    open_before = len(os.listdir("/proc/self/fd"))
    missing = str(tmp_path / "no-python")
    with pytest.raises(UsageError, match=r"^step 1 \(training\) could not be started \(No such file or directory: "):
        demo.Steps(1).run("training", [missing, "-m", "accelerate.commands.launch", "train_clm.py"])
    assert len(os.listdir("/proc/self/fd")) == open_before


def test_a_terminal_without_a_free_pseudo_terminal_gets_a_pipe(monkeypatch):
    import pty
    import stat

    from shuangyu import launcher_report

    class Terminal:
        def isatty(self):
            return True

    def no_free_pty():
        raise OSError(5, "out of pseudo-terminals")

    monkeypatch.setattr(launcher_report.sys, "stderr", Terminal())
    monkeypatch.setattr(pty, "openpty", no_free_pty)
    read_end, write_end = launcher_report.open_stderr_for_a_step()
    try:
        assert stat.S_ISFIFO(os.fstat(read_end).st_mode) and stat.S_ISFIFO(os.fstat(write_end).st_mode)
    finally:
        os.close(read_end)
        os.close(write_end)
