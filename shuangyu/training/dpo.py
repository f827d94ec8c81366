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
`--resume_from_checkpoint OUTPUT_DIR/checkpoint-N`); OUTPUT_DIR/final is the model to share.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

from shuangyu.errors import UsageError, print_error, refuse_in_one_line
from shuangyu.library_warnings import reading_the_old_checkpointing_name
from shuangyu.progress import bars_only_on_a_terminal
from shuangyu.sharing.card import write_card
from shuangyu.sharing.folder import check_model_folder
from shuangyu.text.conversations import iter_dataset_records, iter_file_records, read_preference
from shuangyu.text.sources import parse_dataset_source, parse_file_source, resolve_files
from shuangyu.tokenizer.chat_template import chat_generation, check_chat_tokenizer, for_chat_model
from shuangyu.tokenizer.loading import carries_own_code
from shuangyu.tokenizer.special_tokens import SPECIAL_TOKENS
from shuangyu.training.arguments import LoraArguments
from shuangyu.training.config_file import load_yaml_config
from shuangyu.training.finetune import lora_config

PROG = "python -m shuangyu.training.dpo"


@dataclass
class DPOArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "The chat model to tune: an SFT run's final/ (or a checkpoint's model/)."}
    )
    train_files: list[str] = field(default_factory=list, metadata={"help": "Preference pairs: globs of .jsonl files."})
    validation_files: list[str] = field(default_factory=list, metadata={"help": "Held-out pairs, for eval loss."})
    dataset_name: str | None = field(default=None, metadata={"help": "Or a Hub dataset of pairs: NAME[:CONFIG]."})
    dataset_split: str = field(default="train")


def read_pairs(specs: list[str], flag: str) -> list[dict]:
    """The checked preference pairs of the files; text that spells a special token is refused (TRL tokenizes the
    rendered template as one string, where it would become the token itself)."""
    pairs = []
    for spec in specs:
        for path in resolve_files(parse_file_source(spec, flag), flag=flag):
            pairs += [check_no_control_text(read_preference(r, where), where) for where, r in iter_file_records(path)]
    return pairs


def check_no_control_text(pair: dict, where: str) -> dict:
    for key in ("prompt", "chosen", "rejected"):
        for message in pair[key]:
            found = [t for t in SPECIAL_TOKENS if t in message["content"]]
            if found:
                raise UsageError(f"{where}: {key} contains the special token text {found[0]}; remove it from the data")
    return pair


def load_pairs(args: DPOArguments) -> tuple[list[dict], list[dict]]:
    if args.dataset_name:
        spec = parse_dataset_source(args.dataset_name, "--dataset_name")
        train = [
            check_no_control_text(read_preference(r, where), where)
            for where, r in iter_dataset_records(spec, args.dataset_split)
        ]
    elif args.train_files:
        train = read_pairs(args.train_files, "--train_files")
    else:
        raise UsageError("no preference pairs: give --train_files (or --dataset_name)")
    if not train:
        raise UsageError("the preference data is empty")
    return train, read_pairs(args.validation_files, "--validation_files")


def parse_args(argv: list[str] | None):
    import torch
    from transformers import HfArgumentParser
    from trl import DPOConfig

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
    )
    if known.config:
        parser.set_defaults(**load_yaml_config(known.config, classes, PROG))
    try:
        *groups, _ = parser.parse_args_into_dataclasses(args=argv)
    except UsageError:
        raise
    except ValueError as err:  # TrainingArguments' own checks of the values
        message = str(err).strip().splitlines()[0]
        if "bf16" in message:
            message = "--bf16: this machine has no GPU with bf16; leave it off (fp32 on a CPU)"
        raise UsageError(message) from None
    return groups


