"""Every command's flags: a list flag given twice is refused in one line (argparse kept the last list without a
word, so half the files went unread), the same language twice in one list too, and the planner's token counts are
whole positive numbers of tokens."""

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from shuangyu.errors import UsageError, refuse_in_one_line

REPO = Path(__file__).resolve().parent.parent


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# each command with list flags, one given twice, and what it says
REPEATS = [
    ("shuangyu.tokenizer.train_bpe", ["--files", "a.jsonl", "--output_dir", "o", "--files", "b.jsonl"],
     "train_bpe.py: error: --files given twice: list all values after one --files"),
    ("shuangyu.tokenizer.train_bpe", ["--validation_files", "zh=a", "--files", "a", "--validation_files", "zh=b"],
     "train_bpe.py: error: --validation_files given twice: list all values after one --validation_files"),
    ("shuangyu.data.prepare", ["--files", "a.jsonl", "--files=b.jsonl"],
     "python -m shuangyu.data.prepare: error: --files given twice: list all values after one --files"),
    ("shuangyu.data.prepare", ["--exclude", "a", "--output_dir", "o", "--exclude", "b"],
     "python -m shuangyu.data.prepare: error: --exclude given twice: list all values after one --exclude"),
    ("shuangyu.training.cli", ["--train_files", "a", "--max_steps", "1", "--train-files", "b"],  # both spellings
     "train_clm.py: error: --train_files given twice: list all values after one --train_files"),
    ("shuangyu.training.cli", ["--validation_files", "zh=a", "--validation_files", "en=b"],
     "train_clm.py: error: --validation_files given twice: list all values after one --validation_files"),
    ("shuangyu.planning.plan", ["--train_fil", "a", "--hours", "1", "--train_files", "b"],  # an abbreviation too
     "python -m shuangyu.planning.plan: error: --train_files given twice: list all values after one --train_files"),
    ("shuangyu.training.dpo", ["--train_files", "a", "--train_files", "b"],
     "python -m shuangyu.training.dpo: error: --train_files given twice: list all values after one --train_files"),
]  # fmt: skip


