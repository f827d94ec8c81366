"""The run report (python -m shuangyu.report): every section from a real run's folder, the PNG, the card link."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shuangyu.report.build import build_report, main, training_time
from shuangyu.report.compression import compression
from shuangyu.report.curves import plot_curves, read_log

REPO = Path(__file__).resolve().parent.parent
SHARED_TOKENIZERS = REPO.parent / "shared" / "data" / "tokenizers"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def run_copy(tiny_cpu_run, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_cpu_run, tmp_path / "run"))


def test_training_time_adds_up_the_sessions_of_a_resumed_run():
    rows = [{"step": 10, "time_s": 10.0}, {"step": 20, "time_s": 20.0}, {"step": 30, "time_s": 5.0}, {"step": 40}]
    rows.append({"step": 50, "time_s": 15.0})
    assert training_time(rows) == pytest.approx(35.0)


def test_no_curves_without_a_logged_training_loss(tmp_path):
    assert plot_curves([{"step": 1, "eval/zh/loss": 3.0}], tmp_path / "loss.png", "t") is None
    assert not (tmp_path / "loss.png").exists()


def test_compression_counts_characters_and_bytes_per_token():
    gpt2 = SHARED_TOKENIZERS / "gpt2" / "tokenizer.json"
    result = compression(gpt2, ["hello world", "你好"])
    # GPT-2: "hello", " world" and a few byte tokens for the two Han characters (6 UTF-8 bytes)
    tokens = result["tokens"]
    assert 3 <= tokens <= 8
    assert result["chars_per_token"] == pytest.approx(13 / tokens)
    assert result["bytes_per_token"] == pytest.approx(17 / tokens)


def test_the_report_of_a_real_run_has_every_section(run_copy):
    env = json.loads((run_copy / "environment.json").read_text())
    assert env["processes"] == 1 and env["versions"]["torch"] and env["command"].startswith("train_clm.py")
    report = build_report(run_copy).read_text()
    for heading in (
        "## Environment (recorded by the run)",
        "## Tokenizer",
        "## Training",
        "### Data",
        "### Recipe",
        "## Loss curves",
        "## Evaluation",
        "## Samples (continuations of fixed prompts)",
        "## Talk to it",
    ):
        assert heading in report, heading
    table = [line for line in report.splitlines() if line.startswith(("| this run's", "| GPT-2", "| MiniMind"))]
    assert len(table) == 3
    ours, gpt2 = ([float(cell) for cell in line.strip("|").split("|")[2:]] for line in table[:2])
    assert ours[0] > gpt2[0]  # zh characters per token: a zh+en tokenizer beats GPT-2's bytes on Chinese
    assert "Not evaluated yet" in report  # the fixture's model was not run through eval/run.py
    assert "Trained 24 steps" in report
    assert f"python -m shuangyu.chat {run_copy / 'final'}" in report
    png = (run_copy / "loss.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(run_copy / "loss.png").shape
    assert width > height > 300
    assert (run_copy / "final" / "loss.png").read_bytes() == png  # beside the card, so a push takes it along
    assert "](loss.png)" in (run_copy / "final" / "README.md").read_text()
    assert not list(run_copy.glob(".*tmp*")) and not list((run_copy / "final").glob(".*tmp*"))


def test_the_eval_table_comes_from_eval_results(run_copy):
    report = {
        "limit": 5,
        "table": [{"task": "arc_easy_local", "metric": "acc", "value": 0.4, "random_guess": 0.25, "dataset": None}],
        "held_out": {"zh": {"bits_per_byte": 2.5, "perplexity": 100.0, "tokens": 10_000, "bytes": 30_000}},
        "notes": [],
        "apply_chat_template": True,
    }
    (run_copy / "final" / "eval_results.json").write_text(json.dumps(report))
    text = build_report(run_copy, samples=False).read_text()
    assert "at most 5 examples per task, task prompts in the chat format" in text
    assert "held-out rows here are over 30 kB of zh from every" in text  # how much text: runs may differ
    assert "arc_easy_local" in text and "0.25" in text and "2.5" in text
    assert "## Samples" not in text


def test_the_report_command_rebuilds_and_refuses_a_missing_folder(run_copy, tmp_path):
    cmd = [sys.executable, "-m", "shuangyu.report"]
    done = subprocess.run([*cmd, str(run_copy), "--no_samples"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("# Report: run") and "Loading weights" not in done.stderr
    missing = subprocess.run([*cmd, str(tmp_path / "nope")], capture_output=True, text=True, cwd=REPO)
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "no such run folder" in missing.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = subprocess.run([*cmd, str(empty)], capture_output=True, text=True, cwd=REPO)
    assert refused.returncode == 2 and "no final model and no complete checkpoint" in refused.stderr


def test_read_log_sorts_by_step(tmp_path):
    rows = [{"step": 20, "train/loss": 1.0}, {"step": 10, "train/loss": 2.0}]
    (tmp_path / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [r["step"] for r in read_log(tmp_path)[0]] == [10, 20]
    assert read_log(tmp_path / "nowhere") == (None, False)


def test_a_log_cut_off_mid_row_is_read_up_to_it_and_reported(run_copy, capsys):
    # a run killed while it wrote a row, or a folder copied while it trained: here the cut falls inside a UTF-8
    # character of the last row's Chinese sample
    log = run_copy / "train_log.jsonl"
    data = log.read_bytes()
    start = data.rstrip(b"\n").rindex(b"\n") + 1
    lead = next(i for i in range(start, len(data)) if data[i] >= 0xC0)  # the first byte of a multi-byte character
    log.write_bytes(data[: lead + 1])
    rows, cut_off = read_log(run_copy)
    assert cut_off and len(rows) == data.count(b"\n") - 1
    assert main([str(run_copy), "--no_samples"]) == 0
    err = capsys.readouterr().err
    assert f"note: {log}: its last line is cut off; left out" in err and "Traceback" not in err


def test_a_malformed_row_before_the_last_is_one_error_line(run_copy, capsys):
    log = run_copy / "train_log.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join([lines[0], lines[1][:20] + "\n", *lines[2:]]))
    assert main([str(run_copy), "--no_samples"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"python -m shuangyu.report: error: {log}:2: not valid JSON (") and err.count("\n") == 1


def test_a_run_without_its_log_says_so_and_claims_no_plot(run_copy, capsys):
    (run_copy / "train_log.jsonl").unlink()
    assert main([str(run_copy), "--no_samples"]) == 0
    captured = capsys.readouterr()
    assert "The training log (train_log.jsonl) is missing from this folder" in captured.out
    assert "Training time: not known (no train_log.jsonl)." in captured.out
    assert "Trained 0 steps" not in captured.out and "0.0 min" not in captured.out
    assert "max_steps" in captured.out or "| steps |" in captured.out  # the card's recipe is still there
    assert captured.err.strip() == f"wrote {run_copy / 'report.md'}" and not (run_copy / "loss.png").exists()
