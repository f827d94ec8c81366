"""The model card: README.md in a checkpoint folder, what a Hub user reads and what the Hub indexes. One job in
one file, though long: base models, chat models and LoRA adapters get the same card, told apart by a few lines.

Metadata (YAML front matter, through huggingface_hub's ModelCardData): languages, license, tags, Hub datasets,
and `model-index` with the evaluation results. Text: what the model is, how to load it, the training data and
recipe, the evaluation table, limitations.

Three writers fill it in: train_clm.py with every checkpoint (training), eval/run.py (evaluation) and
eval/push.py (how to load it from the Hub). The card knows nothing of lm-eval: the evaluation report it is given
says which published dataset each score compares with (shuangyu.evaluation.run.hub_dataset). Each owns a section between `<!-- shuangyu:NAME -->` markers and
replaces only that, so text a user adds outside the markers survives every update.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors import safe_open

from shuangyu.files import atomic_write_text

SECTIONS = ("usage", "training", "curves", "evaluation")
# What an adapter's training did, per stage, as its card's first paragraph says it
ADAPTER_TRAINING = {
    "pretraining": "trained on the data listed below",
    "fine-tuning": "trained on the data listed below",
    "sft": "instruction-tuned (SFT) on the conversations listed below",
    "dpo": "preference-tuned (DPO) on the pairs listed below",
}
# The stages that make a chat model; a chat card carries its stage as a tag too, so merge_lora can keep it
CHAT_STAGES = ("sft", "dpo")
TAGS = ["shuangyu", "causal-lm", "pretrained", "bilingual", "chinese", "english"]
DEFAULT_LANGUAGES = ["zh", "en"]


def _begin(name: str) -> str:
    return f"<!-- shuangyu:{name} -->"


def _end(name: str) -> str:
    return f"<!-- /shuangyu:{name} -->"


def replace_section(body: str, name: str, text: str) -> str:
    """The body with section `name` replaced by `text` (appended when the body has no such section)."""
    block = f"{_begin(name)}\n{text.strip()}\n{_end(name)}"
    pattern = re.compile(re.escape(_begin(name)) + r".*?" + re.escape(_end(name)), re.DOTALL)
    if pattern.search(body):
        return pattern.sub(lambda _: block, body, count=1)
    return body.rstrip() + "\n\n" + block + "\n"


def read_section(body: str, name: str) -> str | None:
    """The text of section `name` (between its markers), or None."""
    pattern = re.compile(re.escape(_begin(name)) + r"\n?(.*?)\n?" + re.escape(_end(name)), re.DOTALL)
    match = pattern.search(body)
    return match.group(1) if match else None


def drop_section(folder: Path, name: str) -> None:
    """Remove section `name` from FOLDER/README.md, if it has one (e.g. the loss curves, when the PNG it links is
    gone)."""
    path = Path(folder) / "README.md"
    body = path.read_text(encoding="utf-8") if path.is_file() else ""
    pattern = re.compile(r"\n*" + re.escape(_begin(name)) + r".*?" + re.escape(_end(name)) + r"\n?", re.DOTALL)
    if pattern.search(body):
        atomic_write_text(path, pattern.sub("\n", body, count=1))


def copy_section(source: Path, dest: Path, name: str) -> None:
    """Copy section `name` of SOURCE/README.md into DEST/README.md (e.g. an adapter's training record into the
    merged model's card)."""
    theirs = (source / "README.md").read_text(encoding="utf-8") if (source / "README.md").is_file() else ""
    text = read_section(theirs, name)
    if text is not None and (dest / "README.md").is_file():
        body = (dest / "README.md").read_text(encoding="utf-8")
        atomic_write_text(dest / "README.md", replace_section(body, name, text))


def count_parameters(folder: Path) -> int | None:
    """Parameters stored in the folder's safetensors files, read from their headers (no weights loaded)."""
    total, files = 0, sorted(folder.glob("*.safetensors"))
    for path in files:
        with safe_open(path, framework="np") as weights:
            total += sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())
    return total if files else None


