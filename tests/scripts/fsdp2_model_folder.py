"""Shard a tiny Shuangyu model with FSDP2 (on gloo, 2 CPU processes), save its model folder as training does,
and record what a loader should find.

    torchrun --nproc_per_node 2 fsdp2_model_folder.py TOKENIZER_DIR OUT_DIR

Run by tests/test_training_parts.py. accelerate applies FSDP on GPUs only, so this shards with fully_shard itself
and hands save_model_folder the few Accelerator calls it makes.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from transformers import AutoTokenizer

from shuangyu.modeling import ShuangyuConfig, ShuangyuForCausalLM
from shuangyu.training.model_folder import save_model_folder


class ShardedRun:
    """What save_model_folder asks of an Accelerator, for a model fully_shard sharded."""

    @property
    def is_main_process(self) -> bool:
        return dist.get_rank() == 0

    def get_state_dict(self, model):
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def unwrap_model(self, model, keep_torch_compile=False):
        return model


def main(tokenizer_dir: str, out: str) -> None:
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    model = ShuangyuForCausalLM(ShuangyuConfig.from_preset("tiny", vocab_size=len(tokenizer)))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    sharded_class = type(model).__name__
    save_model_folder(ShardedRun(), model, tokenizer, Path(out) / "model")
    full = {n: p.full_tensor().detach() for n, p in model.named_parameters()}
    if dist.get_rank() == 0:
        torch.save(full, Path(out) / "expected.pt")
        (Path(out) / "classes.json").write_text(
            json.dumps({"while_training": sharded_class, "after_saving": type(model).__name__})
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
