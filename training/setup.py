"""Setting up a training run: precision, output folder, data, model, and the state a checkpoint carries.

Everything train_clm.py needs besides the loop itself, so that tests reach it through training/.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate.utils import DistributedType

from training import checkpoint as ckpt
from training.args import ArgumentError
from training.data import PrepareArguments, PreparedData, format_report, prepare


class TrainState:
    """What a checkpoint needs besides model, optimizer, scheduler and data position."""

    def __init__(self):
        self.step, self.tokens, self.bad_in_a_row = 0, 0, 0

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)

    def advance(self, tokens: int, good: bool, max_bad: int, say=print) -> None:
        """Count an optimizer step; a skipped (non-finite) one is reported, and too many in a row stop the run
        (every process sees the same global gradient norm, so all stop together)."""
        self.step += 1
        self.tokens += tokens
        self.bad_in_a_row = 0 if good else self.bad_in_a_row + 1
        if not good:
            say(f"step {self.step}: non-finite gradient norm, update skipped")
        if self.bad_in_a_row >= max_bad:
            raise ArgumentError(
                f"step {self.step}: {self.bad_in_a_row} non-finite steps in a row, stopping (the last good "
                "checkpoint is kept): lower --learning_rate or check the data"
            )


def check_run(model_args, data_args, train_args) -> tuple[Path, Path | None]:
    """Flags that must be there, and the output folder, checked before anything starts."""
    if not train_args.output_dir:
        raise ArgumentError("give --output_dir")
    if not model_args.tokenizer_name:
        raise ArgumentError("give --tokenizer_name (a folder written by tokenizer/train_bpe.py)")
    if not (train_args.max_steps or train_args.max_train_tokens):
        raise ArgumentError("give --max_steps or --max_train_tokens")
    out = Path(train_args.output_dir)
    check_output_dir(out, train_args)
    if train_args.push_to_hub:
        check_hub(train_args)
    try:
        resume_dir = ckpt.resolve_resume(out, train_args.resume_from_checkpoint)
    except ValueError as err:
        raise ArgumentError(str(err)) from None
    return out, resume_dir


def check_hub(train_args) -> None:
    """--push_to_hub: the repo id and a token are checked, and the repo created, before training starts, so a
    run does not train for days to fail at the push."""
    from eval.push import PushError, check_repo_id, check_token, create_repo

    try:
        check_repo_id(train_args.hub_model_id)
        check_token()
        if int(os.environ.get("RANK", "0")) == 0:
            create_repo(train_args.hub_model_id, train_args.hub_private_repo)
    except PushError as err:
        raise ArgumentError(f"--push_to_hub: {err}") from None


def push_final(out: Path, final: Path, state: TrainState, train_args) -> bool:
    """Push the finished model (and the tensorboard logs); a failure keeps the model and says how to retry."""
    from eval.push import PushError, push_folder

    logs = out / "shuangyu" if train_args.hub_push_logs and (out / "shuangyu").is_dir() else None
    try:
        url = push_folder(final, train_args.hub_model_id, private=train_args.hub_private_repo,
                          revision=train_args.hub_revision, logs=logs,
                          commit_message=f"train_clm.py: {state.step} steps, {state.tokens:,} tokens")  # fmt: skip
    except PushError as err:
        retry = f"python eval/push.py {final} --hub_model_id {train_args.hub_model_id}"
        print(f"train_clm.py: error: {err}; the model is saved in {final}: push it with `{retry}`", file=sys.stderr)
        return False
    print(f"pushed to {url}")
    return True


def training_summary(
    model_args, data_args, train_args, data, state, max_steps: int, processes: int, precision: str, validation: dict
) -> dict:
    """What the model card says about training: the data mix and the recipe, at this checkpoint."""
    manifest = data.manifest
    sources = [
        {
            "name": s["name"],
            "files": [Path(f).name for f in s.get("files") or []],
            "dataset": s.get("dataset"),
            "weight": s.get("weight"),
            "docs_taken": s.get("docs_taken"),
            "tokens_taken": s.get("tokens_taken"),
            "passes": s.get("passes"),
        }
        for s in manifest["sources"]
    ]
    batch = train_args.per_device_train_batch_size * train_args.gradient_accumulation_steps * processes
    recipe = {
        "model": model_args.model_name_or_path or model_args.model_config,
        "tokenizer_vocabulary": manifest["tokenizer"]["vocab_size"],
        "block_size": data.block_size,
        "batch": f"{batch} rows x {data.block_size} tokens ({processes} process{'es' if processes > 1 else ''} x "
        f"{train_args.per_device_train_batch_size} rows x {train_args.gradient_accumulation_steps} accumulation)",
        "steps": state.step,
        "planned_steps": max_steps,
        "tokens_seen": state.tokens,
        "optimizer": train_args.optimizer + (f" ({train_args.muon_scale})" if train_args.optimizer == "muon" else ""),
        "learning_rate": train_args.learning_rate,
        "weight_decay": train_args.weight_decay,
        "schedule": f"{train_args.lr_scheduler_type}, {train_args.warmup_steps} warmup steps",
        "gradient_clipping": train_args.max_grad_norm,
        "precision": "fp32" if precision == "no" else precision,
        "attention": model_args.attn_implementation + (", per document" if data_args.document_attention else ""),
        "seed": train_args.seed,
    }
    return {"sources": sources, "recipe": recipe, "validation": validation}


def last_validation(logs: dict) -> dict:
    """{"zh": {"loss": ..., "bits_per_byte": ...}} from an evaluation's log entries (eval/zh/loss, ...)."""
    found: dict = {}
    for key, value in logs.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "eval":
            found.setdefault(parts[1], {})[parts[2]] = value
    return found