def human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def describe(config: dict, parameters: int | None, training: dict | None = None) -> str:
    size = f"{human_count(parameters)}-parameter " if parameters else ""
    shape = ", ".join(
        f"{label} {config[key]:,}"
        for label, key in (
            ("layers", "num_hidden_layers"),
            ("hidden size", "hidden_size"),
            ("attention heads", "num_attention_heads"),
            ("context", "max_position_embeddings"),
            ("vocabulary", "vocab_size"),
        )
        if isinstance(config.get(key), int)
    )
    stage = (training or {}).get("stage", "pretraining")
    base = (training or {}).get("base_model")
    adapter = config.get("adapter")
    if adapter:
        trained = ADAPTER_TRAINING.get(stage, "fine-tuned")
        return (
            f"A LoRA adapter (rank {adapter.get('r')}, {human_count(parameters) if parameters else '?'} parameters) "
            f"for the Shuangyu model `{adapter.get('base_model_name_or_path')}`, {trained}. Load it with PEFT on top "
            "of that model, or merge it into a full model folder (`python -m shuangyu.training.merge_lora`)."
        )
    if stage in CHAT_STAGES:
        if stage == "sft":
            how = f"instruction-tuned with Shuangyu by supervised fine-tuning on the conversations listed below, from `{base}`"
        else:
            how = f"an instruction-tuned model preference-tuned with Shuangyu by DPO on the pairs listed below, from `{base}`"
        return (
            f"A {size}Chinese-English chat model (`{config.get('model_type', '?')}`: {shape}): {how}. It is not a "
            "base model: it answers in the ChatML chat format (its tokenizer carries the template) and stops at "
            "`<|im_end|>`."
        )
    how = (
        f"trained further from `{base}` with Shuangyu"
        if stage == "fine-tuning"
        else "pretrained from scratch with Shuangyu"
    )
    return (
        f"A {size}Chinese-English base language model (`{config.get('model_type', '?')}`: {shape}), {how}. It is a "
        "base model: it continues text, and has not been instruction-tuned or aligned."
    )


def chat_usage_section(load_path: str, remote_code: bool, adapter: bool) -> str:
    trust = ", trust_remote_code=True" if remote_code else ""
    if adapter:
        return "\n".join(
            [
                "## How to use",
                "",
                "```python",
                "from peft import AutoPeftModelForCausalLM",
                "from transformers import AutoTokenizer, GenerationConfig",
                "",
                f'model = AutoPeftModelForCausalLM.from_pretrained("{load_path}", trust_remote_code=True)',
                "# the adapter's generation config (a chat adapter's stops at <|im_end|>): PEFT loads its base model's",
                f'model.generation_config = GenerationConfig.from_pretrained("{load_path}")',
                f'tokenizer = AutoTokenizer.from_pretrained("{load_path}")',
                "```",
                "",
                f"or merge it into a full model folder: `python -m shuangyu.training.merge_lora {load_path} MERGED`; "
                f"talk to it with `python -m shuangyu.chat {load_path}`.",
            ]
        )
    return "\n".join(
        [
            "## How to use",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("{load_path}"{trust})',
            f'tokenizer = AutoTokenizer.from_pretrained("{load_path}"{trust})',
            'messages = [{"role": "user", "content": "给出三个保持健康的秘诀。"}]',
            "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors='pt')",
            "out = model.generate(**inputs, max_new_tokens=200, do_sample=True, temperature=0.7, top_p=0.9,",
            "                     repetition_penalty=1.1)",
            'print(tokenizer.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
            "```",
            "",
            f"Or on a terminal, with Shuangyu: `python -m shuangyu.chat {load_path}`. The tokenizer's chat template is "
            "ChatML (`<|im_start|>role ... <|im_end|>`); generation stops at `<|im_end|>` and samples by default "
            "(generation_config.json: temperature 0.7, top-p 0.9, top-k 50; `do_sample=False` for greedy). "
            f"With lm-evaluation-harness: `lm_eval --model hf --model_args pretrained={load_path}"
            f"{',trust_remote_code=True' if remote_code else ''} --apply_chat_template --tasks ...`.",
        ]
    )