@pytest.mark.parametrize("module, argv, line", REPEATS, ids=[f"{m}:{a[-2]}" for m, a, _ in REPEATS])
def test_a_list_flag_given_twice_is_one_line_and_exit_2(module, argv, line, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing is read or written: the refusal comes before any work
    assert importlib.import_module(module).main(argv) == 2
    assert one_error_line(capsys) == line
    assert list(tmp_path.iterdir()) == []


def test_a_list_flag_given_twice_in_a_config_run_is_refused_too(tmp_path):
    from shuangyu.training.arguments import parse_args

    config = tmp_path / "c.yaml"
    config.write_text("train_files: [zh=a.jsonl]\nmax_steps: 5\n")
    with pytest.raises(UsageError, match=r"^--train_files given twice: list all values after one --train_files$"):
        parse_args(["--config", str(config), "--train_files", "zh=b", "--train_files", "en=c"])
    # the config's list replaced by the command line's, and a single value overridden, are no repeat
    parsed = parse_args(["--config", str(config), "--train_files", "zh=b", "en=c", "--max_steps", "7"])
    assert parsed.data.train_files == ["zh=b", "en=c"] and parsed.train.max_steps == 7


def test_train_bpe_script_refuses_files_given_twice(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_text('{"text": "hello"}\n')
    done = subprocess.run(
        [sys.executable, str(REPO / "tokenizer/train_bpe.py"), "--files", "a.jsonl", "--files", "b.jsonl"]
        + ["--output_dir", "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "train_bpe.py: error: --files given twice: list all values after one --files"
    assert not (tmp_path / "out").exists()


def parser_with(*flags: tuple[str, dict]) -> argparse.ArgumentParser:
    parser = refuse_in_one_line(argparse.ArgumentParser(prog="p"))
    for name, kwargs in flags:
        parser.add_argument(name, **kwargs)
    return parser


def test_flags_meant_to_repeat_still_add_up():
    parser = parser_with(
        ("--tag", {"action": "append"}),
        ("--tags", {"action": "extend", "nargs": "+"}),
        ("-v", {"action": "count", "default": 0}),
        ("rest", {"nargs": "*"}),
    )
    argv = ["--tag", "a", "-v", "--tags", "x", "--tag", "b", "-vv", "--tags", "y", "--", "--tags", "--tags"]
    args = parser.parse_args(argv)
    assert args.tag == ["a", "b"] and args.tags == ["x", "y"] and args.v == 3 and args.rest == ["--tags", "--tags"]


def test_a_single_value_given_again_replaces_it():
    """`$BASE --x 2` overriding a script's base flags is a common use, relied on by scripts and tests."""
    parser = parser_with(("--x", {"type": float}), ("--files", {"nargs": "+"}))
    args = parser.parse_args(["--x", "-1", "--files", "a=b", "-2", "--x=3"])
    assert args.x == 3 and args.files == ["a=b", "-2"]  # a negative number is a value, not a flag


def test_train_bpe_refuses_a_language_given_twice_in_validation_files(tmp_path, capsys):
    from shuangyu.tokenizer.train_bpe import main

    for name in ("train", "a", "b"):
        (tmp_path / f"{name}.jsonl").write_text('{"text": "hello"}\n')
    argv = ["--files", str(tmp_path / "train.jsonl"), "--output_dir", str(tmp_path / "out")]
    argv += ["--validation_files", f"zh={tmp_path / 'a.jsonl'}", f"zh={tmp_path / 'b.jsonl'}"]
    assert main(argv) == 2
    assert one_error_line(capsys) == (
        "train_bpe.py: error: --validation_files: zh given twice; give each language once: zh=GLOB[,GLOB...]"
    )
    assert not (tmp_path / "out").exists()


def test_prepare_names_the_language_given_twice_in_validation_files(tmp_path):
    from shuangyu.text.sources import resolve_validation_sources

    with pytest.raises(UsageError) as err:
        resolve_validation_sources(["zh=a.jsonl", "en=c.jsonl", "zh=b.jsonl"])
    assert str(err.value) == "--validation_files: zh given twice; give each name once: NAME=GLOB[,GLOB...]"


# ------------------------------------------------------------------------------------------- the planner's counts


@pytest.mark.parametrize(
    "value, why",
    [
        ("-5B", "must be positive"),
        ("0", "must be positive"),
        ("1.5", "not a whole number of tokens"),
        ("1.2345k", "not a whole number of tokens"),
        ("5GB", "a size in bytes"),
        ("1.5GiB", "a size in bytes"),
        ("lots", "expected a number of tokens"),
        ("", "expected a number of tokens"),
    ],
)
@pytest.mark.parametrize("flag", ["--tokens", "--corpus_tokens"])
def test_the_planners_token_counts_refuse_odd_values_in_one_line(flag, value, why, capsys):
    from shuangyu.planning.plan import main

    argv = ["--model", "tiny", flag, value] + (["--tokens", "1B"] if flag == "--corpus_tokens" else [])
    assert main(argv) == 2
    examples = "give one such as" if why.startswith("not") else "give a number of tokens such as"
    if why.startswith("expected"):
        tail = f"{why} such as 300M, 1.5B or 2000000"
    else:
        tail = f"{why}; {examples} 300M, 1.5B or 2000000"
    assert one_error_line(capsys) == f"python -m shuangyu.planning.plan: error: {flag} {value!r}: {tail}"


@pytest.mark.parametrize("value, tokens", [("1.5B", "1.5B"), ("300M", "300M"), ("1e9", "1B"), ("1.1B", "1.1B")])
def test_the_planner_takes_token_counts_with_multipliers(value, tokens, capsys):
    from shuangyu.files import parse_count
    from shuangyu.planning.plan import main

    assert main(["--model", "tiny", "--tokens", value]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"plan: tiny on 1 x H100, {tokens} tokens"
    assert parse_count("1.1B", "--tokens") == 1_100_000_000 and parse_count("2000000", "--tokens") == 2_000_000
