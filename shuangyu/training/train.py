"""Pretrain a Shuangyu causal LM with Accelerate: the set-up, then the loop.

    accelerate launch --config_file accelerate_configs/cpu.yaml train_clm.py --config configs/tiny-cpu.yaml \\
        --tokenizer_name outputs/tokenizer --output_dir outputs/tiny-cpu

`train_clm.py` at the repository root runs shuangyu/training/cli.py, which checks the flags before importing
this module and calls `train`. Each piece is built by a module of shuangyu/training/ from its own config and
tested there; this file only puts them together.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from shuangyu.data.loader import DataChanged
from shuangyu.data.prepared import PreparedData
from shuangyu.data.streaming import StreamedData, StreamFailed
from shuangyu.errors import RunDiverged, UsageError, print_error, print_interrupted
from shuangyu.evaluation.bits_per_byte import token_byte_lengths
from shuangyu.progress import bars_only_on_a_terminal
from shuangyu.tokenizer.chat_template import chat_token_ids
from shuangyu.tokenizer.loading import load_tokenizer
from shuangyu.training import checkpoint as ckpt
from shuangyu.training import resume_checks
from shuangyu.training.accelerator import (
    build_accelerator,
    check_distributed,
    end_processes,
    share_from_main,
    sync_only_state_under_ddp,
)
from shuangyu.training.arguments import TrainConfig, total_steps
from shuangyu.training.checks import is_first_process
from shuangyu.training.finetune import adapter_optimizer, apply_lora, as_chat_model, check_finetune, check_lora_launch
from shuangyu.training.metrics import Throughput, device_peak_flops, flops_per_token
from shuangyu.training.model import build_config, build_model
from shuangyu.training.model_folder import drop_shared_tensors
from shuangyu.training.optim import build_optimizer, clip_and_step
from shuangyu.training.run_lock import RunLock
from shuangyu.training.run_log import RunLog, write_environment, write_run_args
from shuangyu.training.schedule import build_scheduler, follow_schedule, warmup_note
from shuangyu.training.state import TrainState
from shuangyu.training.stopping import StopAtOnce, StopRequest, should_stop, stop_with_the_launcher
from shuangyu.training.summary import training_summary
from shuangyu.training.training_data import check_stream, open_training_data, stream_positions
from shuangyu.training.validation import evaluate, format_validation, generate_samples, validation_logs

PROG = "train_clm.py"


def train(config: TrainConfig, out: Path, resume_dir: Path | None) -> int:
    """A run whose flags and output folder cli.check_run passed: set up, train, finish; the exit status."""
    run = None
    at_once = StopAtOnce()  # SIGTERM or SIGHUP during the set-up stops it as Ctrl-C does
    try:
        run = set_up(config, out, resume_dir)
        at_once.restore()  # the loop's StopRequest takes over
        stopped_by = train_loop(run)
        return finish(run, stopped_by)
    except (UsageError, RunDiverged) as err:
        if isinstance(err, RunDiverged):
            err = RunDiverged(f"{err}; {diverged_state(out)}")
        # every process of a launch meets the same error: one of them says it
        status = print_error(PROG, err, show=is_first_process())
    except KeyboardInterrupt:
        # Ctrl-C, SIGTERM or SIGHUP during the set-up (the loop turns the first one into a clean stop), or a second
        # one in the loop. SIGTERM is a preemption, not a failure: exit 0 as when the loop stops for it, nothing to
        # save yet
        if at_once.requested:
            if is_first_process():
                print(f"{PROG}: stopped by {at_once.requested} before training; {interrupted_state(out)}",
                      file=sys.stderr, flush=True)  # fmt: skip
            status = 0
        else:
            status = print_interrupted(PROG, interrupted_state(out), show=is_first_process())
    at_once.restore()
    # past the handler, the traceback (and the model in its frames) can go before the process group does
    accelerator = run.accelerator if run else None
    run = None
    end_processes(accelerator)
    return status


@dataclass
class Run:
    """Everything the loop works with, built once by `set_up`."""

    config: TrainConfig
    out: Path
    accelerator: object
    tokenizer: object
    data: PreparedData | StreamedData
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    loader: object
    val_shards: dict
    state: TrainState
    max_steps: int
    tokens_per_step: int
    meter: Throughput
    log: RunLog
    lock: RunLock | None  # held by the main process while it trains
    byte_lengths: torch.Tensor  # UTF-8 bytes per token id, for bits per byte (on the device, computed once)
    validation: dict = field(default_factory=dict)  # the last held-out scores, for the model card
    data_given: dict | None = None  # the sources and data flags the run started with (resume_checks.data_given)


def set_up(config: TrainConfig, out: Path, resume_dir: Path | None) -> Run:
    stop_with_the_launcher()
    bars_only_on_a_terminal()
    accelerator = build_accelerator(config.train, config.logging, out)
    check_distributed(accelerator, config.train, config.optim)
    lock, refused = None, None
    if accelerator.is_main_process:
        try:
            lock = RunLock(out)
        except UsageError as err:
            refused = str(err)
    if refused := share_from_main(accelerator, refused):
        raise UsageError(refused)
    try:
        return build_run(config, out, resume_dir, accelerator, lock)
    except BaseException:
        if lock:
            lock.abandon()  # a folder this run made and left empty does not outlive the error
        raise


def build_run(config: TrainConfig, out: Path, resume_dir: Path | None, accelerator, lock: RunLock | None) -> Run:
    set_seed(config.train.seed)
    tokenizer = load_tokenizer(config.model.tokenizer_name)
    model_config = build_config(config.model, tokenizer, config.data.block_size)  # checked before the heavy work
    if config.data.block_size is None:  # rows as long as the model's context, whatever the preset
        config.data.block_size = model_config.max_position_embeddings
    check_finetune(config, tokenizer, model_config)
    check_lora_launch(accelerator, config.lora)
    t = config.train
    data_given = resume_checks.data_given(config, tokenizer, accelerator.num_processes)  # kept in every checkpoint
    if resume_dir:
        resume_checks.check_before_data(resume_dir, config, model_config, accelerator.num_processes, out, data_given)
    data = open_training_data(
        config.data, config.model.tokenizer_name, tokenizer, config.train.seed, str(out), accelerator, config.sft
    )
    data.check_vocab_size(model_config.vocab_size)
    model = build_model(config.model, model_config)
    optim_args = config.optim
    if config.sft.sft:
        as_chat_model(model, tokenizer)
    if config.lora.lora_r:
        chat_tokens = chat_token_ids(tokenizer) if config.sft.sft else ()  # finetune.apply_lora says why
        model = apply_lora(model, config.lora, accelerator.print, chat_tokens)
        optim_args = adapter_optimizer(optim_args, accelerator.print)
    tokens_per_step = (
        t.per_device_train_batch_size * data.block_size * t.gradient_accumulation_steps * accelerator.num_processes
    )
    max_steps = total_steps(t, tokens_per_step)
    optimizer = build_optimizer(model, optim_args)
    scheduler = build_scheduler(optimizer, config.schedule, max_steps)
    if note := warmup_note(config.schedule, max_steps, optim_args.learning_rate):
        accelerator.print(note)
    # pinned host memory is what makes the copy to the GPU asynchronous (non_blocking); a CPU run needs neither
    loader = data.train_loader(
        t.per_device_train_batch_size,
        accelerator=accelerator,
        seed=t.seed,
        num_workers=config.data.dataloader_num_workers,
        pin_memory=accelerator.device.type == "cuda",
        position_ids=config.data.document_attention,
        **({"agree_every": stream_agreement(config)} if config.data.streaming else {}),
    )
    if config.data.streaming:
        check_stream(loader, accelerator)
    val_shards = data.validation_shards(
        config.logging.per_device_eval_batch_size,
        config.logging.eval_rows,
        accelerator.process_index,
        accelerator.num_processes,
        position_ids=config.data.document_attention,  # scored with the attention training uses
    )
    peak = device_peak_flops(accelerator.device, config.logging.peak_tflops)
    meter = Throughput(flops_per_token(model, data.block_size), peak, accelerator.num_processes)
    sync_only_state_under_ddp(accelerator, model)
    model, optimizer = accelerator.prepare(model, optimizer)
    # the scheduler is stepped by the loop once per optimizer step (a prepared one would step once per process)
    state = TrainState()
    # a stream's position is per process: saved by `save` beside accelerate's state, which keeps the main one's only
    streaming = config.data.streaming
    accelerator.register_for_checkpointing(*([] if streaming else [loader]), state, scheduler)
    accelerator.register_save_state_pre_hook(drop_shared_tensors)
    if resume_dir:
        try:
            accelerator.load_state(str(resume_dir / "accelerate"))
        except UsageError as err:  # the data position's checks: every checkpoint of the run has the same one
            rebuilt = isinstance(err, DataChanged) and data.rebuilt_because
            why = f" ({data.path} was prepared again: {data.rebuilt_because})" if rebuilt else ""
            instead = (
                f", or start over {resume_checks.elsewhere(resume_dir, out)}" if isinstance(err, DataChanged) else ""
            )
            raise UsageError(f"--resume_from_checkpoint {resume_dir}: {err}{instead}{why}") from None
        except Exception as err:  # torch, safetensors and pickle each raise their own types for a bad file
            raise UsageError(
                f"--resume_from_checkpoint {resume_dir}: could not load it ({type(err).__name__}: {err}); "
                "pass an earlier checkpoint"
            ) from None
        # load_state restores accelerate's micro-batch count, which says when gradients sync (count % accumulation
        # == 0). Counted under the saving run's accumulation, it put a run resumed with another split of the same
        # global batch (--per_device_train_batch_size halved, --gradient_accumulation_steps doubled) off by part of
        # a step: its first update took half a batch. A checkpoint is always at an update, so count from there.
        accelerator.step = state.step * t.gradient_accumulation_steps
        # the optimizer's loaded rates are the old schedule's: this command's schedule from the first resumed step
        follow_schedule(scheduler)
        if streaming:
            position = ckpt.read_stream_position(resume_dir, accelerator.process_index, accelerator.num_processes)
            try:
                loader.load_state_dict(position)
            except DataChanged as err:
                raise UsageError(
                    f"--resume_from_checkpoint {resume_dir}: {err}, or start over {resume_checks.elsewhere(resume_dir, out)}"
                ) from None
            except UsageError as err:
                raise UsageError(f"--resume_from_checkpoint {resume_dir}: {err}") from None
        accelerator.print(f"resumed from {resume_dir} at step {state.step}")
    if accelerator.is_main_process:
        # only now that every check passed: a run refused for its flags leaves the one it would replace as it was
        if config.checkpoint.overwrite_output_dir and not resume_dir:
            ckpt.start_fresh(out)
        if write_run_args(out, config.as_dict(), state.step):
            accelerator.print(
                f"note: {out / 'train_log.jsonl'}: its last line was cut off when the run stopped; left out"
            )
        write_environment(out, accelerator.num_processes, accelerator.mixed_precision)
        accelerator.init_trackers(
            "shuangyu", config={k: str(v) for group in config.as_dict().values() for k, v in group.items()}
        )
    log = RunLog(accelerator, out)
    return Run(config, out, accelerator, tokenizer, data, model, optimizer, scheduler, loader, val_shards,
               state, max_steps, tokens_per_step, meter, log, lock,
               token_byte_lengths(tokenizer).to(accelerator.device), data_given=data_given)  # fmt: skip


def train_loop(run: Run) -> str | None:
    """Train to max_steps; returns what stopped the run early (a signal's name), or None.

    A step that neither logs, evaluates nor saves makes no host sync: the loss, the gradient norm and whether the
    update was skipped stay on the device until a logging step reads them. Too many non-finite steps in a row
    (--max_bad_steps) raise RunDiverged at the next step that logs, evaluates or saves."""
    accelerator, cfg, state, model = run.accelerator, run.config, run.state, run.model
    stop, stopping = StopRequest(), False
    # a bar on a terminal; in a log file (nohup, a cluster job) a plain line per logging step instead
    bar = tqdm(
        total=run.max_steps, initial=state.step, desc="training", disable=None if accelerator.is_main_process else True
    )
    loss_sum, micro_steps = torch.zeros((), device=accelerator.device), 0
    max_bad = cfg.train.max_bad_steps
    state.start_clock()
    first_step = state.step + 1
    run.meter.restart()  # set-up (prepare, a resume's load) is not training
    model.train()
    try:
        while state.step < run.max_steps and not stopping:
            for batch in run.loader:  # one epoch (the rest of it, after a resume)
                batch = {k: v.to(accelerator.device, non_blocking=run.loader.pin_memory) for k, v in batch.items()}
                with accelerator.accumulate(model):
                    # return_logits=False: the chunked head + loss that never holds the (tokens x vocab) logits
                    # labels: the batch's own (conversations: -100 outside the replies), else the tokens themselves
                    loss = model(**{"labels": batch["input_ids"], **batch}, return_logits=False).loss
                    accelerator.backward(loss)
                    loss_sum, micro_steps = loss_sum + loss.detach(), micro_steps + 1
                    if accelerator.sync_gradients:
                        grad_norm, good = clip_and_step(accelerator, model, run.optimizer, cfg.optim.max_grad_norm)
                if not accelerator.sync_gradients:
                    continue
                lr = run.optimizer.param_groups[0]["lr"]  # the rate this step trained with, for its log line
                run.scheduler.step()  # also after a skipped update, as the step count does
                state.advance(run.tokens_per_step, good, max_bad)
                run.meter.add(run.tokens_per_step)
                bar.update(1)
                step_loss, loss_sum, micro_steps = loss_sum / micro_steps, torch.zeros_like(loss_sum), 0
                # Up to here nothing waits for the device. The steps that log, evaluate or save read it anyway,
                # and read the bad-step counts first: a diverged run stops at the first of them.
                last = state.step == run.max_steps
                log_now = state.step % cfg.logging.logging_steps == 0 or last
                eval_now = run.val_shards and (state.step % cfg.logging.eval_steps == 0 or last)
                if log_now or eval_now:
                    state.check(max_bad, accelerator.print)
                logs = {}
                if log_now:
                    logs = training_logs(run, step_loss, grad_norm, lr)
                    show_progress(run, bar, logs)
                if eval_now:
                    with run.meter.paused():  # validation is not training throughput
                        logs |= validate(run)
                if logs:
                    run.log(state.step, logs | {"time_s": state.seconds()})
                stopping = should_stop(stop, accelerator, state.step, cfg.logging.logging_steps)
                if state.step % cfg.checkpoint.save_steps == 0 or last or stopping:
                    state.check(max_bad, accelerator.print)  # a checkpoint records the bad steps in a row
                    with run.meter.paused():
                        save(run)
                if state.step == first_step:  # its interval held the loader's start and --compile's compiling
                    run.meter.restart(accelerator.device)
                if last or stopping:
                    break
    except StreamFailed as err:  # every process stops here, at the same step
        raise UsageError(f"{err}{save_before_stopping(run)}") from None
    finally:
        bar.close()
        run.log.close()
        if state.step < run.max_steps:
            stop.restore()
        # else the run is complete: a signal from now on (final/, the push, the exit) is only noted, so the run
        # still exits 0, not 143 or 130, which a requeue script would read as a failure; the process ends soon
    # a signal during the last step: the run is complete all the same
    return stop.requested if stopping and state.step < run.max_steps else None


def interrupted_state(out: Path) -> str:
    """What an interrupted run leaves: its checkpoints, each written whole, or nothing to resume."""
    done = ckpt.complete_checkpoints(out)
    if done:
        return f"the last checkpoint, {done[-1][1]}, is intact: rerun with --resume_from_checkpoint latest"
    return "no step was saved: rerun the same command to start again"


def diverged_state(out: Path) -> str:
    """What a diverged run leaves to start again from: its last checkpoint taken before the non-finite steps."""
    good = [
        path for _, path in ckpt.complete_checkpoints(out) if not ckpt.read_checkpoint_info(path).get("bad_in_a_row")
    ]
    if good:
        return f"the last good checkpoint, {good[-1]}, is kept (--resume_from_checkpoint latest resumes from it)"
    return "no checkpoint was saved before the non-finite steps: start again with --overwrite_output_dir"


def stream_agreement(config: TrainConfig) -> int:
    """--streaming: batches between two checks that no process's stream has failed (StreamLoader.agree_every), at
    the logging steps, or more often when a step takes many batches: each process reads that many batches ahead."""
    accumulation = config.train.gradient_accumulation_steps
    return accumulation * max(1, min(config.logging.logging_steps, 256 // accumulation))


def save_before_stopping(run: Run) -> str:
    """A stream that fails mid-run: the steps taken since the last checkpoint are saved first."""
    state = run.state
    if state.step == 0 or ckpt.checkpoint_dir(run.out, state.step).exists():
        return ""
    state.check(run.config.train.max_bad_steps, run.accelerator.print)
    save(run)
    return f" (stopped at step {state.step}; the steps so far are saved in {ckpt.checkpoint_dir(run.out, state.step)})"


def training_logs(run: Run, step_loss: torch.Tensor, grad_norm: torch.Tensor, lr: float) -> dict:
    """This step's loss (the mean over its micro-batches and processes), gradient norm, learning rate (the one it
    trained with: the scheduler has stepped on to the next step's by now) and throughput."""
    throughput = run.meter.measure()
    return {
        "train/loss": run.accelerator.reduce(step_loss, "mean").item(),
        "train/grad_norm": float(grad_norm),
        "train/lr": lr,
        "train/tokens": run.state.tokens,
        **{f"train/{k}": v for k, v in throughput.items()},
    }


def show_progress(run: Run, bar, logs: dict) -> None:
    bar.set_postfix(loss=f"{logs['train/loss']:.3f}", tok_s=f"{logs['train/tokens_per_s']:,.0f}")
    if bar.disable:
        run.accelerator.print(
            f"step {run.state.step}/{run.max_steps} loss {logs['train/loss']:.4f} lr {logs['train/lr']:.2e} "
            f"tokens/s {logs['train/tokens_per_s']:,.0f}"
        )


def validate(run: Run) -> dict:
    """Held-out scores per validation source and samples; kept for the card, printed, returned as logs."""
    accelerator = run.accelerator
    results = evaluate(run.model, run.val_shards, run.byte_lengths, accelerator)
    samples = generate_samples(
        accelerator.unwrap_model(run.model), run.tokenizer, accelerator.device, chat=run.config.sft.sft
    )
    run.validation = results
    if accelerator.is_main_process:
        tqdm.write(format_validation(run.state.step, results, samples))
    return validation_logs(results, samples)


def save(run: Run) -> None:
    accelerator, state = run.accelerator, run.state
    positions = None
    if run.config.data.streaming:  # every process's stream position, for the checkpoint and the card's counts
        positions = stream_positions(run.loader, accelerator)
        run.data.record_positions(positions)
    summary = training_summary(
        run.config,
        run.data,
        state,
        run.max_steps,
        accelerator.num_processes,
        accelerator.mixed_precision,
        run.validation,
    )
    card = {
        "name": run.out.resolve().name,
        "training": summary,
        "load_path": str(ckpt.checkpoint_dir(run.out, state.step) / "model"),
    }
    path = ckpt.save_checkpoint(
        accelerator,
        run.out,
        state.step,
        run.model,
        run.tokenizer,
        card=card,
        info={
            "tokens": state.tokens,
            "max_steps": run.max_steps,
            "bad_in_a_row": state.bad_in_a_row,
            **resume_checks.resume_record(run.config, run.data.block_size, accelerator.num_processes, run.data_given),
        },
        keep_last=run.config.checkpoint.save_total_limit,
        stream_positions=positions,
    )
    accelerator.print(f"saved {path}")


def finish(run: Run, stopped_by: str | None) -> int:
    accelerator, state, hub = run.accelerator, run.state, run.config.hub
    if stopped_by:
        accelerator.print(f"stopped by {stopped_by} at step {state.step}; resume with --resume_from_checkpoint latest")
    elif accelerator.is_main_process:
        final = ckpt.publish_final(run.out)
        accelerator.print(f"done: {state.step} steps, {state.tokens:,} tokens; model in {final}")
    run.model = None  # the process group outlives the model (accelerator.end_processes)
    end_processes(accelerator)  # flushes the trackers' logs, which the push takes along
    if run.lock:
        run.lock.release()
    if hub.push_to_hub and not stopped_by and accelerator.is_main_process:
        from shuangyu.training.hub import push_final

        message = f"train_clm.py: {state.step} steps, {state.tokens:,} tokens"
        return 0 if push_final(run.out, run.out / "final", message, hub) else 1
    return 0
