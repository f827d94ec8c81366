"""Preference tuning (DPO) of a Shuangyu chat model with TRL's `DPOTrainer`: the loss, reference model, batching
and checkpoints are TRL's; this file reads and checks the preference pairs, loads the model and its chat
tokenizer, and writes the finished model as a Shuangyu chat folder (template, stop tokens, model card).

    python -m shuangyu.training.dpo --config configs/dpo-tiny-cpu.yaml \\
        --model_name_or_path outputs/sft-tiny/final --output_dir outputs/dpo-tiny

Data: JSON lines (or .json / .parquet) in TRL's conversational preference format, `{"prompt": [messages ending
with a user turn], "chosen": [one assistant message], "rejected": [one assistant message]}` (strings are taken
as one message), checked row by row (shuangyu.text.conversations.read_preference), or a Hub dataset
(`--dataset_name`). Every flag of TRL's `DPOConfig` (`--beta`, `--loss_type`, `--max_length`, `--learning_rate`,
`--max_steps`, `--save_steps`, `--resume_from_checkpoint`, ...) is a flag here too (`--max_length` defaults to the
model's context, and the pairs TRL leaves out or cuts for it are counted and told); `--lora_r` trains a LoRA
adapter instead of the whole model (the reference is then the model without it). The optimizer is the Trainer's
AdamW: Muon is train_clm.py's. OUTPUT_DIR/checkpoint-N are the Trainer's checkpoints (resume with
`--resume_from_checkpoint latest`, the newest, or `OUTPUT_DIR/checkpoint-N`); OUTPUT_DIR/final is the model to
share, written whole at the end. As train_clm.py, SIGTERM, Ctrl-C or a closed terminal finishes the step, saves a
checkpoint and exits 0 without final/ (trainer_stopping.py), and before training SIGTERM or SIGHUP stops at once; an
OUTPUT_DIR that holds a run is trained over only when resumed or with `--overwrite_output_dir`, and never when it
holds the model or pairs being read.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import sys
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from shuangyu.errors import UsageError, ctrl_c_is_one_line, print_error, print_interrupted, refuse_in_one_line
from shuangyu.files import atomic_folder, check_holds_no_input, check_writable_folder
from shuangyu.library_warnings import checkpoints_saved_within_a_second, reading_the_old_checkpointing_name
from shuangyu.progress import bars_only_on_a_terminal
from shuangyu.sharing.card import write_card
from shuangyu.sharing.folder import check_model_folder
from shuangyu.terminal import outlive_a_closed_terminal
from shuangyu.text.sources import check_not_held_out, parse_file_source, resolve_files
from shuangyu.tokenizer.chat_template import chat_generation, check_chat_tokenizer, for_chat_model
from shuangyu.tokenizer.loading import carries_own_code, save_tokenizer
from shuangyu.training.arguments import LoraArguments
from shuangyu.training.checks import check_output_dir, check_trackers, is_first_process
from shuangyu.training.config_file import load_yaml_config
from shuangyu.training.dpo_pairs import PROG, check_fits, fitted_pairs, load_pairs
from shuangyu.training.finetune import lora_config
from shuangyu.training.model_folder import save_model_folder
from shuangyu.training.stopping import StopAtOnce, stop_with_the_launcher


@dataclass
class DPOArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "The chat model to tune: an SFT run's final/ (or a checkpoint's model/)."}
    )
    train_files: list[str] = field(default_factory=list, metadata={"help": "Preference pairs: globs of .jsonl files."})
    validation_files: list[str] = field(default_factory=list, metadata={"help": "Held-out pairs, for eval loss."})
    dataset_name: str | None = field(default=None, metadata={"help": "Or a Hub dataset of pairs: NAME[:CONFIG]."})
    dataset_split: str = field(default="train")
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Start over in an --output_dir that holds a run (its checkpoints go)."}
    )


def parse_args(argv: list[str] | None):
    import torch
    from transformers import HfArgumentParser
    from trl import DPOConfig

    from shuangyu.devices import training_device
    from shuangyu.training.accelerator import cpu_processes

    classes = (DPOArguments, LoraArguments, DPOConfig)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    parser = refuse_in_one_line(HfArgumentParser(classes, prog=PROG))
    parser.add_argument("--config", help="A YAML file of flag values; the command line overrides them.")
    # CPU-friendly defaults where TRL's assume a GPU: bf16 only where the GPU has it; activations kept.
    # transformers 5.2x renamed gradient_checkpointing to activation_checkpointing and warns whenever the old
    # field is set while the new one is not; TRL's default sets the old one (True). So the old one defaults to
    # None: off, no warning, and a user's --gradient_checkpointing (with its warning) or --activation_checkpointing
    # still applies. Older transformers have only the old field.
    renamed = any(f.name == "activation_checkpointing" for f in dataclasses.fields(DPOConfig))
    # Pinned memory only where there is a GPU to copy to (else torch warns at every loader); progress bars only on
    # a terminal (a log file gets the Trainer's plain lines)
    parser.set_defaults(
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        gradient_checkpointing=None if renamed else False,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=not sys.stderr.isatty(),
        report_to="none",
        max_length=None,  # the model's context, once it is loaded (train_dpo): TRL's 1024 is no model's
        # several processes without GPUs (accelerate launch with any config but cpu.yaml): as train_clm.py, they
        # join over gloo; else each trained alone as the first process and they raced to write final/
        use_cpu=cpu_processes(),
        # every weight takes part in each forward pass (LoRA's too); the Trainer's default, True without gradient
        # checkpointing, costs a second pass over the graph per step and a torch warning on every process
        ddp_find_unused_parameters=False,
    )
    if known.config:
        parser.set_defaults(**load_yaml_config(known.config, classes, PROG))
    try:
        with warnings.catch_warnings():  # TRL's FutureWarning for keep_end, before the refusal below that says more
            warnings.filterwarnings("ignore", "The `'keep_end'` truncation mode is deprecated", FutureWarning)
            *groups, _ = parser.parse_args_into_dataclasses(args=argv)
    except UsageError:
        raise
    except ValueError as err:  # TrainingArguments' own checks of the values
        message = str(err).strip().splitlines()[0]
        if "bf16" in message:
            message = "--bf16: this machine has no GPU with bf16; leave it off (fp32 on a CPU)"
        raise UsageError(message) from None
    if groups[-1].fp16 and (groups[-1].use_cpu or training_device() == "cpu"):  # Accelerate: fp16 off the CPU only
        raise UsageError("--fp16: fp16 trains on a GPU only (on this CPU it would run in fp32); leave it off")
    if groups[-1].truncation_mode != "keep_start":  # the counts, the note and the card are keep_start's
        raise UsageError(
            f"--truncation_mode {groups[-1].truncation_mode} is deprecated in TRL and cuts the start of the chat (its "
            "system message); leave it at keep_start and raise --max_length instead"
        )
    return groups


CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"  # the Trainer writes it last: a checkpoint-N without it is half-written
# What a DPO run writes into its --output_dir besides checkpoint-N: final/, TRL's card, the Trainer's trackers' logs
RUN_ENTRIES = frozenset({"final", "README.md", "runs", "wandb"})


def trainer_checkpoints(out: Path, complete: bool = True) -> list[Path]:
    """The Trainer's checkpoint-N folders in `out`, oldest first; `complete`: only those it finished saving."""
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if not complete or (p / TRAINER_STATE).is_file()]


