"""Evaluate a checkpoint folder: lm-eval tasks (offline local copies or stock names) plus bits per byte and
perplexity on the held-out `_val` corpus files per language. Writes eval_results.json and eval_results.md, and
adds the results to the model card (CKPT/README.md: the table, and model-index metadata for full runs).

    python eval/run.py CKPT --tasks arc_easy_local,cmmlu_local [--limit N] [--output FILE] [--apply_chat_template]

For a chat model (an SFT, DPO or merged folder: its generation stops at <|im_end|>) the report also has the
held-out conversation loss per language: the loss on the assistants' replies of the `_val` conversations under
`--conversations` (default ../shared/data/sft: `<lang>/*_val.jsonl`), as SFT's validation measures it.
`--apply_chat_template` has lm-eval put each task prompt in the model's chat format.

(also `python -m shuangyu.evaluation.run`).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from shuangyu.devices import pick_device
from shuangyu.errors import UsageError, ctrl_c_is_one_line, print_error, print_interrupted, refuse_in_one_line
from shuangyu.evaluation.lm_eval_model import hf_model_class
from shuangyu.evaluation.local_tasks import (
    GROUPS,
    HELLASWAG_NOTE,
    SINGLE_TASKS,
    TASKS_DIR,
    check_benchmark_data,
    stock_dataset,
    write_task_yamls,
)
from shuangyu.evaluation.results import keep_earlier, portable_json, read_earlier_results
from shuangyu.files import atomic_write_text, check_writable_folder, parse_size
from shuangyu.library_warnings import lm_eval_truncating_requests
from shuangyu.progress import bars_only_on_a_terminal
from shuangyu.sharing.card import markdown_table, model_name, write_card
from shuangyu.sharing.folder import check_model_folder, is_chat_folder, needs_remote_code
from shuangyu.text.conversations import read_conversation_files
from shuangyu.text.readers import read_documents
from shuangyu.tokenizer.chat_template import encode_chat, labels_from_mask

PROG = "eval/run.py"  # as the user types it
REPO = Path(__file__).resolve().parents[2]
DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "corpus"
DEFAULT_CONVERSATIONS = REPO.parent / "shared" / "data" / "sft"
TRUE = ("1", "ON", "YES", "TRUE")  # how huggingface_hub and datasets read their *_OFFLINE variables

# Expected score of guessing uniformly at random, per task (prefix match; subjects inherit their group's).
RANDOM_BASELINES = {
    "hellaswag": 0.25,
    "arc_easy": 0.25,  # a few ARC questions have 3 or 5 options
    "arc_challenge": 0.25,
    "piqa": 0.5,
    "winogrande": 0.5,
    "openbookqa": 0.25,
    "boolq": 0.5,
    "lambada_openai": 0.0,  # acc: exact last word, no choices
    "xcopa_zh": 0.5,
    "cmmlu": 0.25,
    "ceval": 0.25,
}


def random_baseline(task: str) -> float | None:
    for prefix, value in RANDOM_BASELINES.items():
        if task.startswith(prefix):
            return value
    return None


def check_tasks(task_manager, tasks: list[str]) -> None:
    known = set(task_manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        local = sorted(t for t in known if t.endswith("_local"))
        raise UsageError(f"unknown task(s) {', '.join(unknown)}; local tasks: {', '.join(local)}")


def task_manager_for(tasks: list[str]):
    """An lm-eval TaskManager that knows the local tasks (YAMLs regenerated); checks the task names."""
    from lm_eval.tasks import TaskManager

    check_benchmark_data(tasks)  # first: YAMLs naming a folder without the data are never written
    write_task_yamls()
    # Indexing lm-eval's own thousands of task YAMLs takes 4-5 s on 2 cores (0.1 s for ours alone): only a
    # task not among ours (a stock name, read from the Hub) needs them
    task_manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    if not set(tasks) <= set(task_manager.all_tasks):
        task_manager = TaskManager(include_path=str(TASKS_DIR))
    check_tasks(task_manager, tasks)
    return task_manager


def run_lm_eval(
    ckpt: Path,
    tasks: list[str],
    limit: int | None,
    remote_code: bool,
    batch_size: int,
    device: str,
    task_manager,
    apply_chat_template: bool = False,
):
    import lm_eval

    model_args = f"pretrained={ckpt},trust_remote_code={remote_code},dtype=float32"
    try:
        # built as simple_evaluate(model="hf", model_args=...) builds it, with the bars chosen here
        model = hf_model_class(bars=sys.stderr.isatty()).create_from_arg_string(
            model_args, {"batch_size": batch_size, "max_batch_size": None, "device": device}
        )
        with lm_eval_truncating_requests() as truncations:
            results = lm_eval.simple_evaluate(
                model=model,
                tasks=tasks,
                limit=limit,
                task_manager=task_manager,
                apply_chat_template=apply_chat_template,
            )
        if truncations.count:
            print(
                f"{PROG}: note: {truncations.count} lm-eval requests were longer than the model's context "
                f"({model.max_length} tokens) and were cut from the left, as lm-eval does",
                file=sys.stderr,
            )
        return results
    except FileNotFoundError as err:  # a data file gone since check_benchmark_data (datasets names its path)
        raise UsageError(str(err)) from err
    except ConnectionError as err:  # a stock task's data is downloaded from the Hub when it is first used
        raise UsageError(not_downloaded(tasks, err)) from None


def not_downloaded(tasks: list[str], err: Exception) -> str:
    """What to say when a stock task's data could not be downloaded: the reason, and the local copies."""
    stock = [t for t in tasks if not t.endswith("_local")]
    copies = [f"{t.replace('-', '_')}_local" for t in stock]
    copies = [name for name in copies if name in SINGLE_TASKS or name in GROUPS]
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    offline = [name for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if os.environ.get(name, "").upper() in TRUE]
    why = f"{' and '.join(offline)} set" if offline else "no network?"
    local = f"; the local {'copy' if len(copies) == 1 else 'copies'}: {', '.join(copies)}" if copies else ""
    return f"could not download the data of {', '.join(stock) or 'the tasks'} ({reason}; {why}){local}"


