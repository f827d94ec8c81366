"""Pretrain a Shuangyu causal LM with Accelerate.

    accelerate launch --config_file accelerate_configs/cpu.yaml train_clm.py --config configs/tiny-cpu.yaml \
        --tokenizer_name outputs/tokenizer --output_dir outputs/tiny-cpu

The loop is `train`; its pieces (arguments, data, model set-up, optimizer, schedule, checkpoints, metrics,
evaluation) live in training/ and are tested there.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict

from accelerate import Accelerator
from accelerate.utils import TorchDynamoPlugin, set_seed
from tqdm.auto import tqdm

from tokenizer.sources import SourceError
from training import checkpoint as ckpt
from training import setup
from training.args import ArgumentError, parse_args, total_steps
from training.data import load_tokenizer
from training.evaluation import evaluate, format_eval, generate_samples, token_byte_lengths
from training.metrics import Throughput, device_peak_flops, flops_per_token
from training.optim import build_optimizer, clip_and_step
from training.schedule import build_scheduler

PROG = "train_clm.py"


def main(argv: list[str] | None = None) -> int:
    try:
        return train(*parse_args(argv, PROG))
    except (ArgumentError, SourceError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2


def train(model_args, data_args, train_args) -> int:
    out, resume_dir = setup.check_run(model_args, data_args, train_args)
    accelerator = Accelerator(
        cpu=setup.cpu_processes(),
        mixed_precision=setup.mixed_precision(train_args.mixed_precision),
        gradient_accumulation_steps=train_args.gradient_accumulation_steps,
        log_with=setup.trackers(train_args.report_to),
        project_dir=str(out),
        dynamo_plugin=TorchDynamoPlugin(backend="inductor") if train_args.compile else None,
    )
    setup.check_distributed(accelerator, train_args)
    set_seed(train_args.seed)
    tokenizer = load_tokenizer(model_args.tokenizer_name)
    config = setup.build_config(model_args, tokenizer, data_args.block_size)  # checks before the heavy work
    if accelerator.is_main_process and train_args.overwrite_output_dir and not resume_dir:
        setup.start_fresh(out)
    data = setup.load_data(model_args, data_args, train_args, tokenizer, accelerator)
    data.check_vocab_size(config.vocab_size)
    model = setup.build_model(model_args, config)
    tokens_per_step = (train_args.per_device_train_batch_size * data.block_size
                       * train_args.gradient_accumulation_steps * accelerator.num_processes)  # fmt: skip
    max_steps = total_steps(train_args, tokens_per_step)
    optimizer = build_optimizer(
        model, train_args.optimizer, lr=train_args.learning_rate, weight_decay=train_args.weight_decay,
        betas=(train_args.adam_beta1, train_args.adam_beta2), eps=train_args.adam_epsilon,
        momentum=train_args.muon_momentum, muon_scale=train_args.muon_scale,
    )  # fmt: skip
    scheduler = build_scheduler(optimizer, train_args.lr_scheduler_type, train_args.warmup_steps, max_steps,
                                train_args.min_lr_ratio, train_args.decay_fraction)  # fmt: skip
    loader = data.train_loader(train_args.per_device_train_batch_size, accelerator=accelerator, seed=train_args.seed,
                               num_workers=train_args.dataloader_num_workers,
                               position_ids=data_args.document_attention)  # fmt: skip
    val_loaders = {k: accelerator.prepare(v) for k, v in data.validation_loaders(train_args.per_device_eval_batch_size).items()}  # fmt: skip
    meter = Throughput(flops_per_token(model, data.block_size),
                       device_peak_flops(accelerator.device, train_args.peak_tflops), accelerator.num_processes)  # fmt: skip
    model, optimizer = accelerator.prepare(model, optimizer)
    # the scheduler is stepped here once per optimizer step (a prepared one would step once per process)
    state = setup.TrainState()
    accelerator.register_for_checkpointing(loader, state, scheduler)
    if resume_dir:
        accelerator.load_state(str(resume_dir / "accelerate"))
        accelerator.print(f"resumed from {resume_dir} at step {state.step}")
    if accelerator.is_main_process:
        setup.write_run_args(out, model_args, data_args, train_args, state.step)
        accelerator.init_trackers("shuangyu", config={k: str(v) for a in (model_args, data_args, train_args)
                                                      for k, v in asdict(a).items()})  # fmt: skip
    byte_lengths = token_byte_lengths(tokenizer)
    log = setup.RunLog(accelerator, out)

    def save():
        summary = setup.training_summary(model_args, data_args, train_args, data, state, max_steps,
                                         accelerator.num_processes, accelerator.mixed_precision, validation)  # fmt: skip
        card = {"name": out.resolve().name, "training": summary,
                "load_path": str(ckpt.checkpoint_dir(out, state.step) / "model")}  # fmt: skip
        save_folder = lambda path: setup.save_model_folder(accelerator, model, tokenizer, path, card)  # noqa: E731
        info = {"tokens": state.tokens, "max_steps": max_steps}
        path = ckpt.save_checkpoint(accelerator, out, state.step, info, save_folder, train_args.save_total_limit)
        accelerator.print(f"saved {path}")

    stop, stopping, validation = ckpt.StopRequest(), False, {}
    # a bar on a terminal; in a log file (nohup, a cluster job) a plain line per logging step instead
    bar = tqdm(total=max_steps, initial=state.step, disable=None if accelerator.is_main_process else True,
               desc="training")  # fmt: skip
    model.train()
    started = time.perf_counter()
    while state.step < max_steps and not stopping:
        for batch in loader:  # one epoch (the rest of it, after a resume)
            batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
            with accelerator.accumulate(model):
                loss = model(**batch, labels=batch["input_ids"]).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm, good = clip_and_step(accelerator, model, optimizer, train_args.max_grad_norm)
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state.advance(tokens_per_step, good, train_args.max_bad_steps, accelerator.print)
            meter.add(tokens_per_step)
            bar.update(1)
            logs, last = {}, state.step == max_steps
            if state.step % train_args.logging_steps == 0 or last:
                logs = {"train/loss": accelerator.reduce(loss.detach(), "mean").item(), "train/grad_norm": float(grad_norm),
                        "train/lr": scheduler.get_last_lr()[0], "train/tokens": state.tokens,
                        **{f"train/{k}": v for k, v in meter.measure().items()}}  # fmt: skip
                bar.set_postfix(loss=f"{logs['train/loss']:.3f}", tok_s=f"{logs['train/tokens_per_s']:,.0f}")
                if bar.disable:
                    accelerator.print(f"step {state.step}/{max_steps} loss {logs['train/loss']:.4f} "
                                      f"lr {logs['train/lr']:.2e} tokens/s {logs['train/tokens_per_s']:,.0f}")  # fmt: skip
            if val_loaders and (state.step % train_args.eval_steps == 0 or last):
                logs |= evaluate(model, val_loaders, byte_lengths, accelerator, train_args.eval_batches)
                logs |= generate_samples(accelerator.unwrap_model(model), tokenizer, accelerator.device)
                validation = setup.last_validation(logs)
                if accelerator.is_main_process:
                    tqdm.write(format_eval(state.step, logs))
            if logs:
                log(state.step, logs | {"time_s": time.perf_counter() - started})
            stopping = setup.should_stop(stop, accelerator, state.step, train_args.logging_steps)
            if state.step % train_args.save_steps == 0 or last or stopping:
                save()
                meter.measure()  # evaluation and saving are not training throughput
            if last or stopping:
                break
    bar.close()
    log.close()
    stop.restore()
    if stopping:
        accelerator.print(
            f"stopped by {stop.requested} at step {state.step}; resume with --resume_from_checkpoint latest"
        )
    elif accelerator.is_main_process:
        final = setup.publish_final(out)
        accelerator.print(f"done: {state.step} steps, {state.tokens:,} tokens; model in {final}")
    accelerator.end_training()  # flushes the trackers' logs, which the push takes along
    if train_args.push_to_hub and not stopping and accelerator.is_main_process:
        return 0 if setup.push_final(out, out / "final", state, train_args) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
