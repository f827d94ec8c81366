"""The run report (python -m shuangyu.report): every section from a real run's folder, the PNG, the card link."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shuangyu.report.build import build_report, main, summary_line, training_time, training_time_line
from shuangyu.report.compression import compression
from shuangyu.report.curves import plot_curves, read_log

REPO = Path(__file__).resolve().parent.parent
SHARED_TOKENIZERS = REPO.parent / "shared" / "data" / "tokenizers"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def run_copy(tiny_cpu_run, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_cpu_run, tmp_path / "run"))


@pytest.fixture
def lora_run(tiny_base_model_dir, tmp_path) -> Path:
    """A --lora_r --sft run's folder as train_clm.py leaves it, built by hand (no training): final/ and its
    checkpoint's model/ hold the adapter, with the chat tokens' embeddings trainable as an SFT run makes them, and a
    card that records the SFT stage; a short log."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shuangyu.sharing.card import write_card
    from shuangyu.tokenizer.chat_template import chat_token_ids
    from shuangyu.training.arguments import LoraArguments
    from shuangyu.training.finetune import apply_lora

    run = tmp_path / "lora"
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_base_model_dir, trust_remote_code=True)
    model = apply_lora(base, LoraArguments(lora_r=4), say=lambda _: None, token_ids=chat_token_ids(tokenizer))
    model.save_pretrained(run / "final")
    tokenizer.save_pretrained(run / "final")
    write_card(run / "final", name="lora", training={"stage": "sft", "base_model": str(tiny_base_model_dir)})
    step = run / "checkpoints" / "step-00000008"
    shutil.copytree(run / "final", step / "model")
    files = {f"model/{f.name}": f.stat().st_size for f in (step / "model").iterdir()}
    (step / "checkpoint.json").write_text(json.dumps({"step": 8, "tokens": 2048, "max_steps": 8, "files": files}))
    rows = [{"step": s, "train/loss": 5.0 - s / 10, "train/tokens": 256 * s, "time_s": 0.25 * s} for s in range(1, 9)]
    (run / "train_log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return run


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
    assert "| precision | fp32 |" in report  # as the recipe's table names it, not accelerate's "no"
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


def test_a_lora_run_is_reported_from_its_adapter(lora_run, capfd):
    """final/ holds an adapter (no config.json): the report is on it, not on the last checkpoint's model/, and the
    adapter is loaded by PEFT (transformers' own loading of an adapter folder missed its trainable-token weights,
    'newly initialized', in a LOAD REPORT on stderr)."""
    import logging

    class Records(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    # transformers' own handler writes to the stderr it found at import, which a test cannot always capture
    records, library = Records(), logging.getLogger("transformers")
    library.addHandler(records)
    try:
        assert main([str(lora_run), "--corpus", str(lora_run / "no-corpus")]) == 0
    finally:
        library.removeHandler(records)
    assert not [m for m in records.messages if "LOAD REPORT" in m or "newly initialized" in m], records.messages
    out = capfd.readouterr().out
    final = lora_run / "final"
    assert "checkpoints/step-00000008" not in out and "Stopped early" not in out
    assert "instruction-tuned (SFT) LoRA adapter (`final/`)" in out
    assert "## Samples (replies to fixed questions)" in out
    assert f"python -m shuangyu.chat {final}                # chat (the instruction-tuned adapter)" in out
    assert "--prompt" not in out.split("## Talk to it")[1]  # not a base model to continue text with
    merged = lora_run.parent / "lora-merged"
    assert f"`python -m shuangyu.training.merge_lora {final} {merged}`, then `python eval/run.py {merged} " in out
    assert "--limit 100 --apply_chat_template` (the merged model has" in out and "--output" not in out
    assert f"python eval/run.py {final}" not in out  # eval/run.py refuses an adapter
    assert (final / "loss.png").is_file() and "](loss.png)" in (final / "README.md").read_text()
    assert not (lora_run / "checkpoints" / "step-00000008" / "model" / "loss.png").exists()


def test_chat_run_must_be_an_instruction_tuning_run(run_copy, lora_run, tmp_path, capsys):
    """A pretraining run (here the report's own run) or a missing folder as --chat_run: one line naming the flag,
    exit 2, no report; an SFT run (here a LoRA adapter's) is reported as the instruction-tuned model."""
    for other, why in ((run_copy, "not an instruction-tuning run"), (tmp_path / "nope", "no such run folder")):
        assert main([str(run_copy), "--no_samples", "--chat_run", str(other)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"python -m shuangyu.report: error: --chat_run {other}: {why}"), err
        assert err.count("\n") == 1
    assert not (run_copy / "report.md").exists()
    assert main([str(run_copy), "--no_samples", "--chat_run", str(lora_run)]) == 0
    out = capsys.readouterr().out
    assert "## Instruction tuning\n\n### Training\n\nInstruction-tuned (SFT)" in out
    assert f"python -m shuangyu.chat {lora_run / 'final'}                # chat (the instruction-tuned adapter)" in out


def test_ctrl_c_is_one_line_exit_130_and_leaves_the_last_report(run_copy, monkeypatch, capsys):
    import shuangyu.report.build as build

    assert main([str(run_copy), "--no_samples"]) == 0
    before = {name: (run_copy / name).read_bytes() for name in ("report.md", "loss.png")}
    card = (run_copy / "final" / "README.md").read_bytes()
    capsys.readouterr()
    log = run_copy / "train_log.jsonl"
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:-3]))  # a different report and PNG

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "samples_section", interrupted)
    try:
        status = main([str(run_copy)])
    except KeyboardInterrupt:  # would stop the whole test session
        pytest.fail("Ctrl-C escaped main() as a KeyboardInterrupt (a traceback for the user)")
    assert status == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "python -m shuangyu.report: interrupted; no file was left half written; run it again to build the report"
    ]
    assert {name: (run_copy / name).read_bytes() for name in before} == before
    assert (run_copy / "final" / "README.md").read_bytes() == card
    left = [p.name for p in [*run_copy.iterdir(), *(run_copy / "final").iterdir()]]
    assert not [name for name in left if ".tmp-" in name or ".new-" in name], left