def not_evaluated(adapter: bool) -> str:
    if adapter:  # eval/run.py takes model folders: an adapter is evaluated merged into its base
        return (
            "Not evaluated yet: merge it (`python -m shuangyu.training.merge_lora FOLDER MERGED`), then "
            "`python eval/run.py MERGED --tasks ...` evaluates the merged model."
        )
    return "Not evaluated yet: `python eval/run.py FOLDER --tasks ...` adds the results here."


def usage_section(load_path: str, remote_code: bool, chat: bool = False, adapter: bool = False) -> str:
    if chat or adapter:
        return chat_usage_section(load_path, remote_code, adapter)
    trust = ", trust_remote_code=True" if remote_code else ""
    lines = [
        "## How to use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model = AutoModelForCausalLM.from_pretrained("{load_path}"{trust})',
        f'tokenizer = AutoTokenizer.from_pretrained("{load_path}"{trust})',
        'inputs = tokenizer("人工智能是", return_tensors="pt")',
        "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=40)[0]))",
        "```",
        "",
    ]
    if remote_code:
        lines += [
            "`trust_remote_code=True` runs the model code stored next to the weights (`configuration_shuangyu.py`, "
            "`modeling_shuangyu.py`); Shuangyu's `python -m shuangyu.modeling.export --to llama` writes a stock Llama folder "
            "that needs none. (AutoTokenizer reads config.json too, hence the flag there.) "
            "With lm-evaluation-harness:",
            "",
        ]
    lines += [
        "```bash",
        f"lm_eval --model hf --model_args pretrained={load_path}{',trust_remote_code=True' if remote_code else ''} "
        "--tasks hellaswag,arc_easy",
        "```",
    ]
    return "\n".join(lines)


def _value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def training_section(training: dict) -> str:
    """Training data and recipe, from the summary train_clm.py records (training/setup.training_summary)."""
    lines = ["## Training", "", "### Data", ""]
    sources = training.get("sources") or []
    if training.get("stage") == "sft":
        lines.insert(
            2, f"Instruction-tuned (SFT) from `{training.get('base_model')}`: loss on the assistants' replies."
        )
        lines.insert(3, "")
    if training.get("stage") == "dpo":
        lines.insert(2, f"Preference-tuned (DPO) from the chat model `{training.get('base_model')}`.")
        lines.insert(3, "")
    if sources and "pairs" in sources[0]:
        lines += [
            "| source | files or dataset | preference pairs | left out | cut short | used |",
            "|---|---|---|---|---|---|",
        ]
        for s in sources:
            where = s.get("dataset") or ", ".join(f"`{f}`" for f in s.get("files", [])) or "?"
            counts = " | ".join(_value(s.get(key, "-")) for key in ("pairs", "left_out", "cut", "used"))
            lines.append(f"| {s['name']} | {where} | {counts} |")
        length = _value((training.get("recipe") or {}).get("max_length", "?"))
        lines += [
            "",
            f"Fitted to the max length of {length} tokens by TRL: a pair whose prompt alone is that long is left out, "
            "a longer one is cut short (the end of its replies is lost)."
            + (" The held-out pairs give the eval loss only." if any(s.get("held_out") for s in sources) else ""),
            "",
        ]
    elif sources and "conversations" in sources[0]:
        lines += [
            "| source | files or dataset | conversations | truncated | skipped | trained tokens |",
            "|---|---|---|---|---|---|",
        ]
        for s in sources:
            where = s.get("dataset") or ", ".join(f"`{f}`" for f in s.get("files", [])) or "?"
            lines.append(
                f"| {s['name']} | {where} | {_value(s['conversations'])} | {_value(s['truncated'])} | "
                f"{_value(s['skipped'])} | {_value(s['trained_tokens'])} |"
            )
        lines.append("")
    elif sources:
        lines += [
            "| source | files or dataset | weight | documents | tokens in the mix | passes |",
            "|---|---|---|---|---|---|",
        ]
        for s in sources:
            where = s.get("dataset") or ", ".join(f"`{f}`" for f in s.get("files", [])) or "?"
            weight = "-" if s.get("weight") is None else _value(s["weight"])
            lines.append(
                f"| {s['name']} | {where} | {weight} | {_value(s.get('docs_taken', '?'))} | "
                f"{_value(s.get('tokens_taken', '?'))} | {s.get('passes', '?')} |"
            )
        lines.append("")
    else:
        lines += ["Not recorded.", ""]
    recipe = dict(training.get("recipe") or {})
    if training.get("lora"):
        lora = training["lora"]
        recipe["lora"] = f"r {lora['r']}, alpha {lora['alpha']}, dropout {lora['dropout']}, on " + ", ".join(
            lora["target_modules"]
        )
    if recipe:
        lines += ["### Recipe", "", "| setting | value |", "|---|---|"]
        lines += [f"| {key.replace('_', ' ')} | {_value(value)} |" for key, value in recipe.items()]
        lines.append("")
    validation = training.get("validation") or {}
    if validation:
        lines += [
            # not the evaluation section's held-out rows, which are over other text: say which text these are
            f"Held-out validation at step {_value(recipe.get('steps', '?'))}, measured during training on the first "
            "rows of the run's own `--validation_files` (the recipe's validation row says how many):",
            "",
            "| language | loss | bits per byte |",
            "|---|---|---|",
        ]
        lines += [
            f"| {lang} | {v.get('loss', float('nan')):.4f} | {v.get('bits_per_byte', float('nan')):.4f} |"
            for lang, v in validation.items()
        ]
    return "\n".join(lines)


