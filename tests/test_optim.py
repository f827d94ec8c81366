"""The optimizer plugin: Muon's update against a float64 reference, AdamW parity, one object, data parallel, and
steps with non-finite gradients skipped on the device (bit for bit), with and without fp16 loss scaling."""

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from transformers import LlamaConfig, LlamaForCausalLM

from shuangyu.training.arguments import OptimizerArguments
from shuangyu.training.optim import (
    MuonAdamW,
    build_optimizer,
    clip_and_step,
    muon_lr_scale,
    newton_schulz,
    parameter_groups,
)

REPO = Path(__file__).resolve().parent.parent
A, B, C = 3.4445, -4.7750, 2.0315


def reference_newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The quintic iteration X <- aX + b(XX^T)X + c(XX^T)^2 X in float64, always on the wide side."""
    x = g.double()
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / x.norm()
    for _ in range(steps):
        m = x @ x.T
        x = A * x + B * (m @ x) + C * (m @ m @ x)
    return x.T if tall else x


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (48, 48), (3, 200)])
def test_newton_schulz_matches_float64_reference(shape):
    # a matrix whose singular values spread over 1.5 decades
    k, gen = min(shape), torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(shape[0], k, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(shape[1], k, generator=gen))
    g = u @ torch.diag(torch.logspace(0, -1.5, k)) @ v.T
    ours = newton_schulz(g)
    assert ours.dtype == torch.float32 and ours.shape == g.shape
    torch.testing.assert_close(ours.double(), reference_newton_schulz(g), atol=2e-5, rtol=1e-4)
    # it orthogonalises: the singular values land in a band around 1 (0.68 to 1.13 for this iteration)
    s = torch.linalg.svdvals(ours.double())
    assert s.min() > 0.6 and s.max() < 1.2, s
    # a stack of matrices is orthogonalised matrix by matrix
    stack = torch.stack([g, 3 * g.flip(0), torch.randn(shape, generator=gen)])
    batched = newton_schulz(stack)
    for i in range(3):
        torch.testing.assert_close(batched[i], newton_schulz(stack[i]), atol=1e-6, rtol=1e-5)


def tiny_llama(seed=0, tie=False):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config)


def test_parameter_groups_by_role():
    model = tiny_llama()
    names = {id(p): n for n, p in model.named_parameters()}
    groups = parameter_groups(model, "muon", weight_decay=0.1)
    by_alg = [(g["algorithm"], g["weight_decay"], sorted(names[id(p)] for p in g["params"])) for g in groups]
    muon, io, vectors = by_alg
    assert muon[:2] == ("muon", 0.1) and len(muon[2]) == 2 * 7  # q k v o gate up down, per layer
    assert all(".layers." in n and n.endswith("proj.weight") for n in muon[2])
    assert io == ("adamw", 0.1, ["lm_head.weight", "model.embed_tokens.weight"])
    assert vectors[:2] == ("adamw", 0.0) and all("norm" in n for n in vectors[2])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    tied = parameter_groups(tiny_llama(tie=True), "muon", 0.1)
    assert [len(g["params"]) for g in tied] == [14, 1, 5]
    adamw = parameter_groups(model, "adamw", 0.1)
    assert [g["algorithm"] for g in adamw] == ["adamw", "adamw"] and [len(g["params"]) for g in adamw] == [16, 5]
    with pytest.raises(ValueError, match="--optimizer"):
        parameter_groups(model, "sgd", 0.1)


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
@pytest.mark.parametrize("tie", [False, True])
def test_the_token_embedding_can_learn_at_its_own_rate(optimizer, tie):
    model = tiny_llama(tie=tie)
    names = {id(p): n for n, p in model.named_parameters()}
    args = OptimizerArguments(optimizer=optimizer, learning_rate=1e-3, embedding_learning_rate=3e-2)
    opt = build_optimizer(model, args)
    by_lr = {
        lr: sorted(names[id(p)] for g in opt.param_groups if g["lr"] == lr for p in g["params"]) for lr in (1e-3, 3e-2)
    }
    assert by_lr[3e-2] == ["model.embed_tokens.weight"]  # tied: the one matrix embedding and head share
    head_elsewhere = any("lm_head.weight" in n for n in by_lr[1e-3])
    assert head_elsewhere == (not tie)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    # a schedule scales every group from its own peak
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    before = model.get_input_embeddings().weight.detach().clone()
    train_steps(model, opt, 1, seed=1, scheduler=sched)
    assert sorted({g["lr"] for g in opt.param_groups}) == [1e-3 * 0.5, 3e-2 * 0.5]
    # Adam's first step moves every entry with a gradient by about the learning rate: 3e-2, not 1e-3
    moved = (model.get_input_embeddings().weight.detach() - before).abs().amax().item()
    assert 2e-2 < moved < 4e-2
    # the option off leaves the groups as checkpoints from before it hold them
    plain = build_optimizer(tiny_llama(tie=tie), OptimizerArguments(optimizer=optimizer, learning_rate=1e-3))
    expected = {("muon", False): [14, 2, 5], ("muon", True): [14, 1, 5], ("adamw", False): [16, 5]}
    expected[("adamw", True)] = [15, 5]
    assert [len(g["params"]) for g in plain.param_groups] == expected[(optimizer, tie)]


def test_muon_step_matches_float64_reference():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(24, 40))
    w0 = w.detach().double().clone()
    lr, wd, mom = 0.01, 0.1, 0.95
    opt = MuonAdamW([{"params": [w], "algorithm": "muon"}], lr=lr, weight_decay=wd, momentum=mom)
    grads = [torch.randn(24, 40) for _ in range(3)]
    buf = torch.zeros(24, 40, dtype=torch.float64)
    ref = w0.clone()
    for g in grads:
        w.grad = g.clone()
        opt.step()
        g64 = g.double()
        buf = mom * buf + (1 - mom) * g64
        nesterov = (1 - mom) * g64 + mom * buf
        ref = ref * (1 - lr * wd) - lr * 0.2 * math.sqrt(40) * reference_newton_schulz(nesterov)
    torch.testing.assert_close(w.detach().double(), ref, atol=1e-5, rtol=1e-5)
    assert muon_lr_scale(torch.Size([24, 40]), "original") == 1.0
    assert muon_lr_scale(torch.Size([96, 24]), "original") == 2.0


def test_adamw_groups_step_exactly_like_torch_adamw():
    ours_model, ref_model = tiny_llama(), tiny_llama()
    ours = build_optimizer(ours_model, OptimizerArguments(optimizer="adamw", learning_rate=1e-2, weight_decay=0.1))
    groups = parameter_groups(ref_model, "adamw", 0.1)
    ref = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, fused=True)
    batch = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(3))
    for _ in range(3):
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            model(input_ids=batch, labels=batch).loss.backward()
            opt.step()
            opt.zero_grad()
    for p, q in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=0, rtol=0)


def train_steps(model, opt, steps, seed, scheduler=None):
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        batch = torch.randint(0, 50, (2, 12), generator=gen)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        if scheduler:
            scheduler.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def test_one_object_for_schedulers_and_checkpoints(tmp_path):
    model = tiny_llama()
    opt = build_optimizer(model, OptimizerArguments(optimizer="muon", learning_rate=0.02))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    train_steps(model, opt, 2, seed=1, scheduler=sched)
    assert {g["lr"] for g in opt.param_groups} == {0.02 * 0.25}  # the schedule reached Muon and AdamW groups
    # both algorithms' state is in the one state_dict
    kinds = {frozenset(s) for s in opt.state_dict()["state"].values()}
    assert frozenset({"momentum_buffer"}) in kinds and frozenset({"step", "exp_avg", "exp_avg_sq"}) in kinds
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, tmp_path / "ck.pt")
    expected = train_steps(model, opt, 3, seed=2, scheduler=sched)

    ck = torch.load(tmp_path / "ck.pt")
    resumed = tiny_llama(seed=7)
    resumed.load_state_dict(ck["model"])
    opt2 = build_optimizer(resumed, OptimizerArguments(optimizer="muon", learning_rate=0.02))
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda step: 0.5**step)
    opt2.load_state_dict(ck["opt"])
    sched2.load_state_dict(ck["sched"])
    assert train_steps(resumed, opt2, 3, seed=2, scheduler=sched2) == expected
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=0, rtol=0)


def same_bits(a, b) -> bool:
    """Equal tensors of the same dtype, bit for bit (NaN equal to NaN), in nested dicts and lists."""
    if isinstance(a, torch.Tensor):
        return (
            a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8))
        )
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_bits(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_bits(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def snapshot(model, optimizer) -> tuple[dict, dict]:
    return copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())


def backward(model, accelerator, seed: int, poison: str | None = None) -> None:
    batch = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(seed))
    accelerator.backward(model(input_ids=batch, labels=batch).loss)
    if poison:  # one gradient entry non-finite, as an overflow in one layer leaves it
        next(p for n, p in model.named_parameters() if "layers.1.mlp.up_proj" in n).grad[3, 5] = float(poison)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
@pytest.mark.parametrize("poison", ["nan", "inf"])
def test_a_step_with_non_finite_gradients_changes_nothing(optimizer, poison):
    """Skipped on the device: parameters, moments, momentum and step counts stay bit for bit, and the next good
    step lands exactly where it would have without the bad one in between."""
    accelerator = Accelerator(cpu=True)
    runs = {}
    for name, steps in (("clean", [None, None, None]), ("bad", [None, poison, None, None])):
        model = tiny_llama()
        args = OptimizerArguments(optimizer=optimizer, learning_rate=1e-2, weight_decay=0.1)
        model, opt = accelerator.prepare(model, build_optimizer(model, args))
        goods, seed = [], 0
        for kind in steps:
            before = snapshot(model, opt)
            seed += kind is None  # a poisoned step repeats the last batch: both runs then train on the same ones
            backward(model, accelerator, seed, kind)
            grad_norm, good = clip_and_step(accelerator, model, opt, max_grad_norm=1.0)
            assert good.dtype == torch.bool and good.shape == () and not hasattr(opt.optimizer, "found_inf")
            goods.append(bool(good))
            if kind:
                assert not torch.isfinite(grad_norm)
                assert same_bits(snapshot(model, opt), before)
        runs[name] = (goods, snapshot(model, opt))
    assert runs["bad"][0] == [True, False, True, True] and runs["clean"][0] == [True, True, True]
    assert same_bits(runs["bad"][1], runs["clean"][1])
    kinds = {frozenset(s) for s in runs["bad"][1][1]["state"].values()}
    assert frozenset({"step", "exp_avg", "exp_avg_sq"}) in kinds
    assert (frozenset({"momentum_buffer"}) in kinds) == (optimizer == "muon")


@pytest.mark.parametrize("nesterov", [True, False])
def test_good_steps_are_the_same_with_or_without_the_finite_flag(nesterov):
    """The masked update (found_inf = 0) computes exactly what the plain one does."""
    results = []
    for flag in (None, torch.tensor(0.0)):
        model = tiny_llama()
        opt = MuonAdamW(parameter_groups(model, "muon", 0.1), lr=0.02, nesterov=nesterov)
        for seed in range(3):
            batch = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(seed))
            model(input_ids=batch, labels=batch).loss.backward()
            if flag is not None:
                opt.found_inf = flag
            opt.step()
            opt.zero_grad()
        results.append(snapshot(model, opt))
    assert same_bits(*results)


@pytest.mark.parametrize("init_scale", [2.0**8, 0.5])
def test_fp16_loss_scaling_skips_overflow_on_the_device(monkeypatch, init_scale):
    """fp16: accelerate's GradScaler (a CPU one here: accelerate gives CPUs none) hands MuonAdamW its found_inf;
    an overflow is skipped and lowers the scale, and counts as bad only once the scale is below 1. The one value
    read on the host is the scale."""
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(tiny_llama())
    accelerator.scaler, accelerator.native_amp = torch.amp.GradScaler("cpu", init_scale=init_scale), True
    monkeypatch.setattr(Accelerator, "mixed_precision", property(lambda self: "fp16"))  # so it unscales
    opt = accelerator.prepare(build_optimizer(model, OptimizerArguments(optimizer="muon", learning_rate=1e-2)))
    backward(model, accelerator, seed=1)
    clip_and_step(accelerator, model, opt, max_grad_norm=1.0)
    before = snapshot(model, opt)
    backward(model, accelerator, seed=2, poison="inf")
    reads = []
    real_item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda t: reads.append(t) or real_item(t))
    _, good = clip_and_step(accelerator, model, opt, max_grad_norm=1.0)
    monkeypatch.setattr(torch.Tensor, "item", real_item)
    assert len(reads) == 1 and accelerator.scaler.get_scale() == init_scale / 2  # the scale, once
    assert bool(good) == (init_scale / 2 >= 1)
    assert same_bits(snapshot(model, opt), before)
    backward(model, accelerator, seed=3)
    _, good = clip_and_step(accelerator, model, opt, max_grad_norm=1.0)
    assert bool(good) and not same_bits(snapshot(model, opt)[0], before[0])  # a finite step trains


def test_deepspeed_reports_the_norm_it_measured():
    """Under DeepSpeed the engine steps inside backward; clip_and_step turns its float norm into tensors."""
    engine = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, device=torch.device("cpu"))
    for measured, expected in ((1.5, True), (float("inf"), False), (None, True)):
        engine.clip_grad_norm_ = lambda params, max_norm, value=measured: value
        grad_norm, good = clip_and_step(engine, tiny_llama(), None, max_grad_norm=1.0)
        assert bool(good) == expected and good.device == engine.device
        assert math.isnan(float(grad_norm)) if measured is None else float(grad_norm) == measured


def test_a_checkpoint_from_before_the_fused_adamw_resumes_fused():
    model = tiny_llama()
    opt = build_optimizer(model, OptimizerArguments(optimizer="muon", learning_rate=0.02))
    train_steps(model, opt, 1, seed=1)
    old = opt.state_dict()
    for group in old["param_groups"]:
        group["fused"] = None  # as torch.optim.AdamW(foreach=None) saved it
    for state in old["state"].values():
        if "step" in state:
            state["step"] = state["step"].double()
    opt = build_optimizer(model, OptimizerArguments(optimizer="muon", learning_rate=0.02))
    opt.load_state_dict(old)
    adamw = [g for g in opt.param_groups if g["algorithm"] == "adamw"]
    assert all(g["fused"] for g in adamw) and opt._adamw.param_groups == adamw
    assert {s["step"].dtype for s in opt.state.values() if "step" in s} == {torch.float32}
    opt.found_inf = torch.tensor(0.0)  # a plain AdamW would refuse it
    train_steps(model, opt, 1, seed=2)


def test_muon_rejects_non_matrices():
    with pytest.raises(ValueError, match="2-D"):
        MuonAdamW([{"params": [torch.nn.Parameter(torch.zeros(3))], "algorithm": "muon"}])
    with pytest.raises(ValueError, match="muon_scale"):
        MuonAdamW([{"params": [torch.nn.Parameter(torch.zeros(3, 3))], "algorithm": "muon"}], muon_scale="x")


def run_parallel_script(out: Path, processes: int, fsdp2: bool = False) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = [str(REPO / "tests/scripts/muon_parallel.py"), str(out)]
    if fsdp2:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), *script, "--fsdp2"]
    else:
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--num_processes",
            str(processes),
        ]
        # accelerate starts several CPU processes through its torchrun path (`--multi_gpu`); gloo carries them
        cmd += ["--multi_gpu"] if processes > 1 else ["--cpu"]
        cmd += script
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    result = run_parallel_script(tmp_path_factory.mktemp("one") / "one.json", 1)
    assert result["matrices_per_rank"] == [56]  # 14 matrices x 4 steps (the last one skipped), all on the one rank
    assert result["skipped_step_changed_nothing"]
    return result


def assert_same_params(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        # Muon's matrices agree tightly; AdamW divides by sqrt(v), which magnifies the rounding of
        # all-reduced gradients for rarely seen tokens' embedding rows
        atol = 2e-5 if name.endswith("proj.weight") else 1e-4
        torch.testing.assert_close(torch.tensor(got[name]), torch.tensor(value), atol=atol, rtol=1e-4)


def test_muon_under_data_parallel_matches_one_process_and_spreads_the_work(tmp_path, one_process):
    two = run_parallel_script(tmp_path / "two.json", 2)
    assert two["matrices_per_rank"] == [28, 28]  # spread evenly, each matrix orthogonalised once
    assert two["skipped_step_changed_nothing"]
    assert_same_params(two["params"], one_process["params"])


def test_muon_under_fsdp2_orthogonalises_whole_matrices(tmp_path, one_process):
    """Each rank holds half of every matrix; orthogonalising shards would give a different update."""
    two = run_parallel_script(tmp_path / "fsdp2.json", 2, fsdp2=True)
    assert two["matrices_per_rank"] == [28, 28]
    assert two["skipped_step_changed_nothing"]  # fused AdamW and the masked Muon step on sharded (DTensor) state
    assert_same_params(two["params"], one_process["params"])


def test_a_torch_without_fused_adamw_is_refused_in_one_line():
    from shuangyu.errors import UsageError
    from shuangyu.training.optim import check_torch_version

    check_torch_version("2.13.0+cpu")
    check_torch_version("2.4.1")
    with pytest.raises(UsageError, match=r"torch 2.1.2 has no fused AdamW .* install torch==2.13.0"):
        check_torch_version("2.1.2")


def test_the_loop_bench_times_each_variant_first_in_half_the_rounds(monkeypatch):
    """bench/optim.py loop timed the skip on the device first in every round, and the first block timed ran slower
    (adamw: -26.9% with 2 rounds on a CPU, from the order alone): the order now alternates, and each variant has
    its own untimed warm-up."""
    import importlib.util

    monkeypatch.syspath_prepend(str(REPO / "bench"))  # its `turns` helper
    spec = importlib.util.spec_from_file_location("optim_bench", REPO / "bench" / "optim.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ran = []
    monkeypatch.setattr("shuangyu.training.optim.clip_and_step", lambda *a, **k: ran.append("device"))

    class Model(torch.nn.Linear):
        def forward(self, input_ids, labels, return_logits):
            return SimpleNamespace(loss=torch.zeros(()))

    accelerator = SimpleNamespace(
        device=torch.device("cpu"),
        backward=lambda loss: None,
        clip_grad_norm_=lambda params, norm: ran.append("host") or torch.tensor(1.0),
    )
    optimizer = SimpleNamespace(step=lambda: None, zero_grad=lambda set_to_none: None)
    args = SimpleNamespace(vocab_size=8, batch_size=1, seq_len=2, device="cpu", warmup=1, steps=2, rounds=4)
    bench.time_loop(accelerator, Model(1, 1), optimizer, args)
    warm, refill, timed = ran[:2], ran[2], ran[3:]
    assert warm == ["device", "host"] and refill == "device"
    blocks = [timed[i] for i in range(0, len(timed), args.steps)]
    assert blocks == ["device", "host", "host", "device", "device", "host", "host", "device"]
