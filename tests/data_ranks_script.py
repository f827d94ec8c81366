"""Run by tests/test_data_loader.py on 2 processes (torchrun, gloo, Accelerator(cpu=True)): each rank writes the
blocks it was given in one epoch, and checks that a loader restored from `accelerator.save_state` continues
with exactly the batches of an uninterrupted one."""

import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from shuangyu.data.loader import BlockLoader, PackedBlocks
from shuangyu.data.prepared import PreparedData


def main(data_dir: str, out_dir: str, batch_size: int, stop_after: int) -> None:
    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    data = PreparedData.load(data_dir)
    # the first blocks that fill whole global batches, so that one epoch covers every one of them
    full = data.train_dataset()
    usable = len(full) - len(full) % (batch_size * world)
    blocks = PackedBlocks(full.path, full.dtype, full.block_size, 0, usable)

    def loader():
        return BlockLoader(blocks, batch_size, seed=3, rank=rank, world_size=world, num_workers=1, data_key=data.key)

    epoch = [batch["input_ids"] for batch in loader()]
    torch.save(torch.cat(epoch), Path(out_dir) / f"rank{rank}.pt")

    uninterrupted = loader()
    expected = [b["input_ids"] for b in uninterrupted] + [b["input_ids"] for b in uninterrupted]

    first = loader()
    accelerator.register_for_checkpointing(first)
    seen = []
    for batch in first:
        seen.append(batch["input_ids"])
        if len(seen) == stop_after:
            break
    accelerator.save_state(str(Path(out_dir) / "checkpoint"))
    accelerator.wait_for_everyone()

    restored = loader()
    accelerator2 = Accelerator(cpu=True)
    accelerator2.register_for_checkpointing(restored)
    accelerator2.load_state(str(Path(out_dir) / "checkpoint"))
    seen += [b["input_ids"] for b in restored] + [b["input_ids"] for b in restored]
    same = len(seen) == len(expected) and all(torch.equal(a, b) for a, b in zip(seen, expected, strict=True))
    (Path(out_dir) / f"resume{rank}.txt").write_text(f"{'same' if same else 'different'} {len(seen)} {len(expected)}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