def curves_section(png: str) -> str:
    """The loss curves (a PNG beside the card, so it is pushed with it and the Hub shows it)."""
    return (
        "## Loss curves\n\n"
        f"![training loss and held-out loss per language against tokens seen]({png})\n\n"
        "Training loss and held-out loss per language against tokens seen (left); held-out bits per byte (right). "
        "Drawn by `python -m shuangyu.report` from the run's `train_log.jsonl`."
    )


def markdown_table(
    rows: list[dict], held_out: dict, notes: list[str] | tuple[str, ...] = (), conversations: dict | None = None
) -> str:
    """The evaluation table: one row per task and metric, the random-guess score beside it, and how many examples
    each task was scored on where a run was limited (`--limit`; rows kept from earlier runs keep their own)."""
    limited = any(row.get("limit") for row in rows)
    more = " examples |" if limited else ""
    lines = ["| task | metric | value | random guess |" + more, "|---|---|---|---|" + ("---|" if limited else "")]
    for row in rows:
        task = row["task"]
        name = f"{task} (approximate rebuild, not comparable with published HellaSwag)" if "hellaswag" in task else task
        guess = "" if row.get("random_guess") is None else f"{row['random_guess']:.2f}"
        examples = (f" at most {row['limit']} |" if row.get("limit") else " all |") if limited else ""
        lines.append(f"| {name} | {row['metric']} | {row['value']:.4f} | {guess} |{examples}")
    blank = " |" if limited else ""
    for lang, scores in held_out.items():
        lines.append(f"| held-out {lang} | bits_per_byte | {scores['bits_per_byte']:.4f} | |{blank}")
        lines.append(f"| held-out {lang} | perplexity | {scores['perplexity']:.2f} | |{blank}")
    for lang, scores in (conversations or {}).items():
        lines.append(f"| held-out conversations {lang} | reply loss | {scores['loss']:.4f} | |{blank}")
        lines.append(
            f"| held-out conversations {lang} | reply bits_per_byte | {scores['bits_per_byte']:.4f} | |{blank}"
        )
    if limited:
        notes = [*notes, "rows scored on at most N examples (`--limit`) are quick checks, not benchmark scores"]
    lines += ["", *(f"Note: {note}." for note in notes)] if notes else []
    return "\n".join(lines) + "\n"


def limit_text(report: dict) -> str:
    """How many examples the limited rows were scored on: "5", or "2 to 5" where runs differed (files written
    before rows carried their own limit have the run's)."""
    limits = sorted({row["limit"] for row in report.get("table", []) if row.get("limit")})
    if not limits:
        return str(report["limit"]) if report.get("limit") else ""
    return str(limits[0]) if len(limits) == 1 else f"{limits[0]} to {limits[-1]}"


