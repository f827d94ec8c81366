"""Pretrain a Shuangyu causal LM with Accelerate.

    accelerate launch --config_file accelerate_configs/cpu.yaml train_clm.py --config configs/tiny-cpu.yaml

The loop is in `main`; its pieces (arguments, data, optimizer, schedule, checkpoints, metrics, evaluation)
live in training/ and are tested there.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import TorchDynamoPlugin, set_seed
from tqdm.auto import tqdm

import modeling  # noqa: F401  (registers the Shuangyu classes with the Auto classes)
from tokenizer.sources import SourceError
from training import checkpoint as ckpt
from training.args import ArgumentError, parse_args, total_steps
from training.data import PrepareArguments, PreparedData, load_tokenizer, prepare
from training.evaluation import evaluate, generate_samples, token_byte_lengths
from training.metrics import Throughput, device_peak_flops, flops_per_token
from training.optim import build_optimizer, clip_and_step
from training.schedule import build_scheduler

PROG = "train_clm.py"


class TrainState:
    """What a checkpoint needs besides model, optimizer, scheduler and data position."""

    def __init__(self):
        self.step, self.tokens, self.bad_in_a_row = 0, 0, 0

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines past the checkpoint being resumed: those steps are about to be trained again."""
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in lines))


def mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"  # fp16: Accelerate adds loss scaling


def should_stop(stop: ckpt.StopRequest, accelerator, step: int, every: int) -> bool:
    """Whether a signal asks to stop after this step. With several processes every rank must agree on the
    step, or the next collective hangs: they vote every `every` steps (a collective, so not every step)."""
    if accelerator.num_processes == 1:
        return bool(stop.requested)
    if step % every:
        return False
    flag = torch.tensor(float(bool(stop.requested)), device=accelerator.device)
    if accelerator.reduce(flag, "max").item():
        stop.requested = stop.requested or "another process's signal"
        return True
    return False


def check_output_dir(out: Path, train_args) -> None:
    """Refuse to train over another run unless resuming it or told to overwrite it."""
    holds_run = ckpt.complete_checkpoints(out) or (out / "final").exists()
    if not holds_run or train_args.resume_from_checkpoint:
        return
    if not train_args.overwrite_output_dir:
        raise ArgumentError(
            f"--output_dir {out} holds another run; pass --resume_from_checkpoint latest to continue it, "
            "or --overwrite_output_dir to start over"
        )


def load_data(model_args, data_args, train_args, tokenizer, accelerator) -> PreparedData:
    """Prepare (once, on the main process; a cache hit does no work) or open the token blocks."""
    data_dir = data_args.data_dir or str(Path(train_args.output_dir) / "data")
    if data_args.train_files or data_args.dataset_name:
        if accelerator.is_main_process:
            prepare(
                PrepareArguments(
                    output_dir=data_dir,
                    tokenizer_name=model_args.tokenizer_name,
                    files=data_args.train_files,
                    dataset=data_args.dataset_name,
                    exclude=data_args.exclude,
                    text_column=data_args.text_column,
                    validation_files=data_args.validation_files,
                    block_size=data_args.block_size,
                    num_proc=data_args.preprocessing_num_workers or 1,
                    seed=train_args.seed,
                ),
                show_progress=accelerator.is_local_main_process,
            )
        accelerator.wait_for_everyone()
    elif not (Path(data_dir) / "manifest.json").is_file():
        raise ArgumentError("no training data: give --train_files (or --dataset_name), or a prepared --data_dir")
    return PreparedData.load(data_dir, tokenizer)


