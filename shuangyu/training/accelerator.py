"""The run's Accelerator: which processes, which precision, which trackers; and what the launcher's config asks
for that the run must adapt to."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, TorchDynamoPlugin

from shuangyu.errors import UsageError
from shuangyu.training.arguments import LoggingArguments, OptimizerArguments, TrainArguments


def build_accelerator(train_args: TrainArguments, logging_args: LoggingArguments, out: Path) -> Accelerator:
    if train_args.compile and hasattr(torch._dynamo.config, "capture_profiler_record_function"):
        # DDP's forward opens a profiler range; dynamo drops it (with a warning per process) unless it is told to
        # keep it in the graph, where it costs nothing outside a profiler
        torch._dynamo.config.capture_profiler_record_function = True
    return Accelerator(
        cpu=cpu_processes(),
        mixed_precision=mixed_precision(train_args.mixed_precision),
        gradient_accumulation_steps=train_args.gradient_accumulation_steps,
        log_with=trackers(logging_args.report_to),
        project_dir=str(out),
        dynamo_plugin=TorchDynamoPlugin(backend="inductor") if train_args.compile else None,
    )


def sync_only_state_under_ddp(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """DDP broadcasts every buffer from the first process before each forward. A non-persistent buffer (here the
    RoPE tables) is not saved, so every process derives it from the config alike: syncing it is a collective per
    step for nothing, and under --compile a call dynamo cannot trace. Call before `accelerator.prepare`."""
    if accelerator.distributed_type not in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        return
    saved = model.state_dict().keys()
    derived = [name for name, _ in model.named_buffers() if name not in saved]
    # torch's hook for leaving named tensors out of DDP (there since 1.8); DDP's own switch, broadcast_buffers,
    # warns as deprecated in torch 2.13, and its successor still syncs at start
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, derived)


def share_from_main(accelerator, value):
    """The main process's `value` on every process."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def first_failure(accelerator, failure: str | None) -> str | None:
    """The first process's failure message (None: all succeeded), on every process: work that every process does
    for itself must stop all of them if one fails, or the others would wait for it forever."""
    if accelerator.num_processes == 1:
        return failure
    from accelerate.utils import gather_object

    return next((f for f in gather_object([failure]) if f), None)


def end_processes(accelerator: Accelerator | None) -> None:
    """End the trackers and the process group. The caller drops its own references to the prepared model first.

    Why the order: DDP's C++ reducer holds the gloo process group. Were it the group's last holder, the group would
    be destroyed as the reducer is freed, with the GIL held, while gloo's worker thread may wait for the GIL to free
    a tensor of an earlier gather_object: both wait forever (torch 2.13; a 2-process CPU run hung so after "done:").
    With the model freed first, the last holder is the group's Python object, whose destruction lets go of the GIL.
    `accelerator` None: set-up failed before the run had one; whatever it prepared is collected here."""
    if accelerator is not None:
        accelerator.free_memory()  # drops its references to what it prepared (after its own collection)
    gc.collect()  # the model, if a cycle or a failed set-up's frames held it (about 0.5 s)
    if accelerator is not None:
        accelerator.end_training()
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# accelerate shards with FSDP on GPUs only: its fsdp2.yaml on CPU processes is plain data parallel
FSDP_NEEDS_GPUS = "note: FSDP needs GPUs; these CPU processes run plain data parallel (DDP) instead"


def cpu_processes() -> bool:
    """Several processes on a machine without GPUs. Accelerate's multi-process launcher does not tell the
    processes to use the CPU, and without `cpu=True` each would train alone as if it were the only one."""
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"  # fp16: Accelerate adds loss scaling


def trackers(report_to: str):
    if report_to == "none":
        return None
    return "all" if report_to == "all" else report_to.split(",")


def check_distributed(accelerator: Accelerator, train_args: TrainArguments, optim_args: OptimizerArguments) -> None:
    """What the launcher's config (accelerate_configs/) asks for that the run must adapt to, checked first."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise UsageError(
            f"{launched} processes were launched but Accelerate joined {accelerator.num_processes}: each would "
            "train alone; on a machine without GPUs use accelerate_configs/cpu.yaml"
        )
    if os.environ.get("ACCELERATE_USE_FSDP") == "true" and accelerator.distributed_type != DistributedType.FSDP:
        accelerator.print(FSDP_NEEDS_GPUS)
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    if optim_args.optimizer == "muon":
        raise UsageError(
            "--optimizer muon does not work under DeepSpeed ZeRO, which flattens the weight matrices: use "
            "--optimizer adamw, or accelerate_configs/fsdp2.yaml to shard with Muon"
        )
    # the training loader is not passed to accelerator.prepare (it resumes by itself), so DeepSpeed cannot
    # infer its micro-batch from it
    ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
    ds_config["train_micro_batch_size_per_gpu"] = train_args.per_device_train_batch_size
