"""python -m shuangyu.training.dpo refuses missing or empty preference pairs in one line naming the flag and the file,
before the model loads and before anything is written (the QA repros: TRL's 9-frame traceback for an
--eval_strategy without held-out pairs, and "the preference data is empty" naming neither file nor flag)."""

import json
from pathlib import Path

import pytest

PROG = "python -m shuangyu.training.dpo"


def write_pairs(path: Path, n: int) -> Path:
    rows = [{"prompt": f"question {i}", "chosen": f"good answer {i}", "rejected": f"bad answer {i}"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def flags(model: Path, out: Path, train: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(model), "--output_dir", str(out), "--train_files", str(train),
        "--per_device_train_batch_size", "2", "--max_length", "128", "--max_steps", "1", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("strategy", ["steps", "epoch"])
def test_an_eval_strategy_without_held_out_pairs_is_one_line_before_the_model_loads(
    strategy, tiny_base_model_dir, tmp_path, capsys, monkeypatch
):
    import shuangyu.training.dpo as dpo

    monkeypatch.setattr(dpo, "train_dpo", lambda *a: pytest.fail("refused only after the model loaded"))
    out = tmp_path / "out"
    train = write_pairs(tmp_path / "pairs.jsonl", 4)
    extra = ("--eval_strategy", strategy, "--eval_steps", "1")
    assert dpo.main(flags(tiny_base_model_dir, out, train, *extra)) == 2
    assert capsys.readouterr().err == (
        f"{PROG}: error: --eval_strategy {strategy} needs held-out pairs: give --validation_files, or --eval_strategy "
        "no\n"
    )
    assert not out.exists()


@pytest.mark.parametrize("which", ["train", "validation"])
@pytest.mark.parametrize("content", ["", "\n  \n\n"], ids=["empty", "blank_lines"])
def test_a_pairs_file_without_pairs_is_named_in_one_line(which, content, tiny_base_model_dir, tmp_path, capsys):
    """An empty --validation_files file is refused whatever --eval_strategy says (with steps it was TRL's traceback;
    with no, the held-out pairs silently dropped)."""
    from shuangyu.training.dpo import main

    out = tmp_path / "out"
    empty = tmp_path / "empty.jsonl"
    empty.write_text(content)
    pairs = write_pairs(tmp_path / "pairs.jsonl", 4)
    if which == "train":
        args = flags(tiny_base_model_dir, out, empty)
    else:
        args = flags(tiny_base_model_dir, out, pairs, "--validation_files", str(empty), "--eval_strategy", "steps")
    assert main(args) == 2
    assert capsys.readouterr().err == (
        f"{PROG}: error: --{which}_files {empty}: no preference pairs (empty file?); give it pairs, or leave it out\n"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "report_to, said",
    [
        ("foo", "--report_to foo: foo is not supported, only "),
        ("wandb", "--report_to wandb: wandb is not installed: pip install wandb, or --report_to tensorboard"),
    ],
)
def test_a_tracker_that_cannot_log_is_one_line_before_the_model_loads(
    report_to, said, tiny_base_model_dir, tmp_path, capsys, monkeypatch
):
    """The Trainer found both once the model was loaded, each with a traceback (a ValueError; wandb's RuntimeError)."""
    import importlib.util

    import shuangyu.training.dpo as dpo

    if report_to == "wandb" and importlib.util.find_spec("wandb"):
        pytest.skip("wandb is installed here")
    monkeypatch.setattr(dpo, "train_dpo", lambda *a: pytest.fail("refused only after the model loaded"))
    out = tmp_path / "out"
    train = write_pairs(tmp_path / "pairs.jsonl", 4)
    assert dpo.main(flags(tiny_base_model_dir, out, train, "--report_to", report_to, "--eval_strategy", "no")) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error: {said}"), lines
    assert not out.exists()


def test_a_dataset_and_pair_files_together_are_refused_before_the_model_loads(
    tiny_base_model_dir, tmp_path, capsys, monkeypatch
):
    import shuangyu.training.dpo as dpo

    monkeypatch.setattr(dpo, "train_dpo", lambda *a: pytest.fail("refused only after the model loaded"))
    out = tmp_path / "out"
    train = write_pairs(tmp_path / "pairs.jsonl", 4)
    assert dpo.main(flags(tiny_base_model_dir, out, train, "--dataset_name", "someone/pairs")) == 2
    assert capsys.readouterr().err == (
        f"{PROG}: error: --dataset_name and --train_files both name the training pairs: give one of them\n"
    )
    assert not out.exists()


def test_held_out_pairs_that_no_evaluation_scores_are_noted(tiny_base_model_dir, tmp_path, capsys, monkeypatch):
    import shuangyu.training.dpo as dpo

    class Stop(Exception):
        pass

    def stop(*args):
        raise Stop

    monkeypatch.setattr(dpo, "train_dpo", stop)
    train = write_pairs(tmp_path / "pairs.jsonl", 4)
    held_out = write_pairs(tmp_path / "held_out.jsonl", 2)
    with pytest.raises(Stop):
        dpo.main(flags(tiny_base_model_dir, tmp_path / "out", train, "--validation_files", str(held_out)))
    assert capsys.readouterr().err == (
        f"{PROG}: note: --validation_files are not scored with --eval_strategy no (give --eval_strategy steps and "
        "--eval_steps N to score them)\n"
    )


def test_keep_end_is_our_one_line_without_trl_s_warning_before_the_model_loads(
    tiny_base_model_dir, tmp_path, capsys, monkeypatch
):
    """TRL's FutureWarning for keep_end came first, then (after the data was read) our refusal saying more."""
    import warnings

    import shuangyu.training.dpo as dpo

    monkeypatch.setattr(dpo, "train_dpo", lambda *a: pytest.fail("refused only after the model loaded"))
    out = tmp_path / "out"
    train = write_pairs(tmp_path / "pairs.jsonl", 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert dpo.main(flags(tiny_base_model_dir, out, train, "--truncation_mode", "keep_end")) == 2
    assert [str(w.message) for w in caught if "keep_end" in str(w.message)] == []
    assert capsys.readouterr().err == (
        f"{PROG}: error: --truncation_mode keep_end is deprecated in TRL and cuts the start of the chat (its system "
        "message); leave it at keep_start and raise --max_length instead\n"
    )
    assert not out.exists()
