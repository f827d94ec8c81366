"""What a resume must keep, checked before anything is loaded: the data mode, the flags that shape the optimizer
state or adapter, the model's shape, the block size, the rows per optimizer step and the sources (all recorded in
each checkpoint's checkpoint.json). A refusal is one line that names the run's value and where to train instead."""

from __future__ import annotations

import json
from pathlib import Path

from shuangyu.errors import UsageError
from shuangyu.training.checkpoint import (
    STREAM_POSITIONS,
    _stream_processes_differ,
    checkpoints_root,
    read_checkpoint_info,
)


def elsewhere(path: Path, out: str | Path | None) -> str:
    """Where to train instead, when a resume of `path` is refused for a flag: a checkpoint of this --output_dir's own
    run is left to it, so in a new --output_dir; another run's (named to go on from it) is already in a new one, so
    here without resuming it. `out` None: the run's own."""
    if out is None or path.resolve().parent == checkpoints_root(out).resolve():
        return "in a new --output_dir"
    return "without --resume_from_checkpoint"


def check_data_kind(path: Path, streaming: bool, out: str | Path | None = None) -> None:
    """A checkpoint resumes only in the data mode it was saved in: its data position is a stream's or a prepared
    folder's, and the two are not interchangeable."""
    saved_streaming = (path / STREAM_POSITIONS).is_file()
    if streaming and not saved_streaming:
        raise UsageError(
            f"--resume_from_checkpoint {path}: saved by a run on prepared blocks, which has no stream position: "
            f"resume it without --streaming, or stream {elsewhere(path, out)}"
        )
    if saved_streaming and not streaming:
        raise UsageError(
            f"--resume_from_checkpoint {path}: saved by a --streaming run: resume it with --streaming and the same "
            "sources"
        )


# The flags that shape the optimizer state a checkpoint holds. accelerator.load_state puts the checkpoint's
# parameter groups (learning rate, weight decay, betas, eps, Muon's momentum and scale) and the scheduler's peak
# rates back over the ones these flags built, so a changed value would be silently ignored; another optimizer,
# --embedding_learning_rate set or not, or another LoRA adapter has other parameter groups or weights, which do not
# load at all. The schedule's shape (--lr_scheduler_type, --warmup_steps, --min_lr_ratio, --decay_fraction,
# --max_steps) and --max_grad_norm are the command's own on a resume: they are not recorded.
OPTIMIZER_FLAGS = (
    "optimizer",
    "learning_rate",
    "embedding_learning_rate",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "muon_momentum",
    "muon_scale",
)
MUON_FLAGS = ("muon_momentum", "muon_scale")  # unused by an AdamW run: free to change
TRAINED_WITH = "trained_with"  # checkpoint.json's record of them, as the run applied them


def trained_with(config) -> dict:
    """The run's values of the flags a resume must keep, for checkpoint.json."""
    record = {name: getattr(config.optim, name) for name in OPTIMIZER_FLAGS}
    if config.lora.lora_r:  # the adapter always trains with AdamW (finetune.adapter_optimizer)
        record["optimizer"] = "adamw"
    record["lora_r"] = config.lora.lora_r
    record["lora_target_modules"] = sorted(config.lora.lora_target_modules)
    return record


def recorded_flags(path: Path) -> dict:
    """A checkpoint's record of its run's flags; one saved before the record was kept tells only whether it holds
    a LoRA adapter, and its rank (its model/ folder's adapter_config.json)."""
    record = read_checkpoint_info(path).get(TRAINED_WITH)
    if record is not None:
        return record
    try:
        return {"lora_r": json.loads((path / "model" / "adapter_config.json").read_text())["r"]}
    except FileNotFoundError:
        return {"lora_r": 0} if (path / "model" / "config.json").is_file() else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # loading it says what is wrong


