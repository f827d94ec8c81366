"""Train a tiny stock Llama for a few steps with MuonAdamW under `accelerate launch`, save the parameters.

Run by tests/test_optim.py with 1 process (the whole global batch) and with 2 CPU processes (half each).
"""

import json
import sys

import torch
from accelerate import Accelerator
from transformers import LlamaConfig, LlamaForCausalLM

import training.optim as optim

STEPS, GLOBAL_BATCH, SEQ = 3, 8, 16


def main(out_path: str) -> None:
    accelerator = Accelerator(cpu=True)
    calls = {"n": 0}
    real = optim.newton_schulz

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    optim.newton_schulz = counting  # count how much Newton-Schulz work this rank does
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
    model = LlamaForCausalLM(config)
    opt = optim.build_optimizer(model, "muon", lr=0.02, weight_decay=0.1)
    model, opt = accelerator.prepare(model, opt)
    data = torch.randint(0, 97, (STEPS, GLOBAL_BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    per_rank = GLOBAL_BATCH // accelerator.num_processes
    for step in range(STEPS):
        lo = accelerator.process_index * per_rank
        batch = data[step, lo : lo + per_rank]
        loss = model(input_ids=batch, labels=batch).loss
        accelerator.backward(loss)
        opt.step()
        opt.zero_grad()
    counts = accelerator.gather(torch.tensor([calls["n"]])).tolist()
    if accelerator.is_main_process:
        params = {n: p.detach().tolist() for n, p in accelerator.unwrap_model(model).named_parameters()}
        with open(out_path, "w") as fh:
            json.dump({"params": params, "ns_calls_per_rank": counts}, fh)


if __name__ == "__main__":
    main(sys.argv[1])