def resolve_resume(out: Path, resume_from: str | None) -> Path | None:
    """`latest`: the newest complete checkpoint-N in `out`, or None to start afresh when there is none (as
    train_clm.py); a path: that checkpoint, if the Trainer finished saving it."""
    if not resume_from:
        return None
    if resume_from == "latest":
        done = trainer_checkpoints(out)
        return done[-1] if done else None
    path = Path(resume_from)
    if not (path / TRAINER_STATE).is_file():
        what = "does not exist" if not path.exists() else f"is not a complete checkpoint (no {TRAINER_STATE} in it)"
        raise UsageError(
            f"--resume_from_checkpoint {path} {what}: name an OUTPUT_DIR/checkpoint-N folder, or pass latest"
        )
    return path


def check_reporters(report_to: list[str] | None) -> None:
    """--report_to, which the Trainer checks only once the model is loaded, with a traceback (an unknown name; for
    wandb not installed, a RuntimeError): train_clm's trackers as train_clm checks them, the Trainer's others by
    its own list."""
    from transformers.integrations import get_reporting_integration_callbacks

    for name in report_to or []:
        if name in ("tensorboard", "wandb"):
            check_trackers(name)
        elif name not in ("all", "none"):
            try:
                get_reporting_integration_callbacks([name])
            except ValueError as err:
                raise UsageError(f"--report_to {name}: {str(err).strip().splitlines()[0]}") from None