def check_resume_flags(path: Path, config) -> None:
    """A resume continues the run it resumes: a flag that shapes its optimizer state or adapter, given another
    value, is refused in a line that names the run's value (before anything is loaded)."""
    saved, now = recorded_flags(path), trained_with(config)
    where = elsewhere(path, config.checkpoint.output_dir)
    if "lora_r" in saved and saved["lora_r"] != now["lora_r"]:
        was, given = saved["lora_r"], now["lora_r"]
        if was:
            given_text = f"--lora_r {given}" if given else "the whole model (no --lora_r)"
            raise UsageError(
                f"--resume_from_checkpoint {path}: this run trained a LoRA adapter with --lora_r {was}, not "
                f"{given_text}: resume with --lora_r {was}"
            )
        raise UsageError(
            f"--resume_from_checkpoint {path}: this run trained the whole model, not a LoRA adapter (--lora_r "
            f"{given}): resume without --lora_r, or train an adapter on its weights with --model_name_or_path "
            f"{path / 'model'} {where}"
        )
    if now["lora_r"] and saved.get("lora_target_modules", now["lora_target_modules"]) != now["lora_target_modules"]:
        was = _with("lora_target_modules", saved["lora_target_modules"])
        raise UsageError(
            f"--resume_from_checkpoint {path}: this run trained a LoRA adapter {was}, not "
            f"{_with('lora_target_modules', now['lora_target_modules'])}: resume {was}"
        )
    for name in OPTIMIZER_FLAGS:
        if name not in saved or saved[name] == now[name]:
            continue
        if name in MUON_FLAGS and saved.get("optimizer") != "muon":
            continue
        was, given = saved[name], now[name]
        if now["lora_r"]:
            instead = (
                f"merge its adapter (python -m shuangyu.training.merge_lora {path / 'model'} DIR) and fine-tune DIR "
                f"{where}"
            )
        else:
            instead = f"train on from its weights with --model_name_or_path {path / 'model'} {where}"
        raise UsageError(
            f"--resume_from_checkpoint {path}: this run trained {_with(name, was)}, not {_with(name, given)}, and "
            f"a resume continues its optimizer state: resume {_with(name, was)}, or {instead}"
        )


def _with(name: str, value) -> str:
    """'with --flag VALUE', or 'without --flag' for a flag left unset."""
    if value is None:
        return f"without --{name}"
    return f"with --{name} {' '.join(value) if isinstance(value, list) else value}"


# What makes one model's saved state fit another's: a checkpoint from a different shape fails deep inside
# load_state with a list of tensor sizes; these say it in a line.
SHAPE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "tie_word_embeddings",
    "norm_type",
    "mlp_type",
    "attention_bias",
    "mlp_bias",
)


def check_model_shape(path: Path, config, out: str | Path | None = None) -> None:
    """A checkpoint resumes only into the model shape that saved it (e.g. not after a preset changed)."""
    saved_file = path / "model" / "config.json"
    if not saved_file.is_file():  # a LoRA run's checkpoint holds the adapter only
        return
    saved, now = json.loads(saved_file.read_text()), config.to_dict()
    shared = [key for key in SHAPE_FIELDS if key in saved and key in now]
    differ = [f"{key} {saved[key]} there, {now[key]} here" for key in shared if saved[key] != now[key]]
    if differ:
        raise UsageError(
            f"--resume_from_checkpoint {path}: saved by a different model ({'; '.join(differ)}): resume with the "
            f"--model_config it was trained with, or start over {elsewhere(path, out)}"
        )


BATCH = "batch"  # checkpoint.json's record of the run's block size and rows per optimizer step


def batch_record(block_size: int, processes: int, per_device: int, accumulation: int) -> dict:
    return {"block_size": block_size, "processes": processes, "rows_per_step": processes * per_device * accumulation}


def check_batch(
    path: Path,
    block_size: int,
    processes: int,
    per_device: int,
    accumulation: int,
    streaming: bool,
    out: str | Path | None = None,
) -> None:
    """A resume keeps the run's --block_size and its rows per optimizer step (processes x
    --per_device_train_batch_size x --gradient_accumulation_steps): the schedule's steps, the token count and the
    data position are counted in them. Another split of the same rows (half the processes, twice the accumulation)
    resumes exactly; a --streaming run keeps its processes too (`read_stream_position`). Checked before the data is
    prepared: another --block_size prepared it again (minutes on a corpus) and only then was refused."""
    saved = read_checkpoint_info(path).get(BATCH)
    if not saved:
        return  # saved before the record was kept
    where = elsewhere(path, out)
    if saved["block_size"] != block_size:
        raise UsageError(
            f"--resume_from_checkpoint {path}: this run trained with --block_size {saved['block_size']}, not with "
            f"--block_size {block_size}: resume with --block_size {saved['block_size']}, or start over {where}"
        )
    if streaming and saved["processes"] != processes:
        raise _stream_processes_differ(path, saved["processes"], processes)
    rows, was = batch_record(block_size, processes, per_device, accumulation)["rows_per_step"], saved["rows_per_step"]
    if rows == was:
        return
    if was % processes:
        raise UsageError(
            f"--resume_from_checkpoint {path}: resumed with {processes} processes instead of {saved['processes']}: "
            f"its {was} rows per step do not divide among them: resume with {saved['processes']} processes, or start "
            f"over {where}"
        )
    if processes != saved["processes"]:
        what = f"resumed with {processes} process{'es' if processes > 1 else ''} instead of {saved['processes']}"
    else:
        what = (
            f"this run trained {was} rows per step, not {rows} ({processes} x --per_device_train_batch_size "
            f"{per_device} x --gradient_accumulation_steps {accumulation})"
        )
    each = was // processes  # rows per process and step; the largest micro-batch up to this one that divides it
    micro = max(d for d in range(1, min(per_device, each) + 1) if each % d == 0)
    flags = f"--gradient_accumulation_steps {each // micro}"
    if micro != per_device:
        flags = f"--per_device_train_batch_size {micro} {flags}"
    raise UsageError(
        f"--resume_from_checkpoint {path}: {what}: pass {flags} to keep {was} rows per step, or start over {where}"
    )