def held_out_note(report: dict) -> str:
    """What the evaluation's held-out rows were measured on: not the text of the training section's validation."""
    # base and chat models may be scored on different amounts of text (--bpb_max_bytes): say how much
    sizes = " and ".join(
        f"{scores['bytes'] / 1e3:,.0f} kB of {lang}"
        for lang, scores in (report.get("held_out") or {}).items()
        if "bytes" in scores
    )
    return (
        f"The held-out rows here are over {sizes or 'text'} from every `<corpus>/<lang>/*_val.jsonl` file, "
        "sources the model did not train on included; the training section's validation uses the first rows of the "
        "run's own `--validation_files`, so the two differ."
    )


def evaluation_section(report: dict) -> str:
    limit = limit_text(report)
    shots = report.get("lm_eval", {}).get("n-shot", {})
    table = markdown_table(
        report.get("table", []),
        report.get("held_out", {}),
        report.get("notes", []),
        report.get("held_out_conversations"),
    )
    lines = ["## Evaluation", "", table.rstrip(), ""]
    notes = [
        f"lm-evaluation-harness through Shuangyu's `eval/run.py`, {_shots_text(shots)}; `*_local` tasks are the "
        "stock tasks (same prompts, choices and metrics) on local copies of the data. Bits per byte and perplexity "
        "are on held-out text of each language, so tokenizers with different vocabularies compare."
    ]
    if report.get("held_out"):
        notes.append(held_out_note(report))
    if report.get("apply_chat_template"):
        notes.append("Task prompts were put in the model's chat template (`--apply_chat_template`).")
    if report.get("held_out_conversations"):
        notes.append(
            "Held-out conversations: the loss on the assistants' replies (and their `<|im_end|>`) of held-out "
            "instruction-tuning conversations per language, as SFT's validation measures it."
        )
    if limit:
        notes.append(
            f"**Quick check only:** at most {limit} examples per task (`--limit`); these numbers are not "
            "benchmark scores and are left out of the model-index metadata."
        )
    return "\n".join(lines + notes)


def _shots_text(shots: dict) -> str:
    values = sorted({int(v) for v in shots.values()}) if shots else []
    return "zero-shot" if values in ([], [0]) else "/".join(map(str, values)) + "-shot"


def model_index_results(report: dict) -> list[EvalResult]:
    """model-index entries for the results that compare with published ones: the full task (no --limit),
    a known Hub dataset, and never the approximate HellaSwag rebuild."""
    if report.get("limit"):
        return []
    shots = report.get("lm_eval", {}).get("n-shot", {})
    results = []
    for row in report.get("table", []):
        task, metric, dataset = row["task"], row["metric"], row.get("dataset")
        if not dataset or row.get("limit"):
            continue  # compares with nothing published (the approximate HellaSwag rebuild, a row kept from a --limit run)
        results.append(
            EvalResult(
                task_type="text-generation",
                task_name="Text Generation",
                dataset_type=dataset["path"],
                dataset_name=task.removesuffix("_local"),
                dataset_config=dataset["config"],
                dataset_split=dataset["split"],
                metric_type=metric,
                metric_value=round(float(row["value"]), 4),
                metric_name=f"{metric} ({_shots_text({task: shots.get(task, 0)})})",
            )
        )
    return results


def _languages(training: dict) -> list[str]:
    names = [s["name"] for s in training.get("sources", [])] + list(training.get("validation", {}))
    codes = [n for n in dict.fromkeys(names) if re.fullmatch(r"[a-z]{2,3}", n)]
    return codes or DEFAULT_LANGUAGES


def card_stage(folder: Path) -> str:
    """The training stage FOLDER's card records (its tags): "sft", "dpo", or "fine-tuning" for any other. A card
    written before the stage was a tag says DPO only in its training section."""
    path = Path(folder) / "README.md"
    card = ModelCard(path.read_text(encoding="utf-8")) if path.is_file() else None
    tags = (card.data.tags or []) if card else []
    stage = next((t for t in tags if t in CHAT_STAGES), None)
    if stage is None and "conversational" in tags:
        stage = "dpo" if "Preference-tuned (DPO)" in (read_section(card.text, "training") or "") else "sft"
    return stage or "fine-tuning"