def val_texts(corpus: Path, lang: str, max_bytes: int) -> list[str]:
    """Documents of the `<corpus>/<lang>/*_val.jsonl` files, at most max_bytes of text (0: all), an equal share
    from every file so that a byte cap samples all sources of the language; the last document of a share is cut
    (at a character) where the share ends, as one news article can be longer than a small cap."""
    files = sorted((corpus / lang).glob("*_val.jsonl"))
    if not files:
        raise UsageError(f"no held-out files {corpus / lang / '*_val.jsonl'} (set --corpus or SHUANGYU_CORPUS)")
    if not max_bytes:
        return read_documents(files)
    share, texts = max(1, max_bytes // len(files)), []
    for path in files:
        left = share
        for doc in read_documents([path], max_bytes=share):
            data = doc.encode("utf-8")[:left]
            texts.append(data.decode("utf-8", errors="ignore"))
            left -= len(data)
    return [text for text in texts if text]


def held_out_scores(model, tokenizer, texts: list[str], block_size: int, device: str) -> dict:
    """Bits per byte and perplexity of the documents, EOS-separated and cut into blocks of block_size tokens."""
    # torch (and what imports it) inside the functions that use it: a bad flag or folder is answered at once
    import torch

    from shuangyu.evaluation.bits_per_byte import HeldOutLoss, token_byte_lengths

    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids = []
    # special-token text in a document is text; a document longer than model_max_length is cut into blocks below
    for text in texts:
        ids.extend(
            tokenizer(text, add_special_tokens=False, split_special_tokens=True, verbose=False)["input_ids"] + eos
        )
    stream = torch.tensor(ids, dtype=torch.long)
    meter = HeldOutLoss(token_byte_lengths(tokenizer), device)
    # blocks overlap by one token, so every token after the first is predicted exactly once
    for start in range(0, len(stream) - 1, block_size):
        block = stream[start : start + block_size + 1].unsqueeze(0).to(device)
        if block.shape[1] >= 2:
            meter.add(model, block)
    scores = meter.result()
    return {key: scores[key] for key in ("bits_per_byte", "perplexity", "tokens", "bytes")}


def run_bpb(ckpt: Path, corpus: Path, langs: list[str], max_bytes: int, remote_code: bool, device: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts = {lang: val_texts(corpus, lang, max_bytes) for lang in langs}
    try:
        tokenizer = AutoTokenizer.from_pretrained(ckpt, trust_remote_code=remote_code)
        model = AutoModelForCausalLM.from_pretrained(ckpt, trust_remote_code=remote_code, dtype="float32")
    except Exception as err:  # OSError, ValueError, safetensors' own errors: what is wrong with the folder
        raise UsageError(f"{ckpt}: could not load the model ({type(err).__name__}: {err})") from None
    model = model.to(device).eval()
    block_size = min(getattr(model.config, "max_position_embeddings", 1024) or 1024, 1024)
    return {lang: held_out_scores(model, tokenizer, texts[lang], block_size, device) for lang in langs}


def conversation_scores(model, tokenizer, files: list[Path], max_conversations: int, context: int, device) -> dict:
    """Loss and bits per byte on the assistants' replies (and their <|im_end|>) of held-out conversations, one
    conversation per forward pass, cut to the context."""
    import torch

    from shuangyu.evaluation.bits_per_byte import HeldOutLoss, token_byte_lengths

    conversations = read_conversation_files(files)[: max_conversations or None]
    meter = HeldOutLoss(token_byte_lengths(tokenizer), device)
    for messages in conversations:
        ids, trained = encode_chat(tokenizer, messages)
        ids, labels = ids[:context], labels_from_mask(ids, trained)[:context]
        meter.add(model, torch.tensor([ids], device=device), torch.tensor([labels], device=device))
    scores = meter.result()
    return {"loss": scores["loss"], "bits_per_byte": scores["bits_per_byte"], "conversations": len(conversations),
            "tokens": scores["tokens"]}  # fmt: skip


def run_conversation_loss(ckpt: Path, folder: Path, langs: list[str], max_conversations: int, remote_code, device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    files = {lang: sorted((folder / lang).glob("*_val.jsonl")) for lang in langs}
    missing = [lang for lang, found in files.items() if not found]
    if missing:
        where = ", ".join(str(folder / lang / "*_val.jsonl") for lang in missing)
        raise UsageError(f"no held-out conversations {where} (set --conversations or SHUANGYU_CONVERSATIONS)")
    tokenizer = AutoTokenizer.from_pretrained(ckpt, trust_remote_code=remote_code)
    model = AutoModelForCausalLM.from_pretrained(ckpt, trust_remote_code=remote_code, dtype="float32").to(device).eval()
    context = getattr(model.config, "max_position_embeddings", 2048) or 2048
    return {
        lang: conversation_scores(model, tokenizer, found, max_conversations, context, device)
        for lang, found in files.items()
    }


def hub_dataset(task: str, configs: dict) -> dict | None:
    """The published dataset a task's score compares with, for model-index metadata; None for a score that
    compares with nothing published (the approximate HellaSwag rebuild)."""
    if "hellaswag" in task and task.endswith("_local"):
        return None
    if task in SINGLE_TASKS or task in GROUPS:
        return stock_dataset(task)
    cfg = configs.get(task)
    if isinstance(cfg, dict) and cfg.get("dataset_path"):
        split = cfg.get("test_split") or cfg.get("validation_split")
        return {"path": cfg["dataset_path"], "config": cfg.get("dataset_name"), "split": split}
    return None


def metric_rows(results: dict, tasks: list[str]) -> list[tuple[str, str, float, float | None]]:
    """(task, metric, value, random baseline) for the requested tasks (groups: their aggregate)."""
    rows = []
    table = results.get("results", {})
    for task in [t for t in tasks if t in table] or sorted(table):
        for key, value in table[task].items():
            metric, _, _filter = key.partition(",")
            if not isinstance(value, (int, float)) or metric.endswith("_stderr") or metric in ("alias", "sample_len"):
                continue
            baseline = random_baseline(task) if metric in ("acc", "acc_norm") else None
            rows.append((task, metric, float(value), baseline))
    return rows


def parse_args(argv):
    p = refuse_in_one_line(
        argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    )
    p.add_argument("checkpoint", type=Path, help="a saved model folder (config.json, weights, tokenizer)")
    p.add_argument("--tasks", default="", help="comma-separated lm-eval task or group names, e.g. arc_easy_local")
    p.add_argument("--limit", type=int, default=None, help="at most N documents per task (for quick checks)")
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help="results JSON (default CKPT/eval_results.json; elsewhere, the card is left alone)",
    )
    p.add_argument(
        "--corpus",
        type=Path,
        default=Path(os.environ.get("SHUANGYU_CORPUS") or DEFAULT_CORPUS),
        help="held-out text (<lang>/*_val.jsonl) for bits per byte (default: %(default)s; $SHUANGYU_CORPUS sets it)",
    )
    p.add_argument(
        "--langs", default="zh,en", help="languages (sub-folders of --corpus) for bits per byte (default: %(default)s)"
    )
    p.add_argument(
        "--bpb_max_bytes",
        default="1MB",
        help="held-out text per language for bits per byte, e.g. 500KB or 2MB (0 or all: all; default: %(default)s)",
    )
    p.add_argument("--batch_size", type=int, default=8, help="rows per forward pass (default: %(default)s)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--no_model_card", action="store_true", help="leave CKPT/README.md (the model card) as it is")
    p.add_argument(
        "--apply_chat_template", action="store_true", help="lm-eval puts each prompt in the model's chat format"
    )
    p.add_argument(
        "--conversations",
        type=Path,
        default=Path(os.environ.get("SHUANGYU_CONVERSATIONS") or DEFAULT_CONVERSATIONS),
        help="held-out conversations (<lang>/*_val.jsonl) for a chat model's reply loss",
    )
    p.add_argument(
        "--conversation_max",
        type=int,
        default=200,
        help="held-out conversations per language (0: all; default: %(default)s)",
    )
    args = p.parse_args(argv)
    # sizes as train_bpe.py's --max_bytes takes them (100KB, 2MB); 0 was already "all"
    text = str(args.bpb_max_bytes).strip().lower()
    args.bpb_max_bytes = 0 if text in ("0", "all") else parse_size(args.bpb_max_bytes, "--bpb_max_bytes")
    # before the model loads: lm-eval finds no documents at 0 and fails in islice below it, each with a traceback
    for flag, lowest, meaning in (
        ("limit", 1, "documents per task; leave it out to score them all"),
        ("batch_size", 1, "rows per forward pass"),
        ("conversation_max", 0, "0: all"),
    ):
        value = getattr(args, flag)
        if value is not None and value < lowest:
            raise UsageError(f"--{flag} {value}: must be at least {lowest} ({meaning})")
    tasks = [t for t in args.tasks.split(",") if t.strip()]
    if args.limit is not None and not tasks:
        raise UsageError(f"--limit {args.limit}: limits the lm-eval tasks, and no --tasks were given")
    if not tasks and not [lang for lang in args.langs.split(",") if lang.strip()]:
        raise UsageError("nothing to evaluate: give --tasks, or --langs for held-out bits per byte")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        return evaluate(argv)
    except KeyboardInterrupt:  # results and card are written whole at the end, so nothing is half-written
        return print_interrupted(PROG, "the results files and the model card were left as they were")


def evaluate(argv: list[str] | None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as err:
        return print_error(PROG, err)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    langs = [lang.strip() for lang in args.langs.split(",") if lang.strip()]
    try:
        config = check_model_folder(args.checkpoint)
        if "adapter" in config:
            raise UsageError(
                f"{args.checkpoint} is a LoRA adapter: merge it into a model folder first "
                f"(python -m shuangyu.training.merge_lora {args.checkpoint} MERGED) and evaluate that"
            )
        bars_only_on_a_terminal()
        output = args.output or args.checkpoint.resolve() / "eval_results.json"
        check_writable_folder(output.parent, "--output")
        earlier = read_earlier_results(output)
        device = pick_device(args.device)
        ckpt = args.checkpoint.resolve()
        remote_code = needs_remote_code(config)
        task_manager = task_manager_for(tasks) if tasks else None
        # lm-eval first: a stock task whose data cannot be downloaded stops the run in seconds, not after the
        # minutes of held-out scoring
        results = (
            run_lm_eval(
                ckpt, tasks, args.limit, remote_code, args.batch_size, device, task_manager, args.apply_chat_template
            )
            if tasks
            else {}
        )
        bpb = run_bpb(ckpt, args.corpus, langs, args.bpb_max_bytes, remote_code, device) if langs else {}
        chat = is_chat_folder(ckpt)
        conversations = (
            run_conversation_loss(ckpt, args.conversations, langs, args.conversation_max, remote_code, device)
            if chat and langs
            else {}
        )
    except UsageError as err:
        return print_error(PROG, err)
    rows = metric_rows(results or {}, tasks)
    configs = (results or {}).get("configs", {})
    date = datetime.now(timezone.utc).date().isoformat()
    report = {
        # the model's name as the card and a GGUF give it (not "final"), and no path: the file is pushed
        "checkpoint": model_name(ckpt),
        "date": date,
        "tasks": tasks,
        "limit": args.limit,
        "trust_remote_code": remote_code,
        "lm_eval": {k: (results or {}).get(k, {}) for k in ("results", "groups", "versions", "n-shot", "configs")},
        "held_out": {lang: scores | {"date": date} for lang, scores in bpb.items()},
        "held_out_conversations": {lang: scores | {"date": date} for lang, scores in conversations.items()},
        "apply_chat_template": args.apply_chat_template,
        "table": [
            {
                "task": t,
                "metric": m,
                "value": v,
                "random_guess": b,
                "dataset": hub_dataset(t, configs),
                "date": date,
                "limit": args.limit,
            }
            for t, m, v, b in rows
        ],  # fmt: skip
        "notes": [],
    }
    report = keep_earlier(report, earlier)
    if any("hellaswag" in row["task"] for row in report["table"]):
        report["notes"].insert(0, f"hellaswag_local: {HELLASWAG_NOTE}")
    atomic_write_text(output, portable_json(report, ckpt))
    table = markdown_table(report["table"], report["held_out"], report["notes"], report["held_out_conversations"])
    atomic_write_text(output.with_suffix(".md"), table)
    print(table)
    print(f"wrote {output} and {output.with_suffix('.md')}", file=sys.stderr)
    if args.no_model_card:
        return 0
    if output.resolve() == ckpt / "eval_results.json":
        print(f"updated the model card {write_card(ckpt, evaluation=report)}", file=sys.stderr)
    else:  # the card must agree with CKPT/eval_results.json, which push and the report read, not with this file
        print(
            f"left the model card {ckpt / 'README.md'} as it was: --output is not {ckpt / 'eval_results.json'}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    # a Ctrl-C that main() lets through is one line too, with the exit status for Ctrl-C
    with ctrl_c_is_one_line(PROG):
        sys.exit(main())