def test_a_short_run_says_seconds_not_minutes():
    rows = [{"step": 40, "train/tokens": 20_480, "time_s": 2.0}]
    assert summary_line(rows, 2.0) == "Trained 40 steps, 20,480 tokens in 2.0 s."
    assert training_time_line(rows, 2.0) == "Training time: 2.0 s over 1 logged step."
    assert training_time_line(rows, 42.4) == "Training time: 42 s over 1 logged step."
    assert training_time_line(rows * 2, 150.0) == "Training time: 2.5 min (150 s) over 2 logged steps."
    assert summary_line([{"step": 1, "time_s": 0.5}], 0.5) == "Trained 1 step in 0.5 s."


def test_a_model_folder_is_refused_with_its_run_folder_named(tmp_path, capsys):
    # the demo prints final/'s path; a checkpoint's model/ is a model folder too
    run = tmp_path / "run"
    for model in (run / "final", run / "checkpoints" / "step-00000010" / "model"):
        model.mkdir(parents=True)
        (model / "config.json").write_text("{}")
        assert main([str(model), "--no_samples"]) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"python -m shuangyu.report: error: {model}: a model folder, not a run folder: give its run folder, {run}"
        ]
    elsewhere = tmp_path / "downloaded"  # a model folder outside any run: no parent to name
    shutil.copytree(run / "final", elsewhere)
    assert main([str(elsewhere)]) == 2
    assert capsys.readouterr().err.strip().endswith("a model folder, not a run folder: give the run's --output_dir")