def trackers(report_to: str):
    if report_to == "none":
        return None
    return "all" if report_to == "all" else report_to.split(",")


def write_run_args(out: Path, model_args, data_args, train_args, resumed_step: int) -> None:
    """The run's arguments, next to its log; on a resume, log lines past the checkpoint are dropped
    (those steps are about to be trained again)."""
    out.mkdir(parents=True, exist_ok=True)
    args = {"model": asdict(model_args), "data": asdict(data_args), "train": asdict(train_args)}
    (out / "run_args.json").write_text(json.dumps(args, indent=2, ensure_ascii=False) + "\n")
    log = out / "train_log.jsonl"
    if log.is_file():
        lines = [line for line in log.read_text().splitlines() if json.loads(line)["step"] <= resumed_step]
        log.write_text("".join(line + "\n" for line in lines))


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


def check_distributed(accelerator, train_args) -> None:
    """What the launcher's config (accelerate_configs/) asks for that the run must adapt to, checked first."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise ArgumentError(
            f"{launched} processes were launched but Accelerate joined {accelerator.num_processes}: each would "
            "train alone; on a machine without GPUs use accelerate_configs/cpu.yaml"
        )
    if os.environ.get("ACCELERATE_USE_FSDP") == "true" and accelerator.distributed_type != DistributedType.FSDP:
        accelerator.print("note: FSDP needs GPUs; these CPU processes run plain data parallel (DDP) instead")
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    if train_args.optimizer == "muon":
        raise ArgumentError(
            "--optimizer muon does not work under DeepSpeed ZeRO, which flattens the weight matrices: use "
            "--optimizer adamw, or accelerate_configs/fsdp2.yaml to shard with Muon"
        )
    # the training loader is not passed to accelerator.prepare (it resumes by itself), so DeepSpeed cannot
    # infer its micro-batch from it
    ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
    ds_config["train_micro_batch_size_per_gpu"] = train_args.per_device_train_batch_size


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
            prepared = prepare(
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
            print(f"{data_dir} is up to date" if prepared.reused else format_report(prepared).lstrip("\n"))
        accelerator.wait_for_everyone()
    elif not (Path(data_dir) / "manifest.json").is_file():
        raise ArgumentError("no training data: give --train_files (or --dataset_name), or a prepared --data_dir")
    data = PreparedData.load(data_dir, tokenizer)
    if data.block_size != data_args.block_size:
        raise ArgumentError(
            f"--data_dir {data_dir} holds rows of {data.block_size} tokens, not --block_size {data_args.block_size}: "
            f"pass --block_size {data.block_size}, or --train_files to prepare the data again"
        )
    return data


def build_config(model_args, tokenizer, block_size: int):
    """The model's config, checked against the tokenizer and block size before any heavy work."""
    from transformers import AutoConfig

    from shuangyu.modeling import PRESETS, ShuangyuConfig

    if model_args.model_name_or_path:
        config = AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=True)
    elif model_args.model_config in PRESETS:
        # round the vocabulary up to a multiple of 64: matrix units like aligned shapes
        vocab = 64 * math.ceil(len(tokenizer) / 64)
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
        config = ShuangyuConfig.from_preset(model_args.model_config, vocab_size=vocab, **ids)
    elif Path(model_args.model_config).exists():
        try:
            config = AutoConfig.from_pretrained(model_args.model_config, trust_remote_code=True)
        except (OSError, ValueError) as err:
            raise ArgumentError(f"--model_config {model_args.model_config}: {err}") from None
    else:
        raise ArgumentError(
            f"--model_config {model_args.model_config!r}: not a preset ({', '.join(PRESETS)}) nor a config file"
        )
    if len(tokenizer) > config.vocab_size:
        raise ArgumentError(
            f"--tokenizer_name has {len(tokenizer):,} tokens but the model's vocab_size is {config.vocab_size:,}: "
            "use a model config with a larger vocab_size"
        )
    if block_size > config.max_position_embeddings:
        raise ArgumentError(
            f"--block_size {block_size} is above the model's max_position_embeddings {config.max_position_embeddings}"
        )
    return config


