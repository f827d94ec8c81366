"""Schedules, metrics and checkpoints: the pieces train_clm.py is built from."""

import math
import os
import signal

import pytest
import torch
from accelerate import Accelerator
from transformers import LlamaConfig, LlamaForCausalLM

from training.checkpoint import (
    MARKER,
    StopRequest,
    complete_checkpoints,
    read_checkpoint_info,
    resolve_resume,
    save_checkpoint,
)
from training.metrics import Throughput, bits_per_byte, device_peak_flops, flops_per_token
from training.schedule import build_scheduler


def lrs(name, steps=100, warmup=10, **kw):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, name, warmup, steps, **kw)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_warms_up_then_decays_to_the_floor():
    lr = lrs("cosine", min_lr_ratio=0.1)
    assert lr[0] == 0 and lr[5] == pytest.approx(0.5) and lr[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lr[10:], lr[11:], strict=False))
    assert lr[55] == pytest.approx(0.1 + 0.9 * 0.5, abs=0.02) and lr[-1] == pytest.approx(0.1, abs=0.01)


def test_warmup_stable_decay_holds_then_decays_over_the_last_fifth():
    lr = lrs("warmup_stable_decay", decay_fraction=0.2, min_lr_ratio=0.0)
    assert lr[10:80] == [pytest.approx(1.0)] * 70
    assert lr[90] < 0.6 and lr[-1] < 0.01


def test_unknown_schedule():
    with pytest.raises(ValueError, match="--lr_scheduler_type"):
        lrs("bumpy")


def tiny_llama(tie: bool):
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie)  # fmt: skip
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("tie", [False, True])
def test_flops_per_token_counts_every_matmul_once(tie):
    model = tiny_llama(tie)
    block = 2 * (32 * 32 + 2 * 32 * 16 + 32 * 32 + 3 * 32 * 64)  # q, k and v (GQA), o, gate/up/down
    head = 100 * 32
    assert flops_per_token(model, seq_len=8) == 6 * (block + head) + 12 * 2 * 4 * 8 * 8


def test_bits_per_byte_and_throughput():
    # a loss of ln 2 nats per token at 2 bytes per token is half a bit per byte
    assert bits_per_byte(math.log(2), tokens=10, text_bytes=20) == pytest.approx(0.5)
    assert device_peak_flops(torch.device("cpu")) is None
    assert device_peak_flops(torch.device("cpu"), override_tflops=100) == 1e14
    meter = Throughput(flops_per_token=1e9, peak_flops=1e12, world_size=2)
    meter.add(1000)
    out = meter.measure()
    assert out["tokens_per_s"] > 0 and out["mfu"] == pytest.approx(out["tokens_per_s"] * 1e9 / 2e12)


def test_checkpoints_are_atomic_pruned_and_resumable(tmp_path):
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(3, 2))

    def save_folder(path):
        path.mkdir(parents=True)
        (path / "weights.txt").write_text(str(model.weight.sum().item()))

    for step in (10, 20, 30):
        save_checkpoint(accelerator, tmp_path, step, {"tokens": step * 100}, save_folder, keep_last=2)
    done = complete_checkpoints(tmp_path)
    assert [s for s, _ in done] == [20, 30]
    latest = done[-1][1]
    assert (latest / "accelerate").is_dir() and (latest / "model" / "weights.txt").is_file()
    assert read_checkpoint_info(latest)["tokens"] == 3000
    assert resolve_resume(tmp_path, "latest") == latest

    # a crash mid-save: a folder without its marker, and a temporary folder; both are passed over
    (tmp_path / "checkpoints" / "step-00000040").mkdir()
    (tmp_path / "checkpoints" / ".tmp-step-00000050").mkdir()
    assert resolve_resume(tmp_path, "latest") == latest
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        resolve_resume(tmp_path, str(tmp_path / "checkpoints" / "step-00000040"))
    assert resolve_resume(tmp_path / "elsewhere", "latest") is None and resolve_resume(tmp_path, None) is None
    save_checkpoint(accelerator, tmp_path, 60, {}, save_folder, keep_last=2)
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    assert (tmp_path / "checkpoints" / "step-00000060" / MARKER).is_file()


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