def build_model(model_args, tokenizer, data: PreparedData):
    from transformers import AutoConfig, AutoModelForCausalLM

    from modeling import PRESETS, ShuangyuConfig, ShuangyuForCausalLM

    kwargs = {"attn_implementation": model_args.attn_implementation}
    if model_args.model_name_or_path:
        model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, trust_remote_code=True, **kwargs)
    else:
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
        if model_args.model_config in PRESETS:
            # round the vocabulary up to a multiple of 64: matrix units like aligned shapes
            vocab = 64 * math.ceil(len(tokenizer) / 64)
            config = ShuangyuConfig.from_preset(model_args.model_config, vocab_size=vocab, **ids)
        elif Path(model_args.model_config).exists():
            config = AutoConfig.from_pretrained(model_args.model_config, trust_remote_code=True)
        else:
            raise ArgumentError(
                f"--model_config {model_args.model_config!r}: not a preset ({', '.join(PRESETS)}) nor a config file"
            )
        model = ShuangyuForCausalLM._from_config(config, **kwargs)
    config = model.config
    if len(tokenizer) > config.vocab_size:
        raise ArgumentError(
            f"the tokenizer has {len(tokenizer):,} tokens but the model's vocab_size is {config.vocab_size:,}"
        )
    if data.block_size > config.max_position_embeddings:
        raise ArgumentError(
            f"--block_size {data.block_size} is above the model's max_position_embeddings {config.max_position_embeddings}"
        )
    data.check_vocab_size(config.vocab_size)
    if model_args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def save_model_folder(accelerator, model, tokenizer, path: Path) -> None:
    """An HF folder anyone can load: weights (safetensors), config with auto_map and code, tokenizer."""
    state_dict = accelerator.get_state_dict(model)  # gathers a sharded model on every rank
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(path, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(path)


def main(argv: list[str] | None = None) -> int:
    try:
        model_args, data_args, train_args = parse_args(argv, PROG)
        return train(model_args, data_args, train_args)
    except (ArgumentError, SourceError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2


def train(model_args, data_args, train_args) -> int:
    if not train_args.output_dir:
        raise ArgumentError("give --output_dir")
    if not model_args.tokenizer_name:
        raise ArgumentError("give --tokenizer_name (a folder written by tokenizer/train_bpe.py)")
    out = Path(train_args.output_dir)
    check_output_dir(out, train_args)
    resume_dir = ckpt.resolve_resume(out, train_args.resume_from_checkpoint)
    trackers = {"none": None, "all": "all"}.get(train_args.report_to, train_args.report_to.split(","))
    accelerator = Accelerator(
        mixed_precision=mixed_precision(train_args.mixed_precision),
        gradient_accumulation_steps=train_args.gradient_accumulation_steps,
        log_with=trackers,
        project_dir=str(out),
        dynamo_plugin=TorchDynamoPlugin(backend="inductor") if train_args.compile else None,
    )
    if accelerator.is_main_process and train_args.overwrite_output_dir and not resume_dir:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        shutil.rmtree(out / "final", ignore_errors=True)
        (out / "train_log.jsonl").unlink(missing_ok=True)
    set_seed(train_args.seed)

    tokenizer = load_tokenizer(model_args.tokenizer_name)
    data = load_data(model_args, data_args, train_args, tokenizer, accelerator)
    model = build_model(model_args, tokenizer, data)
    tokens_per_step = (
        train_args.per_device_train_batch_size * data.block_size * train_args.gradient_accumulation_steps
        * accelerator.num_processes
    )  # fmt: skip
    max_steps = total_steps(train_args, tokens_per_step)
    optimizer = build_optimizer(
        model, train_args.optimizer, lr=train_args.learning_rate, weight_decay=train_args.weight_decay,
        betas=(train_args.adam_beta1, train_args.adam_beta2), eps=train_args.adam_epsilon,
        momentum=train_args.muon_momentum, muon_scale=train_args.muon_scale,
    )  # fmt: skip
    scheduler = build_scheduler(
        optimizer, train_args.lr_scheduler_type, train_args.warmup_steps, max_steps,
        train_args.min_lr_ratio, train_args.decay_fraction,
    )  # fmt: skip
    loader = data.train_loader(
        train_args.per_device_train_batch_size, accelerator=accelerator, seed=train_args.seed,
        num_workers=train_args.dataloader_num_workers, pin_memory=accelerator.device.type == "cuda",
    )  # fmt: skip
    val_loaders = {
        name: accelerator.prepare(torch.utils.data.DataLoader(ds, batch_size=train_args.per_device_eval_batch_size))
        for name, ds in data.validation_datasets().items()
    }
    flops = flops_per_token(model, data.block_size)
    model, optimizer = accelerator.prepare(model, optimizer)
    state = TrainState()
    # the scheduler is ours to step, once per optimizer step (a prepared one steps once per process)
    accelerator.register_for_checkpointing(loader, state, scheduler)
    if resume_dir:
        accelerator.load_state(str(resume_dir / "accelerate"))
        accelerator.print(f"resumed from {resume_dir} at step {state.step}")
        if accelerator.is_main_process:
            truncate_log(out / "train_log.jsonl", state.step)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        config = {"model": asdict(model_args), "data": asdict(data_args), "train": asdict(train_args)}
        (out / "run_args.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        accelerator.init_trackers("shuangyu", config={k: str(v) for c in config.values() for k, v in c.items()})
    byte_lengths = token_byte_lengths(tokenizer)
    meter = Throughput(flops, device_peak_flops(accelerator.device, train_args.peak_tflops), accelerator.num_processes)

    def save(final: bool = False):
        path = ckpt.save_checkpoint(
            accelerator, out, state.step, {"tokens": state.tokens, "final": final},
            lambda p: save_model_folder(accelerator, model, tokenizer, p), train_args.save_total_limit,
        )  # fmt: skip
        accelerator.print(f"saved {path}")

    stop = ckpt.StopRequest()
    bar = tqdm(total=max_steps, initial=state.step, disable=not accelerator.is_main_process, desc="training")
    log_file = open(out / "train_log.jsonl", "a") if accelerator.is_main_process else None
    model.train()
    stopping = False
    while state.step < max_steps and not stopping:
        for batch in loader:
            batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
            with accelerator.accumulate(model):
                loss = model(**batch, labels=batch["input_ids"]).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm, good = clip_and_step(accelerator, model, optimizer, train_args.max_grad_norm)
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state.step += 1
            state.tokens += tokens_per_step
            meter.add(tokens_per_step)
            bar.update(1)
            state.bad_in_a_row = 0 if good else state.bad_in_a_row + 1
            if not good:
                accelerator.print(f"step {state.step}: non-finite loss or gradient norm, update skipped")
                if state.bad_in_a_row >= train_args.max_bad_steps:
                    raise ArgumentError(
                        f"step {state.step}: {state.bad_in_a_row} non-finite steps in a row; stopping (the last "
                        f"good checkpoint is kept): lower --learning_rate or check the data"
                    )
            logs = {}
            if state.step % train_args.logging_steps == 0 or state.step == max_steps:
                logs = {"train/loss": accelerator.reduce(loss.detach(), "mean").item(),
                        "train/lr": scheduler.get_last_lr()[0], "train/grad_norm": float(grad_norm),
                        "train/tokens": state.tokens, **{f"train/{k}": v for k, v in meter.measure().items()}}  # fmt: skip
                bar.set_postfix(loss=f"{logs['train/loss']:.3f}", tok_s=f"{logs['train/tokens_per_s']:,.0f}")
            if val_loaders and (state.step % train_args.eval_steps == 0 or state.step == max_steps):
                logs |= evaluate(model, val_loaders, byte_lengths, accelerator, train_args.eval_batches)
                logs |= generate_samples(accelerator.unwrap_model(model), tokenizer, accelerator.device)
            if logs:
                accelerator.log(logs, step=state.step)
                if log_file:
                    log_file.write(json.dumps({"step": state.step, **logs}, ensure_ascii=False) + "\n")
                    log_file.flush()
            stopping = should_stop(stop, accelerator, state.step, train_args.logging_steps)
            if state.step % train_args.save_steps == 0 or state.step == max_steps or stopping:
                save(final=state.step == max_steps)
            if state.step >= max_steps or stopping:
                break
    bar.close()
    if stopping:
        accelerator.print(
            f"stopped by {stop.requested} at step {state.step}; resume with --resume_from_checkpoint latest"
        )
    elif accelerator.is_main_process:
        final = out / "final"
        shutil.rmtree(final, ignore_errors=True)
        shutil.copytree(ckpt.complete_checkpoints(out)[-1][1] / "model", final)
        accelerator.print(f"done: {state.step} steps, {state.tokens:,} tokens; model in {final}")
    if log_file:
        log_file.close()
    stop.restore()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
