"""train_clm.py's arguments: one dataclass per component (as torchtitan configures its trainer), each builder
taking only its own; parsed by HfArgumentParser with flag names as in transformers' run_clm.py where the meaning
is the same, and `--config FILE.yaml` whose values the command line overrides. Flags stay flat on the command
line and in the YAML files; the grouping is for the code. One job, however many flags: every flag of the command
and the checks that need no work, in one file."""

from __future__ import annotations

import argparse
import math
import sys
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Literal

from shuangyu.errors import UsageError, refuse_in_one_line, typed_flags
from shuangyu.files import parse_count
from shuangyu.training.config_file import load_yaml_config, refuse_renamed


@dataclass
class ModelArguments:
    model_config: str = field(
        default="tiny",
        metadata={
            "help": "A preset (tiny, mini, 124m, 350m) or a config.json / folder, for a model trained from scratch."
        },
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Continue from these weights (an HF folder, e.g. a checkpoint's model/)."}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "The tokenizer folder (tokenizer/train_bpe.py output) or a Hub name."}
    )
    attn_implementation: str = field(
        default="sdpa", metadata={"help": "sdpa, flash_attention_2, flex_attention or eager."}
    )
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for activation memory."})


@dataclass
class DataArguments:
    train_files: list[str] = field(
        default_factory=list,
        metadata={"help": "Training sources: [NAME=]GLOB[,GLOB...][:WEIGHT] (as in tokenizer/train_bpe.py)."},
    )
    validation_files: list[str] = field(
        default_factory=list, metadata={"help": "Held-out text per language: NAME=GLOB[,GLOB...]."}
    )
    dataset_name: list[str] = field(
        default_factory=list,
        metadata={"help": "Hub datasets, streamed while preparing: [NAME=]DATASET[:CONFIG][:WEIGHT]."},
    )
    dataset_split: str = field(default="train", metadata={"help": "Split read from each --dataset_name."})
    exclude: list[str] = field(default_factory=list, metadata={"help": "Globs of files to leave out of --train_files."})
    text_column: str = field(default="text", metadata={"help": "Field holding the text."})
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Tokenise, mix and pack the sources while training instead of preparing them on disk (corpora "
            "larger than a disk cache); every checkpoint keeps each process's stream position."
        },
    )
    shuffle_window: int = field(
        default=4096, metadata={"help": "--streaming: documents read and shuffled together (per source and process)."}
    )
    validation_fraction: float | None = field(
        default=None,
        metadata={
            "help": "Without --validation_files, data prepared here (not --streaming, not --sft): share of each "
            "source's documents held out for validation (default 0.005, as in python -m shuangyu.data.prepare)."
        },
    )
    validation_docs: int = field(
        default=1000,
        metadata={
            "help": "--streaming without --validation_files: the first N documents of each source are held out "
            "for validation (training skips every document with the same text)."
        },
    )
    skip_bad_lines: bool = field(
        default=False,
        metadata={
            "help": "Skip (and count) lines that are not UTF-8, not JSON, or whose text is not a string, instead of "
            "stopping (not --streaming)."
        },
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Prepared data folder (python -m shuangyu.data.prepare); built here if missing. "
            "Default: OUTPUT_DIR/data."
        },
    )
    block_size: int | None = field(
        default=None,
        metadata={"help": "Tokens per training row; None: the model's context (max_position_embeddings)."},
    )
    document_attention: bool = field(
        default=False,
        metadata={
            "help": "Keep attention inside each packed document (position ids restart at every "
            "<|endoftext|>); fast with flex_attention or flash_attention_2, slow with sdpa."
        },
    )
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes that tokenise."})
    dataloader_num_workers: int = field(
        default=0,
        metadata={"help": "Processes reading the prepared blocks (0: the training process; not --streaming)."},
    )