def test_a_run_without_final_says_it_stopped_early_and_leaves_its_checkpoint_intact(run_copy):
    """A checkpoint's files are recorded with their sizes: the report reads it but writes neither the PNG nor the
    card's link there, or resuming would pass the checkpoint over as damaged."""
    from shuangyu.training.checkpoint import complete_checkpoints, find_damage
    from shuangyu.training.run_lock import RunLock

    shutil.rmtree(run_copy / "final")
    step, checkpoint = complete_checkpoints(run_copy)[-1]
    info = json.loads((checkpoint / "checkpoint.json").read_text())
    (checkpoint / "checkpoint.json").write_text(json.dumps({**info, "max_steps": 100}))  # stopped at 24 of 100
    text = build_report(run_copy, samples=False).read_text()
    assert text.splitlines()[2] == (
        f"**Stopped early:** no final model; the run saved {step} steps of 100 planned (this report is on its latest "
        f"checkpoint, `checkpoints/{checkpoint.name}`). Run the same training command with "
        "`--resume_from_checkpoint latest` to continue it."
    )
    assert find_damage(checkpoint) is None and not (checkpoint / "model" / "loss.png").exists()
    assert (run_copy / "loss.png").is_file()
    lock = RunLock(run_copy)  # a run training in the folder now
    try:
        text = build_report(run_copy, samples=False).read_text()
    finally:
        lock.release()
    assert text.splitlines()[2].startswith("**Still training:** no final model yet;")
    (checkpoint / "checkpoint.json").write_text(json.dumps({**info, "max_steps": step}))  # every planned step saved
    text = build_report(run_copy, samples=False).read_text()
    assert text.splitlines()[2].startswith(f"**No final model:** the run saved all {step} planned steps"), text


def test_no_curves_drawn_removes_the_old_png_and_the_cards_link(run_copy):
    build_report(run_copy, samples=False)
    assert (run_copy / "final" / "loss.png").is_file() and "](loss.png)" in (
        run_copy / "final" / "README.md"
    ).read_text()
    (run_copy / "train_log.jsonl").write_text("")
    text = build_report(run_copy, samples=False).read_text()
    assert "No training loss logged yet." in text
    card = (run_copy / "final" / "README.md").read_text()
    assert "loss.png" not in card and "## Loss curves" not in card and "## Evaluation" in card
    assert not (run_copy / "loss.png").exists() and not (run_copy / "final" / "loss.png").exists()


def test_references_is_a_tokenizer_folder_or_a_folder_of_them(run_copy, tmp_path, capsys):
    """--references DIR: the QA's tokenizer folder itself was ignored (only DIR/gpt2 and DIR/minimind were read);
    a folder holding no tokenizer is one line, exit 2, before any work."""

    def reference_rows() -> list[str]:
        section = (run_copy / "report.md").read_text().split("## Tokenizer")[1].split("\n## ")[0]
        return [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")][2:]

    assert main([str(run_copy), "--no_samples", "--references", str(SHARED_TOKENIZERS / "gpt2")]) == 0
    assert reference_rows() == ["GPT-2"]
    mine = tmp_path / "refs" / "mine"
    mine.mkdir(parents=True)
    shutil.copy(SHARED_TOKENIZERS / "minimind" / "tokenizer.json", mine)
    shutil.copytree(SHARED_TOKENIZERS / "gpt2", tmp_path / "refs" / "gpt2")
    assert main([str(run_copy), "--no_samples", "--references", str(tmp_path / "refs")]) == 0
    assert reference_rows() == ["GPT-2", "mine"]
    capsys.readouterr()
    before = (run_copy / "report.md").read_bytes()
    assert main([str(run_copy), "--no_samples", "--references", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"python -m shuangyu.report: error: --references {tmp_path}: no "), err
    assert (run_copy / "report.md").read_bytes() == before


def test_a_lora_run_reports_the_merged_models_results(tmp_path):
    """The advice used to be `eval/run.py MERGED --output ADAPTER/eval_results.json`, which left the results in one
    folder and their card in another; the merged folder keeps both, and the adapter's report reads them there."""
    from shuangyu.report.build import eval_section

    final, merged = tmp_path / "lora" / "final", tmp_path / "lora-merged"
    final.mkdir(parents=True)
    merged.mkdir()
    (final / "adapter_config.json").write_text('{"r": 4}')
    assert f"`python eval/run.py {merged} --tasks arc_easy_local,xcopa_zh_local --limit 100`" in eval_section(final)
    row = {"task": "arc_easy_local", "metric": "acc", "value": 0.375, "random_guess": 0.25, "limit": 100}
    (merged / "eval_results.json").write_text(json.dumps({"limit": 100, "table": [row], "notes": []}))
    section = eval_section(final)
    assert f"`eval/run.py` on the merged model `{merged}`" in section and "| arc_easy_local | acc | 0.3750 |" in section
