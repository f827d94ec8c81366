"""Schedules, metrics and checkpoints: the pieces train_clm.py is built from."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from transformers import LlamaConfig, LlamaForCausalLM

from shuangyu.evaluation.bits_per_byte import HeldOutLoss, bits_per_byte
from shuangyu.training.accelerator import sync_only_state_under_ddp
from shuangyu.training.arguments import ScheduleArguments
from shuangyu.training.checkpoint import (
    MARKER,
    complete_checkpoints,
    read_checkpoint_info,
    resolve_resume,
    save_checkpoint,
)
from shuangyu.training.metrics import Throughput, device_peak_flops, flops_per_token
from shuangyu.training.schedule import build_scheduler, warmup_note
from shuangyu.training.stopping import StopRequest


def lrs(name, steps=100, warmup=10, **kw):
    """The rate each step trained at, as the loop steps them: lrs(...)[k - 1] is step k's."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, ScheduleArguments(lr_scheduler_type=name, warmup_steps=warmup, **kw), steps)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize(
    "name, rates",
    [
        ("cosine", [0.5, 1.0, 0.2 + 0.8 * (2 + 2**0.5) / 4, 0.6, 0.2 + 0.8 * (2 - 2**0.5) / 4, 0.2]),
        ("linear", [0.5, 1.0, 0.8, 0.6, 0.4, 0.2]),
        ("warmup_stable_decay", [0.5, 1.0, 1.0, 0.8, 0.4, 0.2]),
        ("constant_with_warmup", [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_every_schedule_warms_up_from_its_first_step_and_ends_at_the_floor_on_its_last(name, rates):
    """Step k of a 2-step warmup trains at k/2 of the peak and the last step at --min_lr_ratio: cosine trained step 1
    at 0, linear and warmup_stable_decay started the warmup at the floor (0.2) and linear ended a step early (0.4)."""
    floor = {} if name == "constant_with_warmup" else {"min_lr_ratio": 0.2}
    assert lrs(name, steps=6, warmup=2, decay_fraction=0.5, **floor) == [pytest.approx(r) for r in rates]


@pytest.mark.parametrize("name", ["cosine", "linear", "warmup_stable_decay", "constant_with_warmup"])
def test_a_warmup_as_long_as_the_run_trains_no_step_at_zero(name):
    """--max_steps 1 --warmup_steps 1 trained its one step at 0 (cosine) or at the floor (linear, wsd)."""
    assert lrs(name, steps=1, warmup=1) == [1.0]
    assert lrs(name, steps=3, warmup=3) == [pytest.approx(1 / 3), pytest.approx(2 / 3), 1.0]
    assert lrs(name, steps=2, warmup=4) == [0.25, 0.5]


@pytest.mark.parametrize(
    "name, rates",
    [
        ("cosine", [1.0, *(0.2 + 0.4 * (1 + math.cos(math.pi * k / 5)) for k in range(1, 6))]),
        ("linear", [1.0, 0.84, 0.68, 0.52, 0.36, 0.2]),
        ("warmup_stable_decay", [1.0, 1.0, 1.0, 0.8, 0.4, 0.2]),
        ("constant_with_warmup", [1.0] * 6),
    ],
)
def test_no_warmup_trains_step_1_at_the_peak_and_the_last_at_the_floor(name, rates):
    """--warmup_steps 0 trained step 1 one step into the decay (cosine 0.946, linear 0.867, never the peak) and a
    1-step run only at the floor (0.2): warmup 0 is now warmup 1."""
    floor = {} if name == "constant_with_warmup" else {"min_lr_ratio": 0.2}
    assert lrs(name, steps=6, warmup=0, decay_fraction=0.5, **floor) == [pytest.approx(r) for r in rates]
    assert lrs(name, steps=6, warmup=0, decay_fraction=0.5, **floor) == lrs(name, 6, 1, decay_fraction=0.5, **floor)
    assert lrs(name, steps=1, warmup=0, **floor) == [1.0]


def test_a_floor_of_zero_is_reached_only_at_the_last_step():
    for name in ("cosine", "linear", "warmup_stable_decay"):
        lr = lrs(name, steps=5, warmup=0, min_lr_ratio=0.0)
        assert lr[-1] == pytest.approx(0, abs=1e-12) and min(lr[:-1]) > 0.05, (name, lr)


def test_cosine_warms_up_then_decays_to_the_floor():
    lr = lrs("cosine", min_lr_ratio=0.1)
    assert lr[0] == pytest.approx(0.1) and lr[4] == pytest.approx(0.5) and lr[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lr[9:], lr[10:], strict=False))
    assert lr[54] == pytest.approx(0.1 + 0.9 * 0.5) and lr[-1] == pytest.approx(0.1)


def test_warmup_stable_decay_holds_then_decays_over_the_last_fifth():
    lr = lrs("warmup_stable_decay", decay_fraction=0.2, min_lr_ratio=0.0)
    assert lr[9:80] == [pytest.approx(1.0)] * 71  # steps 10 to 80
    assert lr[89] == pytest.approx(0.5) and lr[-1] == 0


def test_warmup_stable_decay_decays_after_a_long_warmup_at_most():
    """A decay_fraction longer than what follows the warmup decays from the peak over the steps left."""
    assert lrs("warmup_stable_decay", steps=8, warmup=6, decay_fraction=0.5, min_lr_ratio=0.0) == [
        *[pytest.approx(k / 6) for k in range(1, 7)],
        pytest.approx(0.5),
        0,
    ]


def test_linear_decays_to_the_floor():
    lr = lrs("linear", min_lr_ratio=0.2)
    assert lr[9] == pytest.approx(1.0) and lr[54] == pytest.approx(0.2 + 0.8 * 0.5)
    assert all(a >= b for a, b in zip(lr[9:], lr[10:], strict=False))
    assert lr[-1] == pytest.approx(0.2)


def test_a_warmup_as_long_as_the_run_is_noted():
    """A short trial of a long run's config: 8 steps of a 20-step warmup never reach the peak, and say so."""
    lr = lrs("cosine", steps=8, warmup=20)
    assert max(lr) == pytest.approx(0.4)
    note = warmup_note(ScheduleArguments(warmup_steps=20), 8, 1e-2)
    assert note == (
        "note: --warmup_steps 20 is not below the run's 8 steps: the learning rate never reaches its peak (0.01) "
        "nor decays; give a smaller --warmup_steps for a short run"
    )
    assert warmup_note(ScheduleArguments(warmup_steps=8), 8, 1e-2) == (
        "note: --warmup_steps 8 is not below the run's 8 steps: the learning rate reaches its peak (0.01) only at "
        "the last step and never decays; give a smaller --warmup_steps for a short run"
    )
    assert warmup_note(ScheduleArguments(warmup_steps=7), 8, 1e-2) is None


def test_min_lr_ratio_with_a_constant_schedule_is_refused():
    from shuangyu.errors import UsageError
    from shuangyu.training.arguments import parse_args

    flags = ["--output_dir", "unused", "--lr_scheduler_type", "constant_with_warmup"]
    assert parse_args(flags).schedule.min_lr_ratio == 0.1  # the default is no request
    with pytest.raises(UsageError, match=r"^--min_lr_ratio 0.0: --lr_scheduler_type constant_with_warmup never"):
        parse_args([*flags, "--min_lr_ratio", "0"])


def test_unknown_schedule():
    with pytest.raises(ValueError, match="--lr_scheduler_type"):
        lrs("bumpy")


def tiny_llama(tie: bool):
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("tie", [False, True])
def test_flops_per_token_counts_every_matmul_once(tie):
    model = tiny_llama(tie)
    block = 2 * (32 * 32 + 2 * 32 * 16 + 32 * 32 + 3 * 32 * 64)  # q, k and v (GQA), o, gate/up/down
    head = 100 * 32
    assert flops_per_token(model, seq_len=8) == 6 * (block + head) + 12 * 2 * 4 * 8 * 8


@pytest.mark.parametrize("kind", ["MULTI_CPU", "MULTI_GPU", "FSDP", "NO"])
def test_ddp_syncs_the_saved_state_only(kind):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from shuangyu.modeling import ShuangyuConfig, ShuangyuForCausalLM

    config = ShuangyuConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=16)  # fmt: skip
    model = ShuangyuForCausalLM(config)
    sync_only_state_under_ddp(SimpleNamespace(distributed_type=DistributedType[kind]), model)
    ignored = getattr(model, "_ddp_params_and_buffers_to_ignore", None)
    if kind.startswith("MULTI"):
        buffers = {name for name, _ in model.named_buffers()}
        assert set(ignored) == buffers and buffers  # the RoPE tables: derived from the config, never saved
        assert not buffers & model.state_dict().keys()
    else:
        assert ignored is None


def test_bits_per_byte_and_throughput():
    # a loss of ln 2 nats per token at 2 bytes per token is half a bit per byte
    assert bits_per_byte(10 * math.log(2), text_bytes=20) == pytest.approx(0.5)
    assert device_peak_flops(torch.device("cpu")) is None
    assert device_peak_flops(torch.device("cpu"), override_tflops=100) == 1e14
    meter = Throughput(flops_per_token=1e9, peak_flops=1e12, world_size=2)
    meter.add(1000)
    out = meter.measure()
    assert out["tokens_per_s"] > 0 and out["mfu"] == pytest.approx(out["tokens_per_s"] * 1e9 / 2e12)


def test_throughput_leaves_paused_time_out_and_restart_drops_what_came_before(monkeypatch):
    now = [0.0]
    monkeypatch.setattr("shuangyu.training.metrics.time.perf_counter", lambda: now[0])
    meter = Throughput(flops_per_token=1e9, peak_flops=None)
    now[0] = 1.0
    meter.restart()  # the set-up, 0 to 1, left out
    meter.add(100)
    now[0] = 2.0
    with meter.paused():  # a validation, 2 to 6
        meter.add(100)
        now[0] = 6.0
    now[0] = 10.0
    assert meter.measure() == {"tokens_per_s": pytest.approx(200 / 5)}  # 9 seconds, 4 of them paused
    meter.add(50)
    now[0] = 14.0
    meter.restart()  # tokens and time dropped
    meter.add(10)
    now[0] = 15.0
    assert meter.measure() == {"tokens_per_s": pytest.approx(10.0)}


def test_checkpoints_are_atomic_pruned_and_resumable(tmp_path, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    from shuangyu.modeling import ShuangyuConfig, ShuangyuForCausalLM

    accelerator = Accelerator(cpu=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    config = ShuangyuConfig.from_preset("tiny", vocab_size=512, num_hidden_layers=1, eos_token_id=0)
    model = accelerator.prepare(ShuangyuForCausalLM(config))

    def save(step, info):
        card = {"name": "run", "training": {"sources": [], "recipe": {"steps": step}}}
        save_checkpoint(accelerator, tmp_path, step, model, tokenizer, card=card, info=info, keep_last=2)

    for step in (10, 20, 30):
        save(step, {"tokens": step * 100})
    done = complete_checkpoints(tmp_path)
    assert [s for s, _ in done] == [20, 30]
    latest = done[-1][1]
    assert (latest / "accelerate").is_dir() and (latest / "model" / "model.safetensors").is_file()
    assert "| steps | 30 |" in (latest / "model" / "README.md").read_text()  # the card, with its training section
    assert read_checkpoint_info(latest)["tokens"] == 3000
    assert resolve_resume(tmp_path, "latest") == latest

    # a crash mid-save: a folder without its marker, and a temporary folder; both are passed over
    (tmp_path / "checkpoints" / "step-00000040").mkdir()
    (tmp_path / "checkpoints" / ".step-00000050.tmp").mkdir()
    assert resolve_resume(tmp_path, "latest") == latest
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        resolve_resume(tmp_path, str(tmp_path / "checkpoints" / "step-00000040"))
    assert resolve_resume(tmp_path / "elsewhere", "latest") is None and resolve_resume(tmp_path, None) is None
    save(60, {})
    assert not list((tmp_path / "checkpoints").glob(".*"))
    assert (tmp_path / "checkpoints" / "step-00000060" / MARKER).is_file()


def test_bad_steps_are_counted_on_the_device_and_read_at_checks():
    from shuangyu.errors import RunDiverged
    from shuangyu.training.state import TrainState

    said, state = [], TrainState()
    for good in (True, False, True, False, False):
        state.advance(10, torch.tensor(good), max_bad=3)
    assert state.bad_in_a_row == 0  # not read yet
    state.check(3, said.append)
    assert state.bad_in_a_row == 2 and state.step == 5 and state.tokens == 50
    assert said == ["steps 1-5: 3 non-finite gradient norms, the last at step 5; update skipped each time"]
    state.advance(10, torch.tensor(True), max_bad=3)
    state.check(3, said.append)
    assert state.bad_in_a_row == 0 and len(said) == 1
    # three in a row, then good ones before the next check: the run still stops, naming the step it diverged at
    for good in (False, False, False, True, True):
        state.advance(10, torch.tensor(good), max_bad=3)
    with pytest.raises(RunDiverged, match=r"^step 9: 3 non-finite steps in a row: lower --learning_rate"):
        state.check(3, said.append)
    # a resumed run carries the streak on: a save reads the counters (state_dict), a load restarts them
    state = TrainState()
    for good in (True, False, False):
        state.advance(10, torch.tensor(good), max_bad=3)
    saved = state.state_dict()
    assert saved.pop("seconds") >= 0
    assert saved == {"step": 3, "tokens": 30, "bad_in_a_row": 2}
    resumed = TrainState()
    resumed.load_state_dict(saved)
    resumed.advance(10, torch.tensor(False), max_bad=3)
    with pytest.raises(RunDiverged, match="^step 4: 3 non-finite steps in a row"):
        resumed.check(3, said.append)
    assert said[-1] == "step 4: non-finite gradient norm, update skipped"


def test_stop_request_turns_signals_into_a_flag():
    stop = StopRequest()
    try:
        assert stop.requested is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):  # a second signal stops at once
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_sigterm_right_after_the_first_is_the_same_stop_a_later_one_stops_at_once(monkeypatch):
    """A scheduler that signals every process of a job reaches a training process directly and through its parent
    (the demo, torch's launcher), milliseconds apart: one stop, which saves. A `kill` seconds later means "now"."""
    from shuangyu.training import stopping

    stop = StopRequest()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == "SIGTERM"
        monkeypatch.setattr(stopping, "SAME_STOP_SECONDS", 0.0)  # as if seconds had passed
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        stop.restore()


def test_a_closed_terminal_stops_the_run_unless_nohup_ignores_it():
    """SIGHUP (a closed terminal window) killed a run with no checkpoint; it is a stop like SIGTERM now, and a second
    hang-up at once (the terminal's and the launcher's) the same stop. Under nohup (SIGHUP ignored) the run goes on."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as a terminal's command has it, even where the tests run under nohup
    stop = StopRequest()
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGHUP)
        assert stop.requested == "SIGHUP"
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        stop = StopRequest()
        os.kill(os.getpid(), signal.SIGHUP)
        assert stop.requested is None and signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        stop.restore()
    finally:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


CLOSED_TERMINAL = """
import os, sys
from shuangyu.terminal import leave_a_closed_terminal, outlive_a_closed_terminal
terminal, window = os.openpty()
os.dup2(window, 1)
os.dup2(window, 2)
outlive_a_closed_terminal()
print("shown", flush=True)
os.read(terminal, 100)
assert not leave_a_closed_terminal()  # a live terminal stays
os.close(terminal)  # the window closes
print("said to a closed terminal", flush=True)
sys.stderr.write("and a bar's redraw\\r")
sys.stderr.flush()
os.write(int(sys.argv[1]), b"outlived it")
"""


GONE_READER = """
import os, sys
from shuangyu.terminal import outlive_a_closed_terminal
read_end, write_end = os.pipe()
os.dup2(write_end, 1)
outlive_a_closed_terminal()
print("read", flush=True)
assert os.read(read_end, 100) == b"read\\n"
os.close(read_end)  # `| tee`'s tee is gone
print("said to no one", flush=True)
os.write(int(sys.argv[1]), b"outlived it")
"""


def assert_it_outlives_its_reader(script: str) -> None:
    """Runs `script`, which ends by writing "outlived it" to the descriptor it is given: it got there, and exit 0."""
    read_end, write_end = os.pipe()
    proc = subprocess.run(
        [sys.executable, "-c", script, str(write_end)], pass_fds=(write_end,), capture_output=True, timeout=60
    )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as told:
        assert told.read() == b"outlived it", proc.stderr.decode()
    assert proc.returncode == 0, proc.stderr.decode()


def test_writes_to_a_pipe_whose_reader_has_gone_go_nowhere():
    """`train_clm.py ... | tee log` with tee ended: the next print raised BrokenPipeError, and the run ended unsaved."""
    assert_it_outlives_its_reader(GONE_READER)


def test_only_a_closed_terminal_or_a_pipe_nobody_reads_counts_as_no_reader(tmp_path):
    """EIO from a file is a failing disk, not a closed window: its output must not silently go to /dev/null."""
    import errno

    from shuangyu.terminal import nobody_reads

    eio, epipe = OSError(errno.EIO, "Input/output error"), OSError(errno.EPIPE, "Broken pipe")
    terminal, window = os.openpty()
    read_end, write_end = os.pipe()
    with open(tmp_path / "log", "w") as log:
        try:
            assert nobody_reads(eio, window) and nobody_reads(epipe, write_end)
            assert not nobody_reads(eio, log.fileno()) and not nobody_reads(epipe, log.fileno())
            assert not nobody_reads(eio, write_end) and not nobody_reads(OSError(errno.ENOSPC, "full"), window)
        finally:
            for fd in (terminal, window, read_end, write_end):
                os.close(fd)


def test_writes_to_a_closed_terminal_go_nowhere():
    """A print or a progress bar's redraw after the terminal was closed raised EIO, and the run ended before it saved."""
    assert_it_outlives_its_reader(CLOSED_TERMINAL)


def test_held_out_loss_is_the_mean_token_loss_and_bits_per_byte_of_the_text():
    """The figure training logs and eval/run.py reports, against a direct computation from the logits."""
    from shuangyu.modeling import ShuangyuConfig, ShuangyuForCausalLM

    torch.manual_seed(0)
    model = ShuangyuForCausalLM(ShuangyuConfig.from_preset("tiny", vocab_size=64, num_hidden_layers=1)).eval()
    byte_lengths = torch.randint(1, 4, (64,))
    batches = [torch.randint(0, 64, (2, 9)), torch.randint(0, 64, (3, 9))]
    meter = HeldOutLoss(byte_lengths, "cpu")
    nll = tokens = text_bytes = 0.0
    for ids in batches:
        meter.add(model, ids)
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        nll += torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="sum")
        tokens += ids[:, 1:].numel()
        text_bytes += byte_lengths[ids[:, 1:]].sum().item()
    result = meter.reduce(lambda t: t * 2).result()  # as if two processes had seen the same batches
    assert result["tokens"] == 2 * tokens and result["bytes"] == 2 * text_bytes
    assert result["loss"] == pytest.approx(float(nll) / tokens, rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(float(nll) / (text_bytes * math.log(2)), rel=1e-5)


def train_clm_help() -> dict[str, str]:
    """train_clm.py's help per flag, as --help prints it."""
    from shuangyu.training.arguments import build_parser

    parser = build_parser()
    return {a.option_strings[0]: a.help or "" for a in parser._actions if a.option_strings}


def test_the_commands_named_in_train_clm_help_exist():
    import importlib.util
    import re

    named = {m for text in train_clm_help().values() for m in re.findall(r"python -m ([\w.]+)", text)}
    assert "shuangyu.data.prepare" in named
    assert [m for m in named if importlib.util.find_spec(m) is None] == []


def test_every_train_clm_flag_has_help_and_each_no_flag_says_what_it_does():
    helps = train_clm_help()
    assert [flag for flag, text in helps.items() if not text] == []
    for flag in ("--no_packing", "--no_hub_push_logs"):
        assert helps[flag] != helps[flag.replace("--no_", "--")], flag
    assert helps["--no_packing"].startswith("One conversation per row")
    assert helps["--no_hub_push_logs"].startswith("Push the model only")


def test_a_published_model_folder_is_readable_as_the_umask_allows(tiny_base_model_dir, tmp_path):
    """transformers' save_pretrained writes model.safetensors 0600; a folder written through atomic_folder (final/,
    checkpoints/*/model/, merged and exported models) gives every file what the umask allows, as open() would."""
    import os
    import stat

    from transformers import AutoModelForCausalLM

    from shuangyu.files import atomic_folder

    model = AutoModelForCausalLM.from_pretrained(tiny_base_model_dir, trust_remote_code=True)
    old = os.umask(0o022)
    try:
        with atomic_folder(tmp_path / "final") as tmp:
            model.save_pretrained(tmp)
            (tmp / "private.txt").write_text("x")
            (tmp / "private.txt").chmod(0o600)
            (tmp / "run.sh").write_text("x")
            (tmp / "run.sh").chmod(0o755)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "final").iterdir()}
    assert modes["model.safetensors"] == 0o644 and modes["private.txt"] == 0o644, modes
    assert modes["run.sh"] == 0o755  # bits a file had are kept


