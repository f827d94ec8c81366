"""eval_results.json, the file eval/run.py writes and eval/push.py uploads: kept across runs (a run replaces the
rows it scored and keeps the others), and free of this machine's paths."""

from __future__ import annotations

import json
from pathlib import Path

from shuangyu.errors import UsageError
from shuangyu.evaluation.local_tasks import ENV_VAR, REPO, STOCK_DIR, TASKS_DIR, benchmarks_dir


def read_earlier_results(path: Path) -> dict:
    """The results an earlier run wrote to PATH ({} if none), read before the model loads: a new run keeps the
    rows of the tasks it does not score."""
    if not path.exists():
        return {}
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
        rows = earlier["table"]
        if not all(isinstance(r["task"], str) and isinstance(r["value"], (int, float)) and r["metric"] for r in rows):
            raise ValueError("a row without task, metric or value")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise UsageError(
            f"{path}: not a results file of eval/run.py ({type(err).__name__}: {err}), whose rows this run would "
            "keep; move it away or choose another --output"
        ) from None
    return earlier


def keep_earlier(report: dict, earlier: dict) -> dict:
    """REPORT plus what EARLIER scored and this run did not (other tasks, other held-out languages), each kept
    row with the date and --limit of the run that scored it, and a note saying which were kept."""
    ran = set(report["tasks"]) | {row["task"] for row in report["table"]}
    run_of = {"date": earlier.get("date"), "limit": earlier.get("limit")}  # files from before rows carried them
    kept = [run_of | row for row in earlier.get("table", []) if row["task"] not in ran]
    merged = dict(report, table=report["table"] + kept)
    merged["tasks"] = list(dict.fromkeys([*report["tasks"], *(row["task"] for row in kept)]))
    earlier_lm_eval = earlier.get("lm_eval") or {}
    merged["lm_eval"] = {key: (earlier_lm_eval.get(key) or {}) | new for key, new in report["lm_eval"].items()}
    notes = []
    runs: dict[tuple, list[str]] = {}
    for row in kept:
        runs.setdefault((row.get("date"), row.get("limit")), []).append(row["task"])
    for (date, limit), tasks in runs.items():
        how = ", ".join(filter(None, [date, f"--limit {limit}" if limit else "all examples"]))
        notes.append(f"{', '.join(dict.fromkeys(tasks))}: kept from an earlier run ({how})")
    for key, label in (("held_out", "held-out"), ("held_out_conversations", "held-out conversations")):
        # held-out scores read all their text: --limit (lm-eval's) never applied to them, so they carry no limit
        old = {
            lang: {k: v for k, v in ({"date": run_of["date"]} | s).items() if k != "limit"}
            for lang, s in (earlier.get(key) or {}).items()
            if lang not in report[key]
        }
        merged[key] = report[key] | old
        dates = ", ".join(sorted({str(s["date"]) for s in old.values() if s.get("date")}))
        if old:
            notes.append(f"{label} {', '.join(old)}: kept from an earlier run" + (f" ({dates})" if dates else ""))
    merged["notes"] = report["notes"] + notes
    if not report["tasks"]:  # the table is all earlier rows: the card's quick-check mark follows theirs
        merged["limit"] = max((row["limit"] for row in kept if row.get("limit")), default=None)
    return merged


def portable_json(report: dict, ckpt: Path) -> str:
    """REPORT as JSON with no path of this machine in it: lm-eval records where each task's YAML and data were
    (`config_source`, `dataset_kwargs.data_dir`), and the file is pushed with the model. Each such path is
    written relative to what the reader has too: the benchmarks folder as $SHUANGYU_BENCHMARKS, the task
    YAMLs under the repository's shuangyu/evaluation/tasks, the stock ones under lm_eval/tasks, the checkpoint
    by its folder's name."""
    text = json.dumps(report, indent=2, ensure_ascii=False, default=str)
    names = {
        benchmarks_dir(): f"${ENV_VAR}",
        TASKS_DIR: TASKS_DIR.relative_to(REPO).as_posix(),
        STOCK_DIR: "lm_eval/tasks",
        ckpt: ckpt.name,
        REPO: ".",
    }
    # the longest first: the task folder lies inside the repository, and so may the checkpoint
    for path in sorted(names, key=lambda p: len(str(p)), reverse=True):
        text = text.replace(json.dumps(str(path), ensure_ascii=False)[1:-1], names[path])
    return text
