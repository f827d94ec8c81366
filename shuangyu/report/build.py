"""The report of a training run, rebuilt from its folder (a train_clm.py --output_dir, on this machine or copied
from a GPU machine):

    python -m shuangyu.report RUN_DIR [--chat_run SFT_RUN_DIR] [--corpus ../shared/data/corpus]

Writes RUN_DIR/report.md and RUN_DIR/loss.png, prints the report, and links the PNG from the final model's card
(a copy of the PNG goes beside the card, so a push takes it along; a checkpoint's folder is never written to, since
a changed file would make resuming pass the checkpoint over). A run that stopped before final/ is reported from
its latest checkpoint, and says so. Sections: environment (from the run's
environment.json), tokenizer compression against GPT-2 and MiniMind, data mix and recipe (the model card's),
training time, the loss curves, the evaluation table (the model folder's eval_results.json, from eval/run.py),
samples for fixed prompts, and the commands to talk to the model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from shuangyu.environment import describe_environment
from shuangyu.errors import UsageError, print_error, print_interrupted, refuse_in_one_line
from shuangyu.evaluation.run import val_texts
from shuangyu.files import atomic_write_text
from shuangyu.progress import bars_only_on_a_terminal
from shuangyu.report.compression import compression_rows, compression_table, reference_tokenizers
from shuangyu.report.curves import languages, plot_curves, read_log
from shuangyu.report.samples import generate_samples
from shuangyu.sharing.card import (
    card_stage,
    drop_section,
    held_out_note,
    limit_text,
    markdown_table,
    read_section,
    write_card,
)
from shuangyu.sharing.folder import is_chat_folder
from shuangyu.training.checkpoint import complete_checkpoints, read_checkpoint_info
from shuangyu.training.run_lock import is_held
from shuangyu.training.run_log import LOG_NAME

PROG = "python -m shuangyu.report"
REPO = Path(__file__).resolve().parents[2]
DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "corpus"
DEFAULT_REFERENCES = REPO.parent / "shared" / "data" / "tokenizers"
COMPRESSION_BYTES = 2_000_000  # held-out text per language for the tokenizer table: enough for 3 digits


def is_model(folder: Path) -> bool:
    """A model folder or a LoRA adapter folder (a --lora_r run saves only the adapter)."""
    return (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()


def is_adapter(folder: Path) -> bool:
    return not (folder / "config.json").is_file() and (folder / "adapter_config.json").is_file()


def model_folder(run_dir: Path, flag: str = "") -> Path:
    """The run's final model, or its latest complete checkpoint's while it trains (or after it stopped). `flag`
    names the option the run folder was given with, for the error line."""
    named = f"{flag} {run_dir}" if flag else f"{run_dir}"
    if not run_dir.is_dir():
        raise UsageError(f"{named}: no such run folder")
    if is_model(run_dir / "final"):
        return run_dir / "final"
    done = complete_checkpoints(run_dir)
    if done and is_model(done[-1][1] / "model"):
        return done[-1][1] / "model"
    if is_model(run_dir):  # a run's final/ or a checkpoint's model/ (the demo prints the former's path)
        model = run_dir.resolve()
        run = model.parents[2] if model.parent.parent.name == "checkpoints" else model.parent
        where = f"its run folder, {run}" if model.name == "final" or run != model.parent else "the run's --output_dir"
        raise UsageError(f"{named}: a model folder, not a run folder: give {where}")
    raise UsageError(f"{named}: no final model and no complete checkpoint: is it a train_clm.py --output_dir?")


def chat_run_folder(chat_run: Path) -> Path:
    """The --chat_run's model, refused unless it is an instruction-tuned one: an SFT or DPO run (or a LoRA
    adapter of one) leaves a chat model, whose generation stops at <|im_end|> (an adapter's card says so)."""
    folder = model_folder(chat_run, "--chat_run")
    if not is_chat_folder(folder):
        raise UsageError(
            f"--chat_run {chat_run}: not an instruction-tuning run ({folder} is not a chat model); "
            "give the output folder of an SFT or DPO run of this model"
        )
    return folder


def duration(seconds: float) -> str:
    """Seconds for a run under a minute (a short run is not 0.0 min), minutes after."""
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 9.95 else f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def stopped_early_line(run_dir: Path, folder: Path) -> str | None:
    """What a run without final/ recorded in its latest checkpoint: the steps done of those planned, and how to
    go on. None for a finished run."""
    if folder == run_dir / "final":
        return None
    info = read_checkpoint_info(folder.parent)
    step, planned = info.get("step", "?"), info.get("max_steps")
    of = f" of {planned} planned" if isinstance(planned, int) else ""
    where = f"this report is on its latest checkpoint, `{folder.parent.relative_to(run_dir)}`"
    if is_held(run_dir):
        return f"**Still training:** no final model yet; {where}, step {step}{of}."
    if step == planned:  # stopped between its last save and copying it to final/
        return (
            f"**No final model:** the run saved all {step} planned steps ({where}) but stopped before writing "
            "`final/`. The same training command with `--resume_from_checkpoint latest` writes it."
        )
    return (
        f"**Stopped early:** no final model; the run saved {step} steps{of} ({where}). Run the same training "
        "command with `--resume_from_checkpoint latest` to continue it."
    )


ADAPTER_KINDS = {"sft": "an instruction-tuned (SFT)", "dpo": "an instruction-tuned, preference-tuned (DPO)"}


def adapter_line(folder: Path) -> str | None:
    """What a LoRA adapter is and what it needs, for the top of the report; None for a full model folder."""
    if not is_adapter(folder):
        return None
    base = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    kind = ADAPTER_KINDS.get(card_stage(folder), "a")  # the stage its card records
    return (
        f"The model is {kind} LoRA adapter (`{folder.name}/`) on `{base}`: `python -m shuangyu.chat` loads it on its "
        "base model; evaluation and export need it merged into a model folder first "
        "(`python -m shuangyu.training.merge_lora`)."
    )


def training_time(rows: list[dict]) -> float:
    """Seconds of training over every session of the run. A resumed run's time_s goes on from its checkpoint's.
    A checkpoint saved before it did restarts time_s at 0: a new session is seen where time_s goes down, and one
    whose first row comes later than the last session's last is missed (its time counted from its own start)."""
    total, last = 0.0, 0.0
    for row in rows:
        t = row.get("time_s")
        if t is None:
            continue
        if t < last:  # a new session began
            total += last
        last = t
    return total + last


def environment_section(run_dir: Path) -> str:
    path = run_dir / "environment.json"
    if path.is_file():
        env, note = json.loads(path.read_text(encoding="utf-8")), "recorded by the run"
    else:
        env, note = describe_environment(), "not recorded by the run: this is the machine that built the report"
    v = env.get("versions", {})
    rows = [
        ("date", env.get("date")),
        ("machine", f"{env.get('cpu')}, {env.get('cpu_cores')} cores, {env.get('memory_gib')} GiB"),
        ("GPUs", ", ".join(env.get("gpus") or []) or "none"),
        ("processes", env.get("processes")),
        ("precision", {"no": "fp32"}.get(env.get("mixed_precision"), env.get("mixed_precision"))),  # accelerate's "no"
        ("versions", ", ".join(f"{k} {val}" for k, val in v.items())),
        ("commit", env.get("commit") or "not a git checkout"),
        ("command", f"`{env['command']}`" if env.get("command") else None),
    ]
    lines = [f"## Environment ({note})", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {val} |" for k, val in rows if val not in (None, "")]
    return "\n".join(lines)


def tokenizer_section(folder: Path, corpus: Path, references: list[tuple[str, Path]], langs: list[str]) -> str:
    texts = {}
    for lang in langs:
        try:  # the held-out text eval/run.py measures bits per byte on, read the same way
            texts[lang] = val_texts(corpus, lang, COMPRESSION_BYTES)
        except UsageError:  # no `_val` files for this language: no column for it
            pass
    if not texts:
        return f"## Tokenizer\n\nNo held-out text under {corpus}/<lang>/*_val.jsonl to measure compression on."
    rows = compression_rows(folder / "tokenizer.json", texts, references)
    sizes = ", ".join(f"{lang} {sum(len(t.encode()) for t in docs) / 1e6:.1f} MB" for lang, docs in texts.items())
    return (
        "## Tokenizer\n\n"
        f"Compression of held-out text (`{corpus.name}/<lang>/*_val.jsonl`: {sizes}); more characters and bytes "
        "per token is better (shorter sequences for the same text).\n\n" + compression_table(rows)
    )


def merged_folder(adapter: Path) -> Path:
    """Where the report's advice has merge_lora put a LoRA run's adapter merged into its base."""
    if adapter.name != "final":  # a checkpoint's model/
        return adapter.parents[3] / f"{adapter.parents[2].name}-{adapter.parent.name}-merged"
    return adapter.parent.parent / f"{adapter.parent.name}-merged"


def eval_section(folder: Path) -> str:
    path, source = folder / "eval_results.json", ""
    if not path.is_file() and is_adapter(folder):
        # eval/run.py refuses an adapter; the merged model's results sit beside its own card, which they match
        path, source = merged_folder(folder) / "eval_results.json", f" on the merged model `{merged_folder(folder)}`"
    if not path.is_file():
        tasks = "--tasks arc_easy_local,xcopa_zh_local --limit 100"
        tasks += " --apply_chat_template" if is_chat_folder(folder) else ""
        if is_adapter(folder):
            merged = merged_folder(folder)
            return (
                "## Evaluation\n\nNot evaluated yet. eval/run.py evaluates a model folder, and this is a LoRA "
                f"adapter: merge it first, `python -m shuangyu.training.merge_lora {folder} {merged}`, then "
                f"`python eval/run.py {merged} {tasks}` (the merged model has the adapter's logits; its results and "
                "model card go into the merged folder, where this report reads them), then rebuild this report."
            )
        return f"## Evaluation\n\nNot evaluated yet: `python eval/run.py {folder} {tasks}`, then rebuild this report."
    report = json.loads(path.read_text(encoding="utf-8"))
    limited = limit_text(report)
    limit = f", at most {limited} examples per task" if limited else ""
    table = markdown_table(
        report.get("table", []),
        report.get("held_out", {}),
        report.get("notes", []),
        report.get("held_out_conversations", {}),
    )
    chat = ", task prompts in the chat format (`--apply_chat_template`)" if report.get("apply_chat_template") else ""
    held_out = f"\n\n{held_out_note(report)}" if report.get("held_out") else ""
    return (
        f"## Evaluation\n\n`eval/run.py`{source} (lm-eval{limit}{chat}; random guessing scores shown beside each task):"
        f"\n\n{table}{held_out}"
    )


def samples_section(folder: Path, chat: bool) -> str:
    rows = generate_samples(folder, chat)
    kind = "replies to fixed questions" if chat else "continuations of fixed prompts"
    lines = [
        f"## Samples ({kind})",
        "",
        "Greedy, then sampled with `python -m shuangyu.chat`'s default settings (temperature 0.7, top-p 0.9, "
        "top-k 50, repetition penalty 1.1; seed 0), the penalty as transformers applies it: the chat command's own "
        "spares the byte pieces of rare Chinese characters, so its text can differ.",
        "",
    ]
    for row in rows:
        lines += [f"**{row['lang']}** `{row['prompt']}`", ""]
        for kind in ("greedy", "sampled"):
            text = row[kind].replace("\n", " ⏎ ").rstrip()  # the leading space is part of the continuation
            lines += [f"- {kind}: {row['prompt'] if not chat else ''}{text}", ""]
    return "\n".join(lines).rstrip()


def talk_line(folder: Path) -> str:
    what = "adapter" if is_adapter(folder) else "model"
    if is_chat_folder(folder):
        return f"python -m shuangyu.chat {folder}                # chat (the instruction-tuned {what})"
    base = "the base model" if what == "model" else "the adapter on its base model"
    return f'python -m shuangyu.chat {folder} --prompt "今天天气很好，"   # continue text ({base})'


def talk_section(folder: Path, chat_folder: Path | None) -> str:
    lines = ["## Talk to it", "", "```bash"]
    if chat_folder:
        lines.append(talk_line(chat_folder))
    lines += [talk_line(folder), "```"]
    return "\n".join(lines)


def step_count(count: int, kind: str = "") -> str:
    return f"{count} {kind}step{'' if count == 1 else 's'}"


def summary_line(rows: list[dict] | None, seconds: float) -> str:
    if rows is None:
        return (
            "The training log (train_log.jsonl) is missing from this folder, so how many steps the run trained, "
            "for how long and at what loss is not known here (the recipe below is what it was set to do); "
            "copy the log from the machine that trained it and rebuild this report."
        )
    if not rows:
        return "No training step logged yet."
    last = next((row for row in reversed(rows) if any(k.endswith("/bits_per_byte") for k in row)), None)
    tokens = rows[-1].get("train/tokens")
    text = f"Trained {step_count(rows[-1]['step'])}"
    text += f", {tokens:,} tokens" if tokens else ""
    text += f" in {duration(seconds)}"
    if last:
        bpb = ", ".join(f"{lang} {last[f'eval/{lang}/bits_per_byte']:.3f}" for lang in languages([last]))
        text += f"; held-out bits per byte at step {last['step']}: {bpb}"
    return text + "."


def training_time_line(rows: list[dict] | None, seconds: float) -> str:
    if rows is None:
        return "Training time: not known (no train_log.jsonl)."
    exact = f" ({seconds:.0f} s)" if seconds >= 60 else ""
    return f"Training time: {duration(seconds)}{exact} over {step_count(len(rows), 'logged ')}."


def curves_missing(rows: list[dict] | None) -> str:
    return "No training log (train_log.jsonl) to draw them from." if rows is None else "No training loss logged yet."


def build_report(
    run_dir: Path,
    corpus: Path = DEFAULT_CORPUS,
    references: Path | None = None,
    chat_run: Path | None = None,
    samples: bool = True,
) -> Path:
    """Writes RUN_DIR/report.md and RUN_DIR/loss.png (and links the PNG from the final model's card); returns the
    report's path. The files are written after the slow parts (samples), each whole, so a Ctrl-C leaves none half
    written."""
    run_dir = Path(run_dir)
    folder = model_folder(run_dir)
    chat_folder = chat_run_folder(Path(chat_run)) if chat_run else None
    # a folder the user named must hold a tokenizer; the default one may be missing (no shared/ checkout)
    reference_list = reference_tokenizers(Path(references or DEFAULT_REFERENCES), required=references is not None)
    rows, cut_off = read_log(run_dir)
    if cut_off:  # a run killed while it wrote, or a folder copied while it trained
        print(f"{PROG}: note: {run_dir / LOG_NAME}: its last line is cut off; left out", file=sys.stderr)
    seconds = training_time(rows or [])
    langs = languages(rows or []) or ["zh", "en"]
    title = f"{run_dir.resolve().name}: {summary_line(rows, seconds)[:-1]}"
    new_png = run_dir / f".loss.png.new-{os.getpid()}"  # renamed into place with the report, not before
    try:
        png = plot_curves(rows, new_png, title) if rows else None
        card = (folder / "README.md").read_text(encoding="utf-8") if (folder / "README.md").is_file() else ""
        parts = [
            f"# Report: {run_dir.resolve().name}",
            stopped_early_line(run_dir, folder),
            summary_line(rows, seconds),
            adapter_line(folder),
            environment_section(run_dir),
            tokenizer_section(folder, corpus, reference_list, langs),
            (read_section(card, "training") or "## Training\n\nThe model card has no training section.").strip(),
            training_time_line(rows, seconds),
            "## Loss curves\n\n" + ("![loss curves](loss.png)" if png else curves_missing(rows)),
            eval_section(folder),
        ]
        if samples:
            parts.append(samples_section(folder, is_chat_folder(folder)))
        if chat_folder:
            chat_card = (chat_folder / "README.md").read_text(encoding="utf-8")
            chat_training = read_section(chat_card, "training") or "The model card has no training section."
            parts.append("## Instruction tuning\n\n" + chat_training.replace("## Training", "### Training").strip())
            parts.append(eval_section(chat_folder).replace("## Evaluation", "### Evaluation"))
            if samples:
                parts.append(samples_section(chat_folder, True).replace("## Samples", "### Samples"))
        parts.append(talk_section(folder, chat_folder))
        publish_curves(run_dir, folder, png)
        return atomic_write_text(run_dir / "report.md", "\n\n".join(part for part in parts if part) + "\n")
    finally:
        new_png.unlink(missing_ok=True)


def publish_curves(run_dir: Path, folder: Path, png: Path | None) -> None:
    """The new PNG into RUN_DIR/loss.png and beside final/'s card, which links it; with none drawn, an older one
    is removed from both, and so is the card's link, so neither shows curves of another run or session. A
    checkpoint's model folder is left as it is: its files' sizes are recorded, and resuming passes over a
    checkpoint whose files changed."""
    final = folder if folder == run_dir / "final" else None
    if png is None:
        (run_dir / "loss.png").unlink(missing_ok=True)
        if final is not None:
            (final / "loss.png").unlink(missing_ok=True)
            drop_section(final, "curves")
        return
    if final is not None:
        copy = final / f".loss.png.tmp-{os.getpid()}"
        try:
            shutil.copyfile(png, copy)
            os.replace(copy, final / "loss.png")
        finally:
            copy.unlink(missing_ok=True)
        write_card(final, curves="loss.png")
    os.replace(png, run_dir / "loss.png")


def main(argv: list[str] | None = None) -> int:
    p = refuse_in_one_line(argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0]))
    p.add_argument("run_dir", type=Path, help="a train_clm.py --output_dir")
    p.add_argument(
        "--chat_run", type=Path, default=None, help="an instruction-tuning (SFT or DPO) run of this model, reported too"
    )
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="held-out text: <corpus>/<lang>/*_val.jsonl")
    p.add_argument(
        "--references",
        type=Path,
        default=None,
        help=f"a reference tokenizer's folder, or a folder of them (default: {DEFAULT_REFERENCES}, if there)",
    )
    p.add_argument("--no_samples", action="store_true", help="leave out the samples (no model is loaded)")
    try:
        args = p.parse_args(argv)
        bars_only_on_a_terminal()
        report = build_report(args.run_dir, args.corpus, args.references, args.chat_run, not args.no_samples)
    except UsageError as err:
        return print_error(PROG, err)
    except KeyboardInterrupt:  # each file is written whole after the slow parts: nothing to clean up
        return print_interrupted(PROG, "no file was left half written; run it again to build the report")
    print(report.read_text(encoding="utf-8"))
    drawn = "](loss.png)" in report.read_text(encoding="utf-8")  # the report links the PNG only when it drew one
    print(f"wrote {report}" + (f" and {report.parent / 'loss.png'}" if drawn else ""), file=sys.stderr)
    return 0