def test_a_model_sharded_by_fsdp2_saves_a_folder_that_loads_as_our_model(tmp_path, tiny_tokenizer_dir):
    """FSDP2 swaps the model's class for one it makes in torch; the folder must still name and hold our code
    (on a GPU the folder held torch's FSDP files and failed to load), and training goes on sharded."""
    script = Path(__file__).parent / "scripts" / "fsdp2_model_folder.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script)]
    proc = subprocess.run([*cmd, str(tiny_tokenizer_dir), str(tmp_path)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    classes = json.loads((tmp_path / "classes.json").read_text())
    assert classes == {"while_training": "FSDPShuangyuForCausalLM", "after_saving": "FSDPShuangyuForCausalLM"}
    folder = tmp_path / "model"
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_shuangyu.ShuangyuForCausalLM"
    assert not [p.name for p in folder.glob("*.py") if "fsdp" in p.name or "fully_shard" in p.name]
    # a fresh process, torch's FSDP imported first as a GPU run's loader has it
    load = (
        "import sys, torch, torch.distributed.fsdp\n"
        "from transformers import AutoModelForCausalLM\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "expected = torch.load(sys.argv[2])\n"
        "got = dict(m.named_parameters())\n"
        "assert type(m).__name__ == 'ShuangyuForCausalLM', type(m)\n"
        "assert all(torch.equal(got[n], t) for n, t in expected.items()), 'weights differ'\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", load, str(folder), str(tmp_path / "expected.pt")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]


def test_a_model_folder_s_tokenizer_has_the_model_s_context(tiny_base_model_dir, tmp_path):
    """train_bpe's tokenizer has no length (transformers' 1e30): saved with a model, pipeline() and lm-eval read
    model_max_length and never cut an input to the model's context."""
    import shutil

    from transformers import AutoTokenizer

    from shuangyu.tokenizer.loading import save_tokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base_model_dir)
    assert tok.model_max_length > 1e20  # as train_bpe.py writes it
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(tiny_base_model_dir / "config.json", folder)
    save_tokenizer(tok, folder)
    context = json.loads((folder / "config.json").read_text())["max_position_embeddings"]
    assert AutoTokenizer.from_pretrained(folder).model_max_length == context
    assert tok.model_max_length > 1e20  # the tokenizer in use is left alone: only the saved file changes
    save_tokenizer(tok, tmp_path / "tokenizer")  # no model beside it: nothing to take a length from
    assert AutoTokenizer.from_pretrained(tmp_path / "tokenizer").model_max_length == tok.model_max_length
