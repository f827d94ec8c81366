"""Writes the lm-eval task YAMLs for the local benchmark copies into shuangyu/evaluation/tasks/.

Each task `include`s the stock lm-eval YAML (so prompts, answer choices, metrics and helper functions are the
stock ones) and then `_local_dataset_yaml` (data from local JSON Lines files through lm-eval's plain
`datasets.load_dataset("json", ...)`), overriding only the task name, the splits that exist locally and the files to
read: `dataset_kwargs: {data_dir: <benchmarks folder>, data_files: {split: file}}`. `include` takes only a file
path, and the stock YAMLs live wherever lm-eval is installed, so the YAMLs are generated for the installed lm-eval
and the benchmarks folder rather than committed; eval/run.py regenerates them on every run, and
`python -m shuangyu.evaluation.local_tasks` (run by `make install`) does it for the plain `lm_eval` CLI (run it
again after moving the data or changing $SHUANGYU_BENCHMARKS).

    python -m shuangyu.evaluation.local_tasks && lm_eval --model hf \\
        --model_args pretrained=CKPT,trust_remote_code=True \\
        --include_path shuangyu/evaluation/tasks --tasks arc_easy_local --limit 20
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

import yaml

from shuangyu.errors import UsageError, ctrl_c_is_one_line, print_error, refuse_in_one_line
from shuangyu.files import atomic_write_text

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
REPO = Path(__file__).resolve().parents[2]
ENV_VAR = "SHUANGYU_BENCHMARKS"
# Found without importing lm_eval: the model card (written while training) reads the stock YAMLs, and a
# training-only install may lack lm-eval.
_LM_EVAL = importlib.util.find_spec("lm_eval")
STOCK_DIR = (
    Path(_LM_EVAL.submodule_search_locations[0]).resolve() / "tasks" if _LM_EVAL else Path("lm_eval-not-installed")
)
TEMPLATE = "_local_dataset_yaml"

HELLASWAG_NOTE = (
    "APPROXIMATE rebuild of the HellaSwag validation set (see the benchmarks README): "
    "not comparable with published HellaSwag figures"
)

# local task -> (stock yaml under lm_eval/tasks, split -> file under $SHUANGYU_BENCHMARKS).
# The stock splits not listed are set to null: only the eval splits are shipped, no train splits.
SINGLE_TASKS = {
    "hellaswag_local": ("hellaswag/hellaswag.yaml", {"validation": "hellaswag/validation_APPROX_from_klosax.jsonl"}),
    "arc_easy_local": ("arc/arc_easy.yaml", {"test": "arc_easy/test.jsonl"}),
    "arc_challenge_local": ("arc/arc_challenge.yaml", {"test": "arc_challenge/test.jsonl"}),
    "piqa_local": ("piqa/piqa.yaml", {"validation": "piqa/validation.jsonl"}),
    "winogrande_local": ("winogrande/default.yaml", {"validation": "winogrande/validation.jsonl"}),
    "openbookqa_local": ("openbookqa/openbookqa.yaml", {"test": "openbookqa/test.jsonl"}),
    "boolq_local": ("super_glue/boolq/default.yaml", {"validation": "boolq/validation.jsonl"}),
    "lambada_openai_local": ("lambada/lambada_openai.yaml", {"test": "lambada_openai/test.jsonl"}),
    "xcopa_zh_local": (
        "xcopa/default_zh.yaml",
        {"validation": "xcopa_zh/validation.jsonl", "test": "xcopa_zh/test.jsonl"},
    ),
}

# local group -> (stock group yaml, stock subject task prefix, local subject prefix, data folder, eval split).
GROUPS = {
    "cmmlu_local": ("cmmlu/_cmmlu.yaml", "cmmlu_", "cmmlu_local_", "cmmlu", "test"),
    "ceval_valid_local": ("ceval/_ceval-valid.yaml", "ceval-valid_", "ceval_valid_local_", "ceval", "val"),
}


def benchmarks_dir() -> Path:
    """The local benchmark copies: $SHUANGYU_BENCHMARKS, by default <repo>/../shared/data/benchmarks."""
    return Path(os.environ.get(ENV_VAR) or REPO.parent / "shared" / "data" / "benchmarks").expanduser().resolve()


def _task_yaml(name: str, stock: str, local_files: dict[str, str], include_template: str, root: Path) -> dict:
    splits = {
        key: (split if split in local_files else None)
        for key, split in (("training_split", "train"), ("validation_split", "validation"), ("test_split", "test"))
    }
    if "val" in local_files:  # C-Eval names its eval split `val`
        splits["validation_split"] = "val"
    cfg = {
        "include": [str(STOCK_DIR / stock), include_template],
        "task": name,
        "tag": [],  # do not join the stock task's tags
        # the stock loader (no callable custom_dataset, whose lm-eval prints a --metadata warning per task); files
        # are named relative to the benchmarks folder, as datasets resolves data_files against data_dir
        "dataset_kwargs": {"data_dir": str(root), "data_files": local_files},
        **splits,
    }
    if name == "hellaswag_local":
        cfg["metadata"] = {"version": 1.0, "comparable_with_published": False, "note": HELLASWAG_NOTE}
    if name in ("xcopa_zh_local", "boolq_local"):
        # the stock XCOPA and BoolQ YAMLs name their metric only, and lm-eval prints two lines per run filling in
        # these defaults (mean, higher is better): the same scores, said here instead
        cfg["metric_list"] = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]
    return cfg


def _write(path: Path, cfg: dict) -> None:
    """Every eval/run.py writes the YAMLs again: a file is left alone when it says the same and otherwise replaced
    whole, so an lm-eval reading it at that moment (another eval/run.py, the lm_eval CLI) never sees it half
    written (it did: an empty task file)."""
    header = "# Generated by shuangyu/evaluation/local_tasks.py for the installed lm-eval; do not edit.\n"
    text = header + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)
    if not (path.is_file() and path.read_text(encoding="utf-8") == text):
        atomic_write_text(path, text)


def group_subjects(group: str) -> list[str]:
    """The subject names of a local group, in the stock group's order."""
    stock_group, stock_prefix, *_ = GROUPS[group]
    stock = yaml.safe_load((STOCK_DIR / stock_group).read_text(encoding="utf-8"))
    return [task.removeprefix(stock_prefix) for task in stock["task"]]


