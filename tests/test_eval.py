"""eval/: the local lm-eval tasks (through the real lm_eval CLI and eval/run.py), held-out bits per byte, bad input."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shuangyu.errors import UsageError
from shuangyu.evaluation import local_tasks as make_tasks

REPO = Path(__file__).resolve().parent.parent
RUN = [sys.executable, str(REPO / "eval" / "run.py")]
SINGLE_TASKS = list(make_tasks.SINGLE_TASKS)
ACCURACIES = {"acc", "acc_norm"}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, data_tokenizer_dir):
    """An untrained tiny Shuangyu model saved with the real vocab-2000 tokenizer."""
    from transformers import AutoTokenizer

    import shuangyu.modeling as modeling

    tokenizer = AutoTokenizer.from_pretrained(data_tokenizer_dir)
    config = modeling.ShuangyuConfig.from_preset(
        "tiny",
        vocab_size=2048,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    ckpt = tmp_path_factory.mktemp("ckpt")
    modeling.ShuangyuForCausalLM(config).save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    return ckpt


def run_eval(*args, env=None, timeout=600):
    return subprocess.run(
        [*RUN, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def check_report(path, tasks):
    report = json.loads(path.read_text(encoding="utf-8"))
    for lang in ("zh", "en"):
        bpb = report["held_out"][lang]
        assert math.isfinite(bpb["bits_per_byte"]) and bpb["bits_per_byte"] > 0 and bpb["bytes"] > 0
        assert math.isfinite(bpb["perplexity"]) and bpb["perplexity"] > 1
    rows = {(row["task"], row["metric"]): row for row in report["table"]}
    for task in tasks:
        accs = [row for (t, metric), row in rows.items() if t == task and metric in ACCURACIES]
        assert accs, f"no accuracy for {task}: {sorted(rows)}"
        for row in accs:
            assert 0.0 <= row["value"] <= 1.0
            assert row["random_guess"] is not None
    return report


def test_generated_tasks_include_the_stock_yaml_and_only_override_the_data():
    from lm_eval.tasks._yaml_loader import load_yaml

    names = make_tasks.write_task_yamls()
    assert names == [*SINGLE_TASKS, "cmmlu_local", "ceval_valid_local"]
    tasks_dir, stock_dir = make_tasks.TASKS_DIR, make_tasks.STOCK_DIR
    pairs = {
        "arc_challenge_local": ("arc_challenge_local.yaml", "arc/arc_challenge.yaml"),
        "winogrande_local": ("winogrande_local.yaml", "winogrande/default.yaml"),
        "xcopa_zh_local": ("xcopa_zh_local.yaml", "xcopa/default_zh.yaml"),
        "boolq_local": ("boolq_local.yaml", "super_glue/boolq/default.yaml"),
        "cmmlu_local_agronomy": ("cmmlu/cmmlu_local_agronomy.yaml", "cmmlu/cmmlu_agronomy.yaml"),
        "ceval_valid_local_accountant": (
            "ceval/ceval_valid_local_accountant.yaml",
            "ceval/ceval-valid_accountant.yaml",
        ),
    }
    for name, (local_file, stock_file) in pairs.items():
        local, stock = load_yaml(tasks_dir / local_file), load_yaml(stock_dir / stock_file)
        # lm-eval's own loader (datasets' json builder): no callable custom_dataset, so no --metadata warning
        assert local["task"] == name and local["dataset_path"] == "json" and "custom_dataset" not in local
        for key in ("doc_to_text", "doc_to_target", "doc_to_choice", "metric_list", "output_type", "description"):
            if key != "metric_list" or name not in ("xcopa_zh_local", "boolq_local"):
                assert repr(local.get(key)) == repr(stock.get(key)), (name, key)
        # XCOPA's and BoolQ's stock metric gets the aggregation lm-eval would fill in (and print two lines about)
        stock_metrics = [m["metric"] for m in stock["metric_list"]]
        assert [m["metric"] for m in local["metric_list"]] == stock_metrics, name
        assert all("aggregation" in m and "higher_is_better" in m for m in local["metric_list"]), name
        # No split the local copy lacks: the shipped files are exactly the splits lm-eval reads.
        splits = {local.get(k) for k in ("training_split", "validation_split", "test_split", "fewshot_split")} - {None}
        assert splits == set(local["dataset_kwargs"]["data_files"]), name
        assert local["dataset_kwargs"]["data_dir"] == str(make_tasks.benchmarks_dir())
    assert len(make_tasks.group_subjects("cmmlu_local")) == 67
    assert len(make_tasks.group_subjects("ceval_valid_local")) == 52
    assert len(load_yaml(tasks_dir / "ceval_valid_local.yaml")["task"]) == 52
    assert "not comparable" in load_yaml(tasks_dir / "hellaswag_local.yaml")["metadata"]["note"]


def test_writing_the_tasks_again_leaves_equal_files_alone_and_replaces_others_whole(tmp_path):
    """Every eval/run.py rewrote each YAML in place (truncated, then written): an lm_eval reading the tasks at that
    moment (the CLI, another eval/run.py) read an empty task file and failed."""
    shutil.copy(make_tasks.TASKS_DIR / make_tasks.TEMPLATE, tmp_path / make_tasks.TEMPLATE)
    make_tasks.write_task_yamls(tmp_path)
    files = sorted(tmp_path.rglob("*.yaml"))
    before = {path: path.stat() for path in files}
    stale = tmp_path / "arc_easy_local.yaml"
    stale.write_text("task: stale\n")
    stale_inode = stale.stat().st_ino
    make_tasks.write_task_yamls(tmp_path)
    assert sorted(tmp_path.rglob("*.yaml")) == files and not list(tmp_path.rglob(".*.tmp-*"))
    for path in files:
        if path != stale:  # the same text: not written again
            assert (path.stat().st_ino, path.stat().st_mtime_ns) == (before[path].st_ino, before[path].st_mtime_ns)
    assert stale.stat().st_ino != stale_inode  # a new file put in its place, not the old one emptied and refilled
    assert "task: arc_easy_local" in stale.read_text()


def test_local_tasks_help_writes_nothing(monkeypatch, capsys):
    """--help used to be ignored: the command rewrote the task YAMLs."""

    def write_task_yamls():
        raise AssertionError("--help wrote the task YAMLs")

    monkeypatch.setattr(make_tasks, "write_task_yamls", write_task_yamls)
    with pytest.raises(SystemExit) as exit_info:
        make_tasks.main(["--help"])
    assert exit_info.value.code == 0 and "lm-eval task YAMLs" in capsys.readouterr().out


def test_every_eval_flag_says_what_it_is_and_its_default(capsys):
    from shuangyu.evaluation.run import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    options = capsys.readouterr().out.split("\noptions:\n")[1].split("\n  -")[1:]
    helps = {block.split()[0]: " ".join(block.split()) for block in options}
    for flag in ("-corpus", "-langs", "-batch_size", "-conversation_max"):
        assert "(default:" in helps[flag] or "default:" in helps[flag], helps[flag]
    assert [flag for flag, text in helps.items() if len(text.split()) < 3] == []


def test_missing_benchmark_data_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv(make_tasks.ENV_VAR, str(tmp_path))
    with pytest.raises(UsageError, match=str(tmp_path / "piqa" / "validation.jsonl")):
        make_tasks.check_benchmark_data(["piqa_local"])
    with pytest.raises(UsageError, match=str(tmp_path / "cmmlu" / "test" / "agronomy.jsonl")):
        make_tasks.check_benchmark_data(["cmmlu_local"])
    (tmp_path / "piqa").mkdir()
    (tmp_path / "piqa" / "validation.jsonl").write_text('{"goal": "g", "sol1": "a", "sol2": "b", "label": 1}\n')
    make_tasks.check_benchmark_data(["piqa_local", "arc_easy"])  # a stock task reads no local file


ALL_LOCAL = [*SINGLE_TASKS, *make_tasks.GROUPS]


def test_lm_eval_cli_runs_every_local_task_on_a_tiny_cpu_checkpoint(tiny_cpu_run, tmp_path):
    """The user's command on what the trainer wrote: lm_eval (CLI) with the remote code, every local task."""
    subprocess.run([sys.executable, "-m", "shuangyu.evaluation.local_tasks"], cwd=REPO, check=True, capture_output=True)
    out = tmp_path / "out"
    # From another working directory: the data location must not depend on it.
    proc = subprocess.run(
        [
            *(
                "lm_eval",
                "--model",
                "hf",
                "--model_args",
                f"pretrained={tiny_cpu_run / 'final'},trust_remote_code=True",
            ),
            *(
                "--include_path",
                str(REPO / "shuangyu" / "evaluation" / "tasks"),
                "--tasks",
                ",".join(ALL_LOCAL),
                "--limit",
                "1",
            ),
            *("--device", "cpu", "--output_path", str(out)),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [result_file] = out.rglob("results_*.json")
    results = json.loads(result_file.read_text())["results"]
    for task in ALL_LOCAL:
        metric = "acc,none" if task in results and "acc,none" in results[task] else "perplexity,none"
        assert task in results and metric in results[task], task
    assert len([t for t in results if t.startswith("cmmlu_local_")]) == 67
    assert len([t for t in results if t.startswith("ceval_valid_local_")]) == 52


def test_run_every_local_task_on_a_tiny_cpu_checkpoint(tiny_cpu_run, tmp_path):
    ckpt = Path(shutil.copytree(tiny_cpu_run / "final", tmp_path / "final"))
    proc = run_eval(ckpt, "--tasks", ",".join(ALL_LOCAL), "--limit", 2, "--bpb_max_bytes", 20000)
    assert proc.returncode == 0, proc.stderr[-3000:]
    accuracy_tasks = [t for t in ALL_LOCAL if t != "lambada_openai_local"]
    report = check_report(ckpt / "eval_results.json", accuracy_tasks)
    assert report["trust_remote_code"] is True and report["limit"] == 2
    assert report["notes"] and "not comparable" in report["notes"][0]
    lambada = {row["metric"]: row["value"] for row in report["table"] if row["task"] == "lambada_openai_local"}
    assert lambada["perplexity"] > 1 and 0 <= lambada["acc"] <= 1
    table = (ckpt / "eval_results.md").read_text(encoding="utf-8")
    assert "hellaswag_local (approximate rebuild, not comparable with published HellaSwag)" in table
    assert "| held-out zh | bits_per_byte |" in table and "| winogrande_local | acc |" in table
    assert "| cmmlu_local | acc |" in table and "| ceval_valid_local | acc |" in table
    card = (ckpt / "README.md").read_text(encoding="utf-8")
    assert table.strip().splitlines()[2] in card and "Quick check only" in card  # the card has the table


def test_run_exported_llama_without_remote_code(tiny_checkpoint, tmp_path):
    llama = tmp_path / "llama"
    subprocess.run(
        [sys.executable, "-m", "shuangyu.modeling.export", "--to", "llama", str(tiny_checkpoint), str(llama)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    config = json.loads((llama / "config.json").read_text())
    assert "auto_map" not in config and config["model_type"] == "llama"
    proc = run_eval(llama, "--tasks", "piqa_local", "--limit", 2, "--bpb_max_bytes", 5000)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = check_report(llama / "eval_results.json", ["piqa_local"])
    assert report["trust_remote_code"] is False


def test_requests_longer_than_the_context_are_one_note_not_a_warning_each(tiny_checkpoint, tmp_path):
    """lm-eval warned once per request cut to the model's context: a log of "Combined length of context" lines."""
    short = tmp_path / "short"
    shutil.copytree(tiny_checkpoint, short)
    config = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps(config | {"max_position_embeddings": 40}))
    tokenizer_config = json.loads((short / "tokenizer_config.json").read_text())  # as our folders save it
    (short / "tokenizer_config.json").write_text(json.dumps(tokenizer_config | {"model_max_length": 40}))
    proc = run_eval(short, "--tasks", "arc_easy_local", "--limit", 3, "--langs", "", "--output", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Combined length of context" not in proc.stderr, proc.stderr[-3000:]
    # nor the tokenizer's warning of "indexing errors" when lm-eval encodes a request it then cuts
    assert "Token indices sequence length" not in proc.stderr, proc.stderr[-3000:]
    notes = [line for line in proc.stderr.splitlines() if "longer than the model's context" in line]
    assert len(notes) == 1 and notes[0].startswith("eval/run.py: note: "), proc.stderr[-3000:]
    assert "(40 tokens) and were cut from the left" in notes[0], notes[0]


def test_answers_longer_than_the_context_are_one_line_naming_the_task(tiny_checkpoint, tmp_path):
    """lm-eval keeps a whole answer and cuts only the context: an answer longer than the context was a bare
    AssertionError (a traceback, exit 1)."""
    short = tmp_path / "short"
    shutil.copytree(tiny_checkpoint, short)
    config = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps(config | {"max_position_embeddings": 4}))
    out = tmp_path / "r.json"
    proc = run_eval(short, "--tasks", "hellaswag_local", "--limit", 2, "--langs", "", "--output", out)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "AssertionError" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0] == proc.stderr.strip().splitlines()[-1], proc.stderr[-3000:]
    assert errors[0].startswith("eval/run.py: error: hellaswag_local: an answer is longer than the model's context")
    assert "longest answer: hellaswag_local " in errors[0] and "context: 4 tokens" in errors[0], errors[0]
    assert "leave hellaswag_local out of --tasks" in errors[0], errors[0]
    assert not out.exists()


def _copy_without_tokenizer(src, dst):
    dst.mkdir()
    for path in src.iterdir():
        if not path.name.startswith("tokenizer") and path.is_file():
            (dst / path.name).write_bytes(path.read_bytes())
    return dst


@pytest.mark.parametrize("case", ["missing", "not_checkpoint", "no_tokenizer", "unknown_task", "missing_data"])
def test_bad_input_one_line_and_nonzero(case, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    ckpt, tasks, env = tiny_checkpoint, "piqa_local", {}
    if case == "missing":
        ckpt, expected = tmp_path / "nope", "is not a folder"
    elif case == "not_checkpoint":
        ckpt, expected = tmp_path, "not a checkpoint folder (no config.json)"
    elif case == "no_tokenizer":
        ckpt, expected = _copy_without_tokenizer(tiny_checkpoint, tmp_path / "ck"), "has no tokenizer"
    elif case == "unknown_task":
        tasks, expected = "piqa_local,no_such_task", "unknown task(s) no_such_task"
    else:
        env = {make_tasks.ENV_VAR: str(tmp_path)}
        expected = f"benchmark data missing: {tmp_path / 'piqa' / 'validation.jsonl'}"
    args = [ckpt, "--tasks", tasks, "--limit", 1, "--langs", "", "--output", tmp_path / "r.json"]
    if case == "unknown_task":  # the command as a user runs it (through lm-eval's task list)
        proc = run_eval(*args, env=env)
        status, stderr = proc.returncode, proc.stderr
    else:  # its main() here: the same code without a fresh interpreter's 10 s of imports
        from shuangyu.evaluation.run import main

        for name, value in env.items():
            monkeypatch.setenv(name, value)
        status, stderr = main([str(a) for a in args]), capsys.readouterr().err
    assert status == 2
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("eval/run.py: error: ") and expected in last, stderr[-2000:]
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("flags", [["--limit", "0"], ["--limit", "-3"], ["--batch_size", "0"]])
def test_counts_below_their_least_are_refused_before_the_model_loads(flags, tmp_path, capsys, monkeypatch):
    from shuangyu.evaluation import run

    monkeypatch.setattr(run, "check_model_folder", lambda path: pytest.fail("the checkpoint was read"))
    assert run.main([str(tmp_path), "--tasks", "arc_easy_local", *flags]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"eval/run.py: error: {flags[0]} {flags[1]}: must be at least 1 ("
    ), lines
    assert not (tmp_path / "eval_results.json").exists()


@pytest.mark.parametrize("value", ["lots", "-1", "2BB"])
def test_a_bad_held_out_size_is_refused_before_the_model_loads(value, tmp_path, capsys, monkeypatch):
    from shuangyu.evaluation import run

    monkeypatch.setattr(run, "check_model_folder", lambda path: pytest.fail("the checkpoint was read"))
    assert run.main([str(tmp_path), "--langs", "en", "--bpb_max_bytes", value]) == 2
    said = f"--bpb_max_bytes {value!r}: expected a number such as 500M, 2.5B, 200MB or 2GB"
    assert capsys.readouterr().err.strip().splitlines() == [f"eval/run.py: error: {said}"]


def test_the_held_out_size_takes_units_as_the_other_commands_do(tiny_checkpoint, tmp_path):
    """--bpb_max_bytes was a plain int ("100KB": argparse's invalid int value) where --max_bytes takes sizes."""
    from shuangyu.evaluation.run import main

    scored = []
    for cap in ("2000", "2KB"):
        ckpt = Path(shutil.copytree(tiny_checkpoint, tmp_path / cap / "final"))
        assert main([str(ckpt), "--langs", "en", "--bpb_max_bytes", cap]) == 0
        scored.append(json.loads((ckpt / "eval_results.json").read_text(encoding="utf-8"))["held_out"]["en"])
    assert scored[0] == scored[1] and scored[0]["bits_per_byte"] > 0


@pytest.mark.parametrize("cap", [5_000, 20_000, 300_000])
def test_held_out_text_is_capped_at_the_bytes_asked_with_a_share_from_every_file(corpus_dir, cap):
    """--bpb_max_bytes is a cap, not a hint: a news article can be longer than a small cap's share of a file."""
    from shuangyu.evaluation.run import val_texts
    from shuangyu.text.readers import read_documents

    for lang in ("zh", "en"):
        texts = val_texts(corpus_dir, lang, cap)
        size = sum(len(t.encode("utf-8")) for t in texts)
        files = sorted((corpus_dir / lang).glob("*_val.jsonl"))
        # an equal share of every file (all of a file smaller than its share), each ending at a whole character
        have = [sum(len(d.encode("utf-8")) for d in read_documents([path])) for path in files]
        expected = sum(min(n, cap // len(files)) for n in have)
        assert expected - len(files) * 4 <= size <= expected <= cap, (lang, size, expected)
        assert all("\ufffd" not in t for t in texts)
        first_lines = [json.loads(path.open(encoding="utf-8").readline())["text"] for path in files]
        assert all(any(t and line.startswith(t[:20]) for t in texts) for line in first_lines)  # every source


def test_the_results_name_no_path_of_this_machine(tiny_checkpoint, tmp_path):
    """eval_results.json is pushed with the model: lm-eval's task configs record where the YAMLs and the data
    were, which the file gives relative to what every reader has."""
    from shuangyu.evaluation.run import main

    ckpt = Path(shutil.copytree(tiny_checkpoint, tmp_path / "final"))
    args = [ckpt, "--tasks", "xcopa_zh_local", "--limit", 2, "--langs", "en", "--bpb_max_bytes", 2000]
    assert main([str(a) for a in args]) == 0
    text = (ckpt / "eval_results.json").read_text(encoding="utf-8")
    for path in (tmp_path, REPO, make_tasks.benchmarks_dir(), make_tasks.STOCK_DIR):
        assert str(path) not in text, path
    config = json.loads(text)["lm_eval"]["configs"]["xcopa_zh_local"]
    assert config["dataset_kwargs"]["data_dir"] == "$SHUANGYU_BENCHMARKS"
    assert config["metadata"]["config_source"] == "shuangyu/evaluation/tasks/xcopa_zh_local.yaml"
    assert json.loads(text)["table"][0]["task"] == "xcopa_zh_local"  # everything else lm-eval records is kept


def earlier_results(ckpt: Path) -> dict:
    """What an earlier run (arc_easy_local with --limit 100, held-out zh) left in CKPT, as eval/run.py writes it."""
    held_out = {"bits_per_byte": 2.5, "perplexity": 300.0, "tokens": 10, "bytes": 30, "date": "2025-01-02"}
    earlier = {
        "checkpoint": ckpt.name,
        "date": "2025-01-02",
        "tasks": ["arc_easy_local"],
        "limit": 100,
        "lm_eval": {"results": {"arc_easy_local": {"acc,none": 0.31}}, "n-shot": {"arc_easy_local": 0}},
        "held_out": {"zh": held_out},
        "held_out_conversations": {},
        "table": [
            {
                "task": "arc_easy_local",
                "metric": "acc",
                "value": 0.31,
                "random_guess": 0.25,
                "dataset": None,
                "date": "2025-01-02",
                "limit": 100,
            }
        ],  # fmt: skip
        "notes": [],
    }
    (ckpt / "eval_results.json").write_text(json.dumps(earlier), encoding="utf-8")
    return earlier


def test_the_results_and_the_card_name_the_model_not_its_final_folder(tiny_checkpoint, tmp_path):
    """eval_results.json and a new card named the model "final", its folder's name, where a GGUF names the run."""
    from shuangyu.evaluation.run import main

    ckpt = Path(shutil.copytree(tiny_checkpoint, tmp_path / "zh-en-run" / "final"))
    assert main([str(ckpt), "--langs", "en", "--bpb_max_bytes", "2000"]) == 0
    assert json.loads((ckpt / "eval_results.json").read_text(encoding="utf-8"))["checkpoint"] == "zh-en-run"
    assert "\n# zh-en-run\n" in (ckpt / "README.md").read_text(encoding="utf-8")


def test_a_run_replaces_the_rows_it_scored_and_keeps_the_others(tiny_checkpoint, tmp_path, capsys):
    """A run without --tasks (held-out text only) used to rewrite the results and the card with its own rows
    alone: the tasks scored before vanished."""
    from shuangyu.evaluation.run import main

    ckpt = Path(shutil.copytree(tiny_checkpoint, tmp_path / "final"))
    earlier_results(ckpt)
    assert main([str(ckpt), "--langs", "en", "--bpb_max_bytes", "2000"]) == 0
    report = json.loads((ckpt / "eval_results.json").read_text(encoding="utf-8"))
    assert [(row["task"], row["value"], row["limit"]) for row in report["table"]] == [("arc_easy_local", 0.31, 100)]
    assert set(report["held_out"]) == {"en", "zh"} and report["held_out"]["zh"]["bits_per_byte"] == 2.5
    # --limit limits lm-eval's tasks only: no held-out score is labelled with it, kept or new
    assert all("limit" not in scores for scores in report["held_out"].values()), report["held_out"]
    assert report["lm_eval"]["results"] == {"arc_easy_local": {"acc,none": 0.31}}
    assert report["limit"] == 100  # the table is a quick check's: the card marks it so
    kept = "arc_easy_local: kept from an earlier run (2025-01-02, --limit 100)"
    assert kept in report["notes"] and "held-out zh: kept from an earlier run (2025-01-02)" in report["notes"]
    table, card = (ckpt / "eval_results.md").read_text(), (ckpt / "README.md").read_text()
    for text in (table, card):
        assert "| arc_easy_local | acc | 0.3100 | 0.25 |" in text and f"Note: {kept}." in text
        assert "| held-out zh | bits_per_byte | 2.5000 | |" in text and "| held-out en | bits_per_byte |" in text
    capsys.readouterr()
    # --limit without tasks limits nothing: refused, the results left as they were
    before = (ckpt / "eval_results.json").read_text()
    assert main([str(ckpt), "--limit", "5"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "eval/run.py: error: --limit 5: limits the lm-eval tasks, and no --tasks were given"
    ]
    assert (ckpt / "eval_results.json").read_text() == before


def test_results_written_elsewhere_leave_the_card_alone(tiny_checkpoint, tmp_path, capsys):
    """--output elsewhere used to rewrite CKPT's card from results that CKPT/eval_results.json (what push and the
    report read) did not hold: the card disagreed with them."""
    from shuangyu.evaluation.run import main

    ckpt = Path(shutil.copytree(tiny_checkpoint, tmp_path / "final"))
    earlier_results(ckpt)
    assert main([str(ckpt), "--langs", "en", "--bpb_max_bytes", "2000"]) == 0  # default: results and card together
    card, results = (ckpt / "README.md").read_text(), (ckpt / "eval_results.json").read_text()
    assert "| held-out en | bits_per_byte |" in card
    capsys.readouterr()
    out = tmp_path / "elsewhere" / "x.json"
    out.parent.mkdir()
    assert main([str(ckpt), "--langs", "zh", "--bpb_max_bytes", "2000", "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"left the model card {ckpt / 'README.md'} as it was: --output is not {ckpt / 'eval_results.json'}" in err
    assert set(json.loads(out.read_text())["held_out"]) == {"zh"} and "updated the model card" not in err
    assert (ckpt / "README.md").read_text() == card and (ckpt / "eval_results.json").read_text() == results
    # --output naming CKPT's own file (by another spelling) is the default: the card follows it
    assert (
        main([str(ckpt), "--langs", "zh", "--bpb_max_bytes", "2000", "--output", str(ckpt / "." / "eval_results.json")])
        == 0
    )
    assert "updated the model card" in capsys.readouterr().err and (ckpt / "README.md").read_text() != card


def test_a_results_file_that_cannot_be_kept_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    from shuangyu.evaluation import run

    (tmp_path / "r.json").write_text('{"table": [{"task": "arc"}]}')
    monkeypatch.setattr(run, "check_model_folder", lambda path: {"model_type": "shuangyu"})
    monkeypatch.setattr(run, "run_bpb", lambda *args: pytest.fail("the model was loaded"))
    assert run.main([str(tmp_path), "--output", str(tmp_path / "r.json")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"eval/run.py: error: {tmp_path / 'r.json'}: not a results file of eval/run.py"), line
    assert (tmp_path / "r.json").read_text() == '{"table": [{"task": "arc"}]}'


def test_local_tasks_load_without_indexing_lm_evals_own_and_stock_names_still_resolve():
    """Every eval/run.py built lm-eval's index of its thousands of stock task YAMLs (4-5 s on 2 cores) even when
    only the local copies were asked for."""
    from shuangyu.evaluation.run import task_manager_for

    local = task_manager_for(["arc_easy_local", "cmmlu_local"])
    assert {"arc_easy_local", "cmmlu_local"} <= set(local.all_tasks)
    assert "arc_easy" not in local.all_tasks and "hellaswag" not in local.all_tasks
    mixed = task_manager_for(["arc_easy_local", "hellaswag"])  # a stock name: lm-eval's own tasks are indexed
    assert {"arc_easy_local", "hellaswag"} <= set(mixed.all_tasks)
    with pytest.raises(UsageError, match=r"unknown task\(s\) no_such_task; local tasks: arc_challenge_local, "):
        task_manager_for(["arc_easy_local", "no_such_task"])


def test_a_stock_task_offline_is_one_line_naming_the_local_copy(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """hellaswag's data is on the Hub: offline, datasets raises ConnectionError from inside lm-eval."""
    from shuangyu.evaluation import run

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # before the held-out scoring (minutes with the default languages), not after it
    monkeypatch.setattr(run, "run_bpb", lambda *args: pytest.fail("held-out text scored before the tasks"))
    out = tmp_path / "r.json"
    args = [tiny_checkpoint, "--tasks", "hellaswag", "--limit", 1, "--output", out]
    assert run.main([str(a) for a in args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("eval/run.py: error: could not download the data of hellaswag (")
    assert "HF_DATASETS_OFFLINE" in lines[0] and lines[0].endswith("the local copy: hellaswag_local")
    assert not out.exists()


def test_ctrl_c_is_one_line_exit_130_and_the_results_left_as_they_were(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    from shuangyu.evaluation import run

    ckpt = Path(shutil.copytree(tiny_checkpoint, tmp_path / "final"))
    earlier_results(ckpt)
    before = (ckpt / "eval_results.json").read_text()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "run_bpb", interrupted)
    assert run.main([str(ckpt), "--langs", "en"]) == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "eval/run.py: interrupted; the results files and the model card were left as they were"
    ]
    assert (ckpt / "eval_results.json").read_text() == before and not (ckpt / "eval_results.md").exists()