# An absolute path in running text: a slash that starts a word (not in a URL, `$3.95/h`, `<corpus>/<lang>`), with
# two or more parts
ABSOLUTE_PATH = re.compile(r"(?<![^\s(=\"'])/(?:[^\s/|`()\"',]+/)+[^\s/|`()\"',]+")


def is_local_path(text: str) -> bool:
    """TEXT names a file or folder of this machine by where it is (absolute, or from the home or current
    folder), not a Hub id (OWNER/NAME). A relative path such as outputs/run/final names no machine and is
    left as written."""
    return text.strip().startswith(("/", "~/", "./", "../"))


def shared_path(path: str) -> tuple[str, str]:
    """A local PATH as a card for the Hub names it: what a reader can place without the machine, the run's
    folder and what lies under it (ref40/final, ref40/checkpoints/step-N/model) or else the last name, and
    what it is ("a local folder"), so that it is not taken for a Hub id."""
    parts = Path(path.strip()).parts
    if "checkpoints" in parts[1:]:
        kept = parts[len(parts) - 1 - parts[::-1].index("checkpoints") - 1 :]
    else:
        kept = parts[-2:] if parts[-1] == "final" and len(parts) > 1 else parts[-1:]
    return "/".join(kept), "a local file" if Path(path.strip()).suffix else "a local folder"


def model_name(folder: Path) -> str:
    """The model's name, where a tool names it (a GGUF's general.name, push's commit message, eval_results.json,
    a new card's title): the title of FOLDER's Shuangyu card (the run's name, set by train_clm.py, DPO or
    merge_lora), else the run's folder for a run's final/ or a checkpoint's folder (whose own names say nothing),
    else FOLDER's own name."""
    card = Path(folder) / "README.md"
    if card.is_file():
        text = card.read_text(encoding="utf-8", errors="replace")
        body = text.split("\n---\n", 1)[1] if text.startswith("---\n") and "\n---\n" in text else text
        title = re.search(r"^# (.+)$", body, re.MULTILINE)
        if title and "<!-- shuangyu:" in body:  # a card we wrote: its title is the model's name
            return title.group(1).strip()
    path = Path(folder).resolve()
    if path.name == "final":
        return path.parent.name
    if (
        path.name == "model" and len(path.parents) > 2 and path.parents[1].name == "checkpoints"
    ):  # RUN/checkpoints/step-N/model
        return f"{path.parents[2].name}-{path.parent.name}"
    if re.fullmatch(r"checkpoint-\d+", path.name):  # the Trainer's RUN/checkpoint-N (DPO)
        return f"{path.parent.name}-{path.name}"
    return path.name


def without_local_paths(body: str) -> str:
    """BODY with every local path it names, in `code` or as a table cell (the base model, a --dataset folder),
    reduced to shared_path's form: what the card says for the Hub names no folder of this machine."""

    def code(match: re.Match) -> str:
        if not is_local_path(match.group(1)):
            return match.group(0)
        short, kind = shared_path(match.group(1))
        return f"`{short}` ({kind})"

    def cell(match: re.Match) -> str:
        if not is_local_path(match.group(1)):
            return match.group(0)
        short, kind = shared_path(match.group(1))
        return f"{short} ({kind})"

    body = re.sub(r"`([^`\n]+)`", code, body)
    body = re.sub(r"(?<=\| )([^|`\n]+?)(?= \|)", cell, body)
    # any other absolute path in running text (a validation source named by its file): its short form alone
    return ABSOLUTE_PATH.sub(lambda m: shared_path(m.group(0))[0], body)


def read_folder_config(folder: Path) -> dict:
    """config.json; for a LoRA adapter folder (adapter_config.json, no config.json), {"adapter": its config}."""
    path = folder / "config.json"
    if not path.is_file() and (folder / "adapter_config.json").is_file():
        return {"adapter": json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))}
    return json.loads(path.read_text(encoding="utf-8"))