class _IgnoreTagsLoader(yaml.SafeLoader):
    """Reads stock YAMLs, whose `!function` tags name Python helpers that are not needed here."""


_IgnoreTagsLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _stock_fields(stock: Path) -> dict:
    """A stock task YAML's keys, following its `include` chain (the including file wins)."""
    cfg = yaml.load(stock.read_text(encoding="utf-8"), Loader=_IgnoreTagsLoader) or {}
    included = cfg.pop("include", None)
    base = _stock_fields(stock.parent / included) if isinstance(included, str) else {}
    return base | cfg


def stock_dataset(local_task: str) -> dict:
    """The Hub dataset behind a local task or group, as the stock task names it (for model-index metadata):
    {"path": "allenai/ai2_arc", "config": "ARC-Easy", "split": "test"}."""
    if local_task in SINGLE_TASKS:
        stock, files = SINGLE_TASKS[local_task]
        fields = _stock_fields(STOCK_DIR / stock)
        split = "test" if "test" in files else next(iter(files))
        return {"path": fields["dataset_path"], "config": fields.get("dataset_name"), "split": split}
    stock_group, stock_prefix, _prefix, _folder, split = GROUPS[local_task]
    first = group_subjects(local_task)[0]
    fields = _stock_fields(STOCK_DIR / Path(stock_group).parent / f"{stock_prefix}{first}.yaml")
    return {"path": fields["dataset_path"], "config": None, "split": split}


def task_files(task: str) -> list[str]:
    """The data files (relative to the benchmarks folder) a local task or group reads; [] for other tasks."""
    if task in SINGLE_TASKS:
        return list(SINGLE_TASKS[task][1].values())
    if task in GROUPS:
        return [f for subject in group_subjects(task) for f in _subject_files(task, subject).values()]
    return []


def _subject_files(group: str, subject: str) -> dict[str, str]:
    _stock_group, _stock_prefix, _prefix, folder, split = GROUPS[group]
    return {split: f"{folder}/{split}/{subject}.jsonl", "dev": f"{folder}/dev/{subject}.jsonl"}


def check_benchmark_data(tasks: list[str]) -> None:
    """Refuse, naming the first missing file and where the data is looked for, before any model is loaded."""
    root = benchmarks_dir()
    for task in tasks:
        for rel in task_files(task):
            if not (root / rel).is_file():
                raise UsageError(
                    f"benchmark data missing: {root / rel} (set {ENV_VAR} to the benchmarks folder, default "
                    f"<repo>/../shared/data/benchmarks; its README.md says where each file comes from)"
                )


def write_task_yamls(out_dir: Path = TASKS_DIR) -> list[str]:
    """Writes every local task and group YAML, reading from benchmarks_dir(); returns the task and group names."""
    if not (out_dir / TEMPLATE).is_file():
        raise FileNotFoundError(f"{out_dir / TEMPLATE} is missing (it ships with the repository)")
    root = benchmarks_dir()
    names = []
    for name, (stock, files) in SINGLE_TASKS.items():
        _write(out_dir / f"{name}.yaml", _task_yaml(name, stock, files, TEMPLATE, root))
        names.append(name)
    for group, (stock_group, stock_prefix, prefix, folder, _split) in GROUPS.items():
        stock = yaml.safe_load((STOCK_DIR / stock_group).read_text(encoding="utf-8"))
        subtasks = []
        for subject in group_subjects(group):
            files = _subject_files(group, subject)
            stock_subject = f"{Path(stock_group).parent}/{stock_prefix}{subject}.yaml"
            cfg = _task_yaml(prefix + subject, stock_subject, files, f"../{TEMPLATE}", root)
            _write(out_dir / folder / f"{prefix}{subject}.yaml", cfg)
            subtasks.append(prefix + subject)
        _write(
            out_dir / f"{group}.yaml",
            {
                "group": group,
                "task": subtasks,
                "aggregate_metric_list": stock["aggregate_metric_list"],
                "metadata": stock.get("metadata", {}),
            },
        )
        names.append(group)
    return names


PROG = "python -m shuangyu.evaluation.local_tasks"


def main(argv: list[str] | None = None) -> int:
    parser = refuse_in_one_line(
        argparse.ArgumentParser(
            prog=PROG,
            description=f"Write the lm-eval task YAMLs for the local benchmark copies (under ${ENV_VAR}, default "
            f"{REPO.parent / 'shared' / 'data' / 'benchmarks'}) into {TASKS_DIR}, for the plain lm_eval CLI's "
            "--include_path; run it again after moving the data. eval/run.py does this itself.",
        )
    )
    try:
        parser.parse_args(argv)
        written = write_task_yamls()
    except UsageError as err:
        return print_error(PROG, err)
    print(f"wrote {len(written)} local tasks/groups into {TASKS_DIR}: {', '.join(written)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    # a Ctrl-C that main() lets through is one line too, with the exit status for Ctrl-C
    with ctrl_c_is_one_line(PROG, "a task file may be cut short; run it again to write them all"):
        sys.exit(main())
