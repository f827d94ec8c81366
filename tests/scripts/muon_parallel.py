"""Train a tiny stock Llama for a few steps with MuonAdamW, data parallel or sharded, and save the parameters.

    accelerate launch [--multi_gpu --num_processes 2] muon_parallel.py OUT.json          (DDP, or 1 process)
    torchrun --nproc_per_node 2 muon_parallel.py OUT.json --fsdp2                        (FSDP2 on gloo)

Run by tests/test_optim.py, which compares the parameters with a 1-process run on the whole global batch. A last
step with NaN gradients and `found_inf` set must leave parameters and optimizer state as they were.
"""

import json
import sys

import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM

import shuangyu.training.optim as optim
from shuangyu.training.arguments import OptimizerArguments

STEPS, GLOBAL_BATCH, SEQ = 3, 8, 16
MUON = OptimizerArguments(optimizer="muon", learning_rate=0.02, weight_decay=0.1)


def count_orthogonalised_matrices() -> dict:
    calls = {"n": 0}
    real = optim.newton_schulz

    def counting(matrix, *args, **kwargs):
        calls["n"] += matrix.shape[0] if matrix.ndim == 3 else 1  # matrices, batched or not
        return real(matrix, *args, **kwargs)

    optim.newton_schulz = counting
    return calls


def tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config)


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if type(t).__name__ == "DTensor" else t


def train(model, opt, rank: int, world: int, backward) -> bool:
    """STEPS steps, then one with NaN gradients and found_inf set; returns whether that one changed nothing."""
    data = torch.randint(0, 97, (STEPS, GLOBAL_BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    per_rank = GLOBAL_BATCH // world
    for step in range(STEPS):
        batch = data[step, rank * per_rank : (rank + 1) * per_rank]
        backward(model(input_ids=batch, labels=batch).loss)
        opt.step()
        opt.zero_grad()
    inner = getattr(opt, "optimizer", opt)  # accelerate's wrapper

    def everything():  # parameters, and both algorithms' state (momentum; moments and step counts)
        state = [t for s in inner.state_dict()["state"].values() for t in s.values()]
        return [full(t).detach().clone() for t in [*model.parameters(), *state]]

    before = everything()
    backward(model(input_ids=batch, labels=batch).loss)
    for p in model.parameters():
        p.grad.fill_(float("nan"))
    inner.found_inf = torch.tensor(1.0)
    opt.step()
    del inner.found_inf
    opt.zero_grad()
    return all(torch.equal(a, b) for a, b in zip(before, everything(), strict=True))


def run_accelerate(out_path: str) -> None:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    calls = count_orthogonalised_matrices()
    model = tiny_model()
    model, opt = accelerator.prepare(model, optim.build_optimizer(model, MUON))
    skipped = train(model, opt, accelerator.process_index, accelerator.num_processes, accelerator.backward)
    counts = accelerator.gather(torch.tensor([calls["n"]])).tolist()
    if accelerator.is_main_process:
        params = {n: p.detach().tolist() for n, p in accelerator.unwrap_model(model).named_parameters()}
        write(out_path, params, counts, skipped)


def run_fsdp2(out_path: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    calls = count_orthogonalised_matrices()
    model = tiny_model()
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = optim.build_optimizer(model, MUON)
    skipped = train(model, opt, rank, world, lambda loss: loss.backward())
    counts = [torch.zeros(1, dtype=torch.long) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([calls["n"]]))
    params = {n: p.full_tensor().detach().tolist() for n, p in model.named_parameters()}
    if rank == 0:
        write(out_path, params, [int(c) for c in counts], skipped)
    dist.destroy_process_group()


def write(out_path: str, params: dict, counts: list[int], skipped: bool) -> None:
    with open(out_path, "w") as fh:
        json.dump({"params": params, "matrices_per_rank": counts, "skipped_step_changed_nothing": skipped}, fh)


if __name__ == "__main__":
    (run_fsdp2 if "--fsdp2" in sys.argv else run_accelerate)(sys.argv[1])