def check_run(args: DPOArguments, config) -> Path | None:
    """Before any work (the data, the model): the flags and the output folder, as train_clm.py checks them; the
    checkpoint to resume from (None: start afresh)."""
    if not args.model_name_or_path:
        raise UsageError("give --model_name_or_path (an SFT run's final/ folder)")
    if not config.output_dir:
        raise UsageError("give --output_dir")
    if config.max_steps < 1 and config.max_steps != -1:  # -1, the Trainer's default: --num_train_epochs decides
        raise UsageError(f"--max_steps {config.max_steps}: must be at least 1")
    if not config.beta > 0:  # TRL takes any: at 0 nothing is learned, below it the preference is turned around
        raise UsageError(
            f"--beta {config.beta}: must be above 0 (0.1 is usual; lower keeps the model nearer its start)"
        )
    if args.dataset_name and args.train_files:  # load_pairs would read the dataset and drop the files in silence
        raise UsageError("--dataset_name and --train_files both name the training pairs: give one of them")
    # the Trainer evaluates on the held-out pairs only: without them it fails in a traceback once the model is loaded
    if config.eval_strategy != "no" and not args.validation_files:
        strategy = getattr(config.eval_strategy, "value", config.eval_strategy)
        raise UsageError(
            f"--eval_strategy {strategy} needs held-out pairs: give --validation_files, or --eval_strategy no"
        )
    check_reporters(config.report_to)
    out = Path(config.output_dir)
    check_writable_folder(out, "--output_dir")
    # the run replaces final/ and checkpoint-N, and --overwrite_output_dir deletes them: never where the inputs are
    inputs = [("the model (--model_name_or_path)", args.model_name_or_path)]
    sources, files = {}, {}
    for flag, specs in (("--train_files", args.train_files), ("--validation_files", args.validation_files)):
        sources[flag] = [parse_file_source(spec, flag) for spec in specs]
        files[flag] = [resolve_files(source, flag=flag) for source in sources[flag]]
        inputs += [(f"the pairs ({flag})", p) for paths in files[flag] for p in paths]
    # held-out pairs that are also trained on: the eval loss would measure memory (as pretraining refuses it)
    trained = [] if args.dataset_name else files["--train_files"]  # load_pairs reads the dataset instead
    names = [s.name for s in sources["--validation_files"]]
    check_not_held_out(trained, names, files["--validation_files"], "--train_files", exclude_flag=None)
    check_holds_no_input(out, [(what, path) for what, path in inputs if Path(path).exists()], "--output_dir")
    resume_dir = resolve_resume(out, config.resume_from_checkpoint)
    holds_run = bool(trainer_checkpoints(out, complete=False)) or (out / "final").exists()
    if holds_run and resume_dir is None and config.resume_from_checkpoint and not args.overwrite_output_dir:
        raise UsageError(
            f"--resume_from_checkpoint latest: --output_dir {out} holds a run but no complete checkpoint to resume "
            "(a final/, or a checkpoint cut short); pass --overwrite_output_dir to start over, or choose another "
            "--output_dir"
        )
    check_output_dir(out, args.overwrite_output_dir, resume_dir, holds_run, RUN_ENTRIES)
    if config.eval_strategy == "no" and args.validation_files and is_first_process():  # once the flags hold
        note = "are not scored with --eval_strategy no (give --eval_strategy steps and --eval_steps N to score them)"
        print(f"{PROG}: note: --validation_files {note}", file=sys.stderr)
    return resume_dir


def start_fresh(out: Path) -> None:
    """--overwrite_output_dir without resuming: the earlier run's checkpoints and final model go (a later `latest`
    would otherwise pick up one of its checkpoints past this run's)."""
    for path in trainer_checkpoints(out, complete=False):
        shutil.rmtree(path)
    shutil.rmtree(out / "final", ignore_errors=True)


def interrupted_state(out: Path, created: bool) -> str:
    """What an interrupted run leaves, once what it left half-written is gone: a checkpoint-N the Trainer had not
    finished saving, and the folder itself when the run made it and kept nothing in it."""
    for path in trainer_checkpoints(out, complete=False):
        if not (path / TRAINER_STATE).is_file():
            shutil.rmtree(path, ignore_errors=True)
    done = trainer_checkpoints(out)
    if done:
        return f"the last checkpoint, {done[-1]}, is intact: rerun with --resume_from_checkpoint latest"
    if created and not (out / "final").exists():
        shutil.rmtree(out, ignore_errors=True)  # TRL's card at most, written as the first save began
    return "no step was saved: rerun the same command to start again"


