"""The end of a 2-process run through train.finish: a DDP model, a gather_object (what every checkpoint save does
to agree on failures) and a barrier, then finish() ends the trackers and the process group. Prints, on each
process, how many DDP modules were still alive when the process group was destroyed: one such, freed later, can
destroy the group from DDP's reducer with the GIL held and hang the process (accelerator.end_processes).

    torchrun --standalone --nproc_per_node 2 end_of_run.py OUT_DIR
"""

import gc
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist
from accelerate import Accelerator

from shuangyu.training.accelerator import first_failure
from shuangyu.training.train import finish

alive_at_destroy = []


def destroy_and_count(*args, **kwargs):
    ddp = torch.nn.parallel.DistributedDataParallel
    alive_at_destroy.append(sum(issubclass(type(o), ddp) for o in gc.get_objects()))
    return destroy(*args, **kwargs)


destroy, dist.destroy_process_group = dist.destroy_process_group, destroy_and_count


def main(out: str) -> None:
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(8, 8))
    model(torch.randn(4, 8)).sum().backward()
    assert first_failure(accelerator, None) is None
    accelerator.wait_for_everyone()
    hub = SimpleNamespace(push_to_hub=False)
    run = SimpleNamespace(
        accelerator=accelerator,
        state=SimpleNamespace(step=1, tokens=32),
        config=SimpleNamespace(hub=hub),
        out=out,
        lock=None,
        model=model,
    )
    del model  # the run holds it, as train.py's does
    assert finish(run, stopped_by="SIGTERM") == 0  # a stopped run: no final/ to publish from a checkpoint
    # one write of the whole line (print writes the text and its end apart): the two processes share one pipe,
    # and their lines must not interleave
    sys.stdout.write(f"DDP modules alive when the process group was destroyed: {alive_at_destroy}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1])