def train_dpo(args: DPOArguments, lora: LoraArguments, config) -> tuple[Path, dict]:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer

    if not args.model_name_or_path:
        raise UsageError("give --model_name_or_path (an SFT run's final/ folder)")
    folder = Path(args.model_name_or_path)
    if config.truncation_mode != "keep_start":  # the counts below, the note and the card are keep_start's
        raise UsageError(
            f"--truncation_mode {config.truncation_mode} is deprecated in TRL and cuts the start of the chat (its "
            "system message); leave it at keep_start and raise --max_length instead"
        )
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
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype="float32")
    context = model.config.max_position_embeddings
    if config.max_length is not None and config.max_length > context:
        print(f"{PROG}: note: --max_length {config.max_length} -> {context} (the model's context)", file=sys.stderr)
    # every pair the model can see whole by default; a lower --max_length saves memory and is told what it costs
    config.max_length = min(config.max_length or context, context)
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
    fits = {"train": fitted_pairs(len(train), trainer.train_dataset, config.max_length)}
    if validation:
        fits["validation"] = fitted_pairs(len(validation), trainer.eval_dataset, config.max_length)
    check_fits(fits, config.max_length, context, trainer.is_world_process_zero())
    with reading_the_old_checkpointing_name():  # TRL reads it at every step
        trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    final = Path(config.output_dir) / "final"
    trainer.save_model(str(final))
    if trainer.is_world_process_zero():
        finish_folder(final, trainer.model, tokenizer, args, lora, config, fits)
    return final, fits["train"]


def fitted_pairs(given: int, prepared, max_length: int) -> dict:
    """How TRL's DPOTrainer (1.16) fits `given` pairs into max_length, counted on its prepared dataset (prompt_ids,
    chosen_ids, rejected_ids): a pair whose prompt alone fills max_length is dropped there (no reply token would
    be left), and prompt + reply longer than max_length is cut when batched, losing the end of the reply."""
    rows = prepared.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"])
    cut = sum(len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) > max_length for r in rows)
    return {"pairs": given, "left_out": given - len(rows), "cut": cut, "used": len(rows)}


def check_fits(fits: dict, max_length: int, context: int, tell: bool) -> None:
    """Refuse data of which nothing is left; else tell in one line what TRL leaves out or cuts (its own notice is a
    progress bar, hidden off a terminal)."""
    fix = (
        f"raise --max_length (the model's context is {context})"
        if max_length < context
        else "that is the model's context: shorten those pairs to train on them whole"
    )
    for split, flag in (("train", "--train_files"), ("validation", "--validation_files")):
        if split in fits and not fits[split]["used"]:
            raise UsageError(f"{flag}: every pair's prompt is --max_length {max_length} tokens or longer; {fix}")
    named = [(fits[s], name) for s, name in (("train", "training"), ("validation", "held-out")) if s in fits]

    def counted(key: str) -> str:
        return " and ".join(f"{f[key]:,} of {f['pairs']:,} {name} pairs" for f, name in named if f[key])

    parts = [f"{counted('left_out')} are left out (the prompt alone is that long)"] if counted("left_out") else []
    parts += [f"{counted('cut')} are cut to that length (the end of a reply is lost)"] if counted("cut") else []
    if parts and tell:
        print(f"{PROG}: note: --max_length {max_length}: {'; '.join(parts)}; {fix}", file=sys.stderr, flush=True)


def finish_folder(final: Path, model, tokenizer, args: DPOArguments, lora, config, fits: dict) -> None:
    """The saved model as a Shuangyu chat folder: tokenizer with the template, stop at <|im_end|>, our card."""
    tokenizer.save_pretrained(final)
    if not lora.lora_r:
        chat_generation(model.generation_config, tokenizer)
        model.generation_config.save_pretrained(final)
    (final / "README.md").unlink(missing_ok=True)  # the Trainer's card; ours says what the model is
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
    write_card(final, name=final.parent.resolve().name, training=training)
    write_card(final, load_path=str(final))


def main(argv: list[str] | None = None) -> int:
    bars_only_on_a_terminal()
    try:
        args, lora, config = parse_args(argv)
        final, fit = train_dpo(args, lora, config)
    except UsageError as err:
        return print_error(PROG, err)
    print(f"done: DPO on {fit['used']:,} of {fit['pairs']:,} preference pairs; model in {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