DATA = "data"  # checkpoint.json's record of the sources and data flags the run was given (`data_given`)


def data_given(config, tokenizer, processes: int) -> dict | None:
    """The run's data as its command names it, read from the flags and the file names their globs match, not from
    the text: a --streaming run's stream key (data.stream_key); for prepared blocks, each source's name, share
    of the mix and files (paths below their shared folder: a corpus copied elsewhere, or anew, is the same) or
    dataset, the tokenizer, --text_column and --seed. Text that changed under the same names is found when the data
    is prepared again (its blocks differ). None without sources (a prepared --data_dir), or for sources that do
    not resolve (their own checks say why, in their words)."""
    from shuangyu.data.inputs import normalised_weights
    from shuangyu.data.stream_key import stream_key
    from shuangyu.data.stream_sources import files_digest, stream_sources
    from shuangyu.text.sources import SourceArguments, resolve_validation_sources
    from shuangyu.tokenizer.loading import tokenizer_fingerprint

    d = config.data
    if not (d.train_files or d.dataset_name):
        return None
    try:
        if d.streaming:
            specs, paths = resolve_validation_sources(d.validation_files)
            validation = {"files": [(s.name, p) for s, p in zip(specs, paths, strict=True)]}
            return stream_key(
                stream_sources(d.train_files, d.dataset_name, d.exclude), tokenizer, d.block_size,
                split=d.dataset_split, text_column=d.text_column, window=d.shuffle_window,
                validation=validation if d.validation_files else {"first_docs": d.validation_docs},
                seed=config.train.seed, world_size=processes,
            )  # fmt: skip
        # resolved as prepare resolves them (its errors come later, in prepare's words)
        given = SourceArguments(files=d.train_files, dataset=d.dataset_name, exclude=d.exclude)
        specs, resolved = given.resolve_sources()
        sources = []
        shares = normalised_weights(specs) or [None] * len(specs)
        for spec, files, share in zip(specs, resolved, shares, strict=True):
            entry = {"name": spec.name, "share": share}
            if spec.is_dataset:
                entry |= {"dataset": spec.dataset, "config": spec.config, "split": d.dataset_split}
            else:
                entry |= {"files": len(files), "paths_sha256": files_digest(files, sizes=False)}
            sources.append(entry)
    except UsageError:
        return None
    return {
        "sources": sources,
        "text_column": d.text_column,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "seed": config.train.seed,
    }


def check_data(path: Path, given: dict | None, out: str | Path | None = None) -> None:
    """A resume reads the data its run started with: other sources, weights, files or data flags are refused
    before anything is prepared or streamed (then the run's own data/ would be prepared over with the wrong blocks
    first). A checkpoint saved before the record was kept is checked by the data position alone, later."""
    saved = read_checkpoint_info(path).get(DATA)
    if not saved or not given or saved == given:
        return
    from shuangyu.data.stream_key import describe_key_change

    raise UsageError(
        f"--resume_from_checkpoint {path}: this run trained on other data ({describe_key_change(saved, given)} "
        f"changed since it started): resume with the sources and data flags it started with, or start over "
        f"{elsewhere(path, out)}"
    )


def check_before_data(
    path: Path, config, model_config, processes: int, out: str | Path, data: dict | None = None
) -> None:
    """What can be checked before the data is prepared: a refusal after it wasted that work (minutes on a corpus).
    `data`: the run's `data_given`."""
    t = config.train
    check_model_shape(path, model_config, out)
    per_device, accumulation = t.per_device_train_batch_size, t.gradient_accumulation_steps
    check_batch(path, config.data.block_size, processes, per_device, accumulation, config.data.streaming, out)
    check_data(path, data, out)


def resume_record(config, block_size: int, processes: int, data: dict | None = None) -> dict:
    """checkpoint.json's record of what a resume must keep (run_args.json is rewritten by every resume); `data`:
    the run's `data_given`, as it started."""
    t = config.train
    return {
        TRAINED_WITH: trained_with(config),
        BATCH: batch_record(block_size, processes, t.per_device_train_batch_size, t.gradient_accumulation_steps),
        **({DATA: data} if data else {}),
    }