def train_dpo(args: DPOArguments, lora: LoraArguments, config, resume_dir: Path | None = None, at_once=None):
    """Train from the checked flags (check_run) and write OUTPUT_DIR/final; (final, the training pairs' counts, None),
    or, stopped by a signal (at_once: the set-up's StopAtOnce, which training takes over from), (None, the counts,
    "SIGNAL at step N") with the step's checkpoint saved and no final/."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer

    from shuangyu.training.accelerator import FSDP_NEEDS_GPUS
    from shuangyu.training.trainer_stopping import StopBetweenSteps

    folder = Path(args.model_name_or_path)
    if "adapter" in check_model_folder(folder):
        raise UsageError(
            f"--model_name_or_path {folder} is a LoRA adapter: merge it first (shuangyu.training.merge_lora)"
        )
    # TRL tokenizes the rendered template as one string: the control tokens must be matched there
    tokenizer = AutoTokenizer.from_pretrained(
        folder, split_special_tokens=False, trust_remote_code=carries_own_code(folder)
    )
    check_chat_tokenizer(tokenizer, str(folder), "--model_name_or_path")
    for_chat_model(tokenizer)
    train, validation = load_pairs(args)
    config.trust_remote_code = True  # TRL loads the reference model from the folder too: its code is ours
    # absolute: a LoRA adapter records the name as its base (training.model.local_or_hub)
    model = AutoModelForCausalLM.from_pretrained(folder.resolve(), trust_remote_code=True, dtype="float32")
    # The Trainer resumes the weights with load_state_dict and warns of every key the file lacks unless the keys are
    # the model's _keys_to_ignore_on_save (it then ties the weights again); save_pretrained leaves a tied head out
    # of the file without listing it there, so each resume warned of lm_head.weight. Listed, saves are unchanged.
    model._keys_to_ignore_on_save = set(getattr(model, "all_tied_weights_keys", None) or {})
    context = model.config.max_position_embeddings
    if config.max_length is not None and config.max_length > context:
        print(f"{PROG}: note: --max_length {config.max_length} -> {context} (the model's context)", file=sys.stderr)
    # every pair the model can see whole by default; a lower --max_length saves memory and is told what it costs
    config.max_length = min(config.max_length or context, context)
    # TRL tokenizes whole pairs, then cuts them to max_length (check_fits says how many): the tokenizer's own limit
    # (the model's context) only made it warn that a longer pair "will result in indexing errors"
    tokenizer.model_max_length = int(1e30)
    peft_config = lora_config(model, lora) if lora.lora_r else None
    with reading_the_old_checkpointing_name():  # PEFT reads it when it wraps the model for LoRA
        trainer = DPOTrainer(
            model=model,
            args=config,
            train_dataset=datasets.Dataset.from_list(train),
            eval_dataset=datasets.Dataset.from_list(validation) if validation else None,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
    stopping = StopBetweenSteps(trainer.accelerator, at_once)
    trainer.add_callback(stopping)
    fits = {"train": fitted_pairs(len(train), trainer.train_dataset, config.max_length)}
    if validation:
        fits["validation"] = fitted_pairs(len(validation), trainer.eval_dataset, config.max_length)
    check_fits(fits, config.max_length, context, trainer.is_world_process_zero())
    out = Path(config.output_dir)
    main = trainer.is_world_process_zero()
    if os.environ.get("ACCELERATE_USE_FSDP") == "true" and not trainer.is_fsdp_enabled and main:
        print(f"{PROG}: {FSDP_NEEDS_GPUS}", file=sys.stderr, flush=True)
    if args.overwrite_output_dir and resume_dir is None and main:
        start_fresh(out)
    # TRL reads the old checkpointing name at every step; the Trainer sorts its checkpoints at every save
    with reading_the_old_checkpointing_name(), checkpoints_saved_within_a_second():
        trainer.train(resume_from_checkpoint=str(resume_dir) if resume_dir else None)
    trl_card = out / "README.md"  # TRL's card of the run folder, written at every save ("a fine-tuned [None]")
    if main and trl_card.is_file() and "generated_from_trainer" in trl_card.read_text(encoding="utf-8"):
        trl_card.unlink()
    if stopping.stopped_by:  # the step's checkpoint is saved: final/ is the finished run's only
        return None, fits["train"], f"{stopping.stopped_by} at step {trainer.state.global_step}"
    final = out / "final"
    tmp = out / ".final.tmp"  # one name every process knows: saving a sharded model is collective
    # written whole: an interruption or an error leaves the earlier final/ (or none), never half of one
    with atomic_folder(final, tmp) if main else nullcontext(tmp):
        if trainer.is_fsdp_enabled:
            # the Trainer writes no weights for FSDP's sharded state dict (fsdp2.yaml), and under FSDP2 its
            # save_pretrained named torch's FSDP class; train_clm.py's save gathers them and saves as our class
            save_model_folder(trainer.accelerator, trainer.model, tokenizer, tmp)
        else:
            trainer.save_model(str(tmp))
        if main:
            finish_folder(tmp, final, trainer.model, tokenizer, args, lora, config, fits)
    return final, fits["train"], None


def finish_folder(folder: Path, final: Path, model, tokenizer, args: DPOArguments, lora, config, fits: dict) -> None:
    """The model saved in `folder` (renamed to `final` next) as a Shuangyu chat folder: tokenizer with the template,
    stop at <|im_end|>, our card."""
    save_tokenizer(tokenizer, folder)  # over the one trainer.save_model wrote, which says how it was loaded
    chat_generation(model.generation_config, tokenizer)
    model.generation_config.save_pretrained(folder)  # an adapter's too: its card loads it (PEFT loads the base's)
    (folder / "README.md").unlink(missing_ok=True)  # the Trainer's card; ours says what the model is
    (folder / "training_args.bin").unlink(missing_ok=True)  # a pickle of the Trainer's arguments, not the model's
    files = [Path(f).name for f in args.train_files]
    sources = [{"name": "preference", "files": files, "dataset": args.dataset_name, **fits["train"]}]
    if "validation" in fits:
        files = [Path(f).name for f in args.validation_files]
        sources.append({"name": "held out", "files": files, "dataset": None, "held_out": True, **fits["validation"]})
    training = {
        "stage": "dpo",
        "base_model": args.model_name_or_path,
        "sources": sources,
        "recipe": {
            "method": f"DPO (TRL {__import__('trl').__version__} DPOTrainer), loss {', '.join(config.loss_type)}",
            "beta": config.beta,
            "steps": config.max_steps,
            "learning_rate": config.learning_rate,
            "batch": f"{config.per_device_train_batch_size} pairs x {config.gradient_accumulation_steps} accumulation",
            "max_length": config.max_length,
        },
    }
    if lora.lora_r:
        training["lora"] = {"r": lora.lora_r, "alpha": lora.lora_alpha, "dropout": lora.lora_dropout,
                            "target_modules": list(lora.lora_target_modules)}  # fmt: skip
    write_card(folder, name=final.parent.resolve().name, training=training)
    write_card(folder, load_path=str(final))


def main(argv: list[str] | None = None) -> int:
    outlive_a_closed_terminal()  # a closed terminal stops the run (SIGHUP): its checkpoint must not fail on a print
    bars_only_on_a_terminal()
    out, created, at_once = None, False, None
    first = is_first_process()  # of a launch: the one that speaks and tidies
    try:
        args, lora, config = parse_args(argv)
        resume_dir = check_run(args, config)
        out = Path(config.output_dir)
        created = not out.exists()  # the Trainer makes it as it starts
        at_once = StopAtOnce()  # SIGTERM or SIGHUP while the model loads and TRL tokenizes stops it as Ctrl-C does
        stop_with_the_launcher()
        final, fit, stopped = train_dpo(args, lora, config, resume_dir, at_once)
    except UsageError as err:
        if created and first and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # refused after the Trainer made it (the pairs did not fit): not left behind empty
        return print_error(PROG, err, show=first)
    except KeyboardInterrupt:
        left = interrupted_state(out, created) if out and first else "nothing was written"
        if at_once and at_once.requested:  # a preemption, not a failure: exit 0 as train_clm.py does
            if first:
                print(f"{PROG}: stopped by {at_once.requested} before training; {left}", file=sys.stderr, flush=True)
            return 0
        return print_interrupted(PROG, left, show=first)
    finally:
        if at_once:
            at_once.restore()  # training took over already, unless it stopped or failed before
    if stopped:
        if first:  # train_clm.py's line
            print(f"stopped by {stopped}; resume with --resume_from_checkpoint latest", flush=True)
        return 0
    if first:  # once for the launch, as train_clm.py says it
        print(f"done: DPO on {fit['used']:,} of {fit['pairs']:,} preference pairs; model in {final}")
    return 0


if __name__ == "__main__":
    # a Ctrl-C that main() lets through is one line too, with the exit status for Ctrl-C
    with ctrl_c_is_one_line(PROG, show=is_first_process()):
        sys.exit(main())