@dataclass
class OptimizerArguments:
    """The optimizer (shuangyu.training.optim.build_optimizer) and gradient clipping."""

    optimizer: Literal["adamw", "muon"] = field(
        default="adamw", metadata={"help": "muon: Muon for hidden matrices, AdamW for the rest."}
    )
    learning_rate: float = field(default=6e-4, metadata={"help": "Peak learning rate (AdamW's; Muon's is scaled)."})
    embedding_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Peak learning rate of the token embedding (AdamW; with tied weights, of the matrix it shares "
            "with the head). Default: --learning_rate. Small models learn faster with it about 10x higher."
        },
    )
    weight_decay: float = field(default=0.1, metadata={"help": "Decoupled weight decay on matrices and embeddings."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW's decay rate of the gradient average."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW's decay rate of the squared-gradient average."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW's term added to the denominator."})
    muon_momentum: float = field(default=0.95, metadata={"help": "Muon's (Nesterov) momentum."})
    muon_scale: Literal["match_rms_adamw", "original"] = field(
        default="match_rms_adamw",
        metadata={"help": "match_rms_adamw: AdamW's learning rate and decay carry over; original: Muon's own."},
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the global gradient norm (0: no clipping)."})


MIN_LR_RATIO = 0.1
# what --no_X does, for a flag on by default (HfArgumentParser gives --no_X the help of --X)
NO_HELP = {
    "hub_push_logs": "Push the model only, without the tensorboard logs.",
    "packing": "One conversation per row, padded (instead of packing several into each row).",
}


@dataclass
class ScheduleArguments:
    """The learning-rate schedule (shuangyu.training.schedule.build_scheduler)."""

    lr_scheduler_type: Literal["cosine", "warmup_stable_decay", "linear", "constant_with_warmup"] = field(
        default="cosine", metadata={"help": "The learning-rate schedule after the warmup."}
    )
    warmup_steps: int = field(default=100, metadata={"help": "Steps rising linearly to the peak learning rate."})
    min_lr_ratio: float = field(
        default=MIN_LR_RATIO,
        metadata={
            "help": "Final learning rate as a share of the peak (cosine, linear, warmup_stable_decay; "
            "constant_with_warmup refuses another value)."
        },
    )
    decay_fraction: float = field(default=0.2, metadata={"help": "warmup_stable_decay: share of steps decaying."})


@dataclass
class CheckpointArguments:
    """Where the run goes, how often it is saved, and what it resumes from (shuangyu.training.checkpoint)."""

    output_dir: str | None = field(default=None, metadata={"help": "Where checkpoints, logs and the model go."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace a run already in --output_dir."})
    save_steps: int = field(default=1000, metadata={"help": "Save a checkpoint every N steps."})
    save_total_limit: int | None = field(default=3, metadata={"help": "Keep the last N checkpoints."})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "'latest' (or start afresh if none) or a checkpoint folder."}
    )


@dataclass
class LoggingArguments:
    """What the run reports: metrics, validation and samples (shuangyu.training.run_log, validation)."""

    logging_steps: int = field(default=10, metadata={"help": "Log the loss, learning rate and speed every N steps."})
    eval_steps: int = field(default=500, metadata={"help": "Evaluate (and show samples) every N steps."})
    eval_rows: int = field(
        default=320,
        metadata={
            "help": "Validation rows (blocks) per source per evaluation: the first N, the same whatever the number "
            "of processes or batch size, so runs compare (0: all)."
        },
    )
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Rows per process in evaluation."})
    report_to: str = field(default="tensorboard", metadata={"help": "tensorboard, wandb, all or none."})
    peak_tflops: float | None = field(default=None, metadata={"help": "Device peak for MFU, if not in the table."})


@dataclass
class HubArguments:
    """Pushing the finished model (shuangyu.training.hub)."""

    push_to_hub: bool = field(
        default=False,
        metadata={"help": "At the end, push OUTPUT_DIR/final (weights, code, tokenizer, model card) to the Hub."},
    )
    hub_model_id: str | None = field(
        default=None, metadata={"help": "USER/NAME to push to (created at the start; token from HF_TOKEN or login)."}
    )
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the Hub repo private."})
    hub_revision: str | None = field(default=None, metadata={"help": "Push to this branch instead of main."})
    hub_push_logs: bool = field(
        default=True,
        metadata={
            "help": "Push the tensorboard logs too, under runs/.",
        },
    )


@dataclass
class TrainArguments:
    """The loop itself: batch, length, seed, precision, compilation, the divergence guard."""

    per_device_train_batch_size: int = field(default=8, metadata={"help": "Rows per process per micro-batch."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    max_steps: int | None = field(default=None, metadata={"help": "Optimizer steps to train."})
    max_train_tokens: str | None = field(
        default=None,
        metadata={
            "help": "Or tokens to train on, e.g. 2.5B. Either one on the command line replaces the other in --config."
        },
    )
    seed: int = field(default=42, metadata={"help": "Seed of the model's initialisation and the data order."})
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = field(
        default="auto", metadata={"help": "auto: bf16 on GPUs that have it, fp16 with loss scaling else, fp32 on CPU."}
    )
    compile: bool = field(default=False, metadata={"help": "torch.compile the model."})
    max_bad_steps: int = field(
        default=5,
        metadata={
            "help": "Stop after this many non-finite gradient norms in a row (counted on the device, checked at "
            "the next step that logs, evaluates or saves)."
        },
    )


@dataclass
class SFTArguments:
    """Instruction tuning on conversations (shuangyu.data.conversations; docs/sft.md)."""

    sft: bool = field(
        default=False,
        metadata={
            "help": "Fine-tune --model_name_or_path on conversations (--train_files of messages, Alpaca or "
            "ShareGPT rows): loss on the assistants' replies only."
        },
    )
    packing: bool = field(
        default=True,
        metadata={
            "help": "Pack whole conversations into each row (false: one per row, padded).",
        },
    )
    sft_overlong: Literal["truncate", "skip"] = field(
        default="truncate",
        metadata={
            "help": "A conversation longer than --block_size: cut after its last whole reply that fits, or skip."
        },
    )


@dataclass
class LoraArguments:
    """LoRA through PEFT (shuangyu.training.lora): train a low-rank adapter on the frozen model."""

    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 trains the whole model."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator (the update is alpha/r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the adapters' input."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={"help": "Module names (or 'all-linear') that get adapters."},
    )


@dataclass
class TrainConfig:
    """The whole run: one config per component."""

    model: ModelArguments
    data: DataArguments
    optim: OptimizerArguments
    schedule: ScheduleArguments
    checkpoint: CheckpointArguments
    logging: LoggingArguments
    hub: HubArguments
    train: TrainArguments
    sft: SFTArguments = field(default_factory=SFTArguments)
    lora: LoraArguments = field(default_factory=LoraArguments)

    def as_dict(self) -> dict:
        return {f.name: asdict(getattr(self, f.name)) for f in fields(self)}


ARGUMENT_CLASSES = (
    ModelArguments,
    DataArguments,
    OptimizerArguments,
    ScheduleArguments,
    CheckpointArguments,
    LoggingArguments,
    HubArguments,
    TrainArguments,
    SFTArguments,
    LoraArguments,
)  # in TrainConfig's order


def build_parser(prog: str = "train_clm.py"):
    """train_clm.py's flags, as --help shows them."""
    from transformers import HfArgumentParser

    parser = explain_negations(refuse_in_one_line(HfArgumentParser(ARGUMENT_CLASSES, prog=prog)))
    parser.add_argument("--config", help="A YAML file of flag values; the command line overrides them.")
    return parser


def explain_negations(parser):
    """Each --no_X says what it does (its NO_HELP), not what --X does; its default is --X's, shown there."""
    for action in parser._actions:
        if action.option_strings and action.option_strings[0] == f"--no_{action.dest}":
            action.help = NO_HELP.get(action.dest, f"Turn --{action.dest} off.")
            action.default = argparse.SUPPRESS  # the dest's default comes from --X; "(default: False)" misled
    return parser


def parse_args(argv: list[str] | None = None, prog: str = "train_clm.py") -> TrainConfig:
    """Parse `--config FILE.yaml` first, use its values as defaults, then the command line on top."""

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    refuse_renamed(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog)
    # the command line alone first: its own mistakes are its own, and it tells which flags the user typed
    *typed, _ = parser.parse_args_into_dataclasses(args=argv)  # unknown flags: UsageError (refuse_in_one_line)
    typed_train = typed[ARGUMENT_CLASSES.index(TrainArguments)]
    if typed_train.max_steps and typed_train.max_train_tokens:
        raise UsageError("give one of --max_steps / --max_train_tokens: both set how long to train")
    if not known.config:
        config = TrainConfig(*typed)
    else:
        values = load_yaml_config(known.config, ARGUMENT_CLASSES, prog)
        # how long to train is one setting: either flag on the command line replaces the config's other one
        if typed_train.max_train_tokens:
            values.pop("max_steps", None)
        if typed_train.max_steps:
            values.pop("max_train_tokens", None)
        if values.get("max_steps") is not None and values.get("max_train_tokens") is not None:
            raise UsageError(f"--config {known.config}: give one of max_steps / max_train_tokens, not both")
        parser.set_defaults(**values)
        try:
            *groups, _ = parser.parse_args_into_dataclasses(args=argv)
        except UsageError as err:  # argparse converts a YAML string as if typed: say where it came from
            raise UsageError(f"{str(err).removesuffix(' (see --help)')} (from --config {known.config})") from None
        config = TrainConfig(*groups)
    # a bad value is named with where it came from: the config, unless the command line typed it
    typed_names = {action.dest for action, _ in typed_flags(parser, sys.argv[1:] if argv is None else argv)}
    check_values(config, known.config, typed_names)
    if config.model.tokenizer_name is None and config.model.model_name_or_path:
        config.model.tokenizer_name = config.model.model_name_or_path  # a model folder carries its tokenizer
    return config


def total_steps(train_args: TrainArguments, tokens_per_step: int) -> int:
    if train_args.max_steps:
        return train_args.max_steps
    if train_args.max_train_tokens:
        return math.ceil(parse_count(train_args.max_train_tokens, "--max_train_tokens") / tokens_per_step)
    raise UsageError("give --max_steps or --max_train_tokens")


ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")

# (lowest, highest, whether the lowest itself is allowed); None: no bound. Checked when the value is set.
RANGES = {
    "per_device_train_batch_size": (1, None, True),
    "per_device_eval_batch_size": (1, None, True),
    "gradient_accumulation_steps": (1, None, True),
    "max_steps": (1, None, True),
    "learning_rate": (0, None, False),
    "embedding_learning_rate": (0, None, False),
    "weight_decay": (0, None, True),
    "adam_beta1": (0, 1, True),
    "adam_beta2": (0, 1, True),
    "adam_epsilon": (0, None, False),
    "muon_momentum": (0, 1, True),
    "max_grad_norm": (0, None, True),
    "warmup_steps": (0, None, True),
    "min_lr_ratio": (0, 1, True),
    "decay_fraction": (0, 1, False),
    "save_steps": (1, None, True),
    "save_total_limit": (1, None, True),
    "logging_steps": (1, None, True),
    "eval_steps": (1, None, True),
    "eval_rows": (0, None, True),
    "max_bad_steps": (1, None, True),
    "block_size": (2, None, True),
    "preprocessing_num_workers": (1, None, True),
    "dataloader_num_workers": (0, None, True),
    "shuffle_window": (1, None, True),
    "validation_docs": (1, None, True),
    "peak_tflops": (0, None, False),
}


def check_values(config: TrainConfig, config_file: str | None = None, typed: set[str] = frozenset()) -> None:
    """Types and ranges of every value, before any work. The command line's values are converted by argparse,
    but a YAML file's arrive as YAML typed them (`max_steps: 12.5`, a string where a list belongs). `typed`: the
    flags the command line gave; the others' values came from `config_file` (or are defaults, which pass)."""

    def source(name: str) -> str:
        return f" (from --config {config_file})" if config_file and name not in typed else ""

    for group in vars(config).values():
        hints = typing.get_type_hints(type(group))
        for f in fields(group):
            value, where = getattr(group, f.name), source(f.name)
            expected = _describe_mismatch(value, hints[f.name])
            if expected:
                raise UsageError(f"--{f.name} {value!r}{where}: expected {expected}")
            if f.name in RANGES and value is not None:
                low, high, low_ok = RANGES[f.name]
                too_low = low is not None and (value < low or (value == low and not low_ok))
                too_high = high is not None and value > high
                if too_low or too_high:
                    bound = f"{'at least' if low_ok else 'above'} {low}" + (f" and at most {high}" if high else "")
                    raise UsageError(f"--{f.name} {value!r}{where}: must be {bound}")
    if config.train.max_train_tokens is not None:
        try:
            parse_count(config.train.max_train_tokens, "--max_train_tokens")
        except UsageError as err:
            raise UsageError(str(err).replace(": ", f"{source('max_train_tokens')}: ", 1)) from None
    if config.sft.sft and config.data.validation_fraction is not None:
        raise UsageError("--validation_fraction with --sft: conversations are held out by --validation_files only")
    check_streaming(config)
    schedule = config.schedule
    if schedule.lr_scheduler_type == "constant_with_warmup" and schedule.min_lr_ratio != MIN_LR_RATIO:
        raise UsageError(
            f"--min_lr_ratio {schedule.min_lr_ratio}{source('min_lr_ratio')}: --lr_scheduler_type "
            "constant_with_warmup never decays; use linear or cosine, or leave --min_lr_ratio out"
        )
    attention = config.model.attn_implementation
    if attention not in ATTENTION and "/" not in attention:  # "/": a kernel from the Hub, as transformers allows
        raise UsageError(f"--attn_implementation {attention!r}: choose one of {', '.join(ATTENTION)}")


def check_streaming(config: TrainConfig) -> None:
    """The flags that cannot go with --streaming, refused before any work."""
    data = config.data
    if not data.streaming:
        return
    if config.sft.sft:
        raise UsageError(
            "--streaming reads plain text; --sft conversations are prepared (they are small): drop --streaming"
        )
    if data.validation_fraction is not None:
        raise UsageError(
            "--validation_fraction holds documents out of prepared data; with --streaming the first --validation_docs "
            "documents of each source are held out instead: pass --validation_docs N"
        )
    if data.data_dir:
        raise UsageError(
            f"--data_dir {data.data_dir} names prepared blocks, and --streaming reads the sources while training "
            "instead: drop one of them"
        )
    if data.skip_bad_lines:
        raise UsageError(
            "--skip_bad_lines with --streaming: a streamed source is read in chunks that a bad line stops; fix or "
            "remove the lines the error names, or drop --streaming to prepare the data with --skip_bad_lines"
        )
    if data.dataloader_num_workers:
        raise UsageError(
            f"--dataloader_num_workers {data.dataloader_num_workers} with --streaming: the stream is read in the "
            "training process, where its position is known at every step; set --dataloader_num_workers 0"
        )


def _describe_mismatch(value, hint) -> str | None:
    """What `value` should have been, or None when it fits the annotation."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _describe_mismatch(value, inner[0]) if len(inner) == 1 else None
    if origin is Literal:
        return None if value in args else "one of " + ", ".join(map(str, args))
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return "a list of strings (in YAML: [a, b] or one '- item' per line)"
        return None
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "a whole number"
    if hint is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if hint is str:
        return None if isinstance(value, str) else "a string"
    return None