def new_card(folder: Path, config: dict, name: str, training: dict | None = None) -> ModelCard:
    remote_code = "auto_map" in config
    stage = (training or {}).get("stage", "pretraining")
    chat = stage in CHAT_STAGES
    adapter = "adapter" in config
    tags = [t for t in TAGS if not (chat and t == "pretrained")]
    tags += (["instruction-tuned", "conversational", stage] if chat else []) + (["lora", "peft"] if adapter else [])
    data = ModelCardData(
        language=DEFAULT_LANGUAGES,
        license="apache-2.0",
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-generation",
        tags=tags + (["custom_code"] if remote_code else []),
    )
    if chat:
        what = {"sft": "instruction-tuned on the conversations", "dpo": "preference-tuned (DPO) on the pairs"}[stage]
        limitations = (
            f"A small model {what} listed above: it follows the chat format but makes up facts, repeats itself, and "
            "reflects the biases of its training text. It has had no safety training; use it for research and "
            "teaching."
        )
    else:
        what = "pretrained on the data listed above and nothing else"
        if stage == "fine-tuning":
            what = f"trained further on the data listed above from `{(training or {}).get('base_model')}`"
        limitations = (
            f"A small model {what}: it makes up facts, repeats itself, and reflects the biases of its training "
            "text. It has had no instruction tuning or safety training; use it for research and as a starting point "
            "for fine-tuning."
        )
    body = "\n\n".join(
        [
            f"# {name}",
            describe(config, count_parameters(folder), training),
            f"{_begin('usage')}\n{usage_section(str(folder), remote_code, chat, adapter)}\n{_end('usage')}",
            f"{_begin('training')}\n## Training\n\nNot recorded: this folder was not written by Shuangyu's "
            f"train_clm.py.\n{_end('training')}",
            f"{_begin('evaluation')}\n## Evaluation\n\n{not_evaluated(adapter)}\n{_end('evaluation')}",
            f"## Limitations\n\n{limitations}",
            "## License\n\nThe weights are released under the license in the metadata above; check the licenses "
            "of the training data before any use they might restrict.",
        ]
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def render_card(
    folder: Path,
    *,
    name: str | None = None,
    load_path: str | None = None,
    training: dict | None = None,
    evaluation: dict | None = None,
    curves: str | None = None,
    license: str | None = None,
    license_name: str | None = None,
    license_link: str | None = None,
    portable: bool = False,
) -> str:
    """FOLDER's model card (its README.md, or a new one) with the sections given rewritten. `portable`: the card
    for the Hub, naming no path of this machine (the base model, a local dataset), where the folder's own card
    keeps them, as it keeps its local load path, to find them again."""
    folder = Path(folder)
    config = read_folder_config(folder)
    path = folder / "README.md"
    existing = path.read_text(encoding="utf-8") if path.is_file() else None
    if existing is not None and "adapter" in config and _begin("training") not in existing:
        existing = None  # the template card PEFT writes beside an adapter: ours replaces it
    card = (
        ModelCard(existing) if existing is not None else new_card(folder, config, name or model_name(folder), training)
    )
    body, data = card.text, card.data
    if load_path:
        chat = "conversational" in (data.tags or [])
        body = replace_section(body, "usage", usage_section(load_path, "auto_map" in config, chat, "adapter" in config))
    if training:
        body = replace_section(body, "training", training_section(training))
        data.language = _languages(training)
        hub_datasets = [s["dataset"] for s in training.get("sources", []) if s.get("dataset")]
        data.datasets = hub_datasets or None
    if curves:
        body = replace_section(body, "curves", curves_section(curves))
    if evaluation:
        body = replace_section(body, "evaluation", evaluation_section(evaluation))
        data.eval_results = model_index_results(evaluation) or None
    if data.eval_results:  # model-index needs a name: the repo id once pushed
        data.model_name = name or data.model_name or model_name(folder)
    else:
        data.model_name = None
    if license:  # another license drops the card's name and link of an "other" one, unless given anew
        data.license, data.license_name, data.license_link = license, license_name, license_link
    if portable:
        body = without_local_paths(body)
        data.datasets = [d for d in data.datasets or [] if not is_local_path(d)] or None
    return f"---\n{data.to_yaml()}\n---\n\n{body.lstrip(chr(10))}"


def write_card(folder: Path, **sections) -> Path:
    """Create or update FOLDER/README.md (render_card's arguments); written whole or not at all."""
    return atomic_write_text(Path(folder) / "README.md", render_card(folder, **sections))