def build_model(model_args, config):
    from transformers import AutoModelForCausalLM

    from shuangyu.modeling import ShuangyuForCausalLM

    kwargs = {"attn_implementation": model_args.attn_implementation}
    if model_args.model_name_or_path:
        model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, trust_remote_code=True, **kwargs)
    else:
        model = ShuangyuForCausalLM._from_config(config, **kwargs)
    if model_args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def save_model_folder(accelerator, model, tokenizer, path: Path, card: dict | None = None) -> None:
    """An HF folder anyone can load: weights (safetensors), config with auto_map and code, tokenizer, and
    the model card (README.md; `card` holds eval.card.write_card's name, load_path and training)."""
    from eval.card import write_card

    state_dict = accelerator.get_state_dict(model)  # gathers a sharded model on every rank
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(path, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(path)
        write_card(path, **(card or {}))


def start_fresh(out: Path) -> None:
    """--overwrite_output_dir: clear the previous run's checkpoints, final model and log (not the data)."""
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    shutil.rmtree(out / "final", ignore_errors=True)
    (out / "train_log.jsonl").unlink(missing_ok=True)


def publish_final(out: Path) -> Path:
    """Copy the last checkpoint's HF folder to OUTPUT_DIR/final (through a temporary name); its model card
    then says to load it from there."""
    from eval.card import write_card

    final, tmp = out / "final", out / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(ckpt.complete_checkpoints(out)[-1][1] / "model", tmp)
    if (tmp / "README.md").is_file():
        write_card(tmp, load_path=str(final))
    tmp.rename(final)
    return final


class RunLog:
    """Metrics to the trackers (accelerator.log) and, on the main process, to OUTPUT_DIR/train_log.jsonl."""

    def __init__(self, accelerator, out: Path):
        self.accelerator = accelerator
        self.file = open(out / "train_log.jsonl", "a", encoding="utf-8") if accelerator.is_main_process else None

    def __call__(self, step: int, logs: dict) -> None:
        self.accelerator.log(logs, step=step)
        if self.file:
            self.file.write(json.dumps({"step": step, **logs}, ensure_ascii=False) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()
