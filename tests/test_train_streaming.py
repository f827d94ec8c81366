"""train_clm.py --streaming end to end on CPU: 2 processes resume with exactly the losses of an uninterrupted run,
the held-out slice gives validation per source, and bad input is one line."""

import json
import re
import shutil

import pytest

from tests.test_data_streaming import documents, write_shards
from tests.test_train_clm import losses, run

STEPS = 8


@pytest.fixture(scope="module")
def common(tiny_tokenizer_dir, tmp_path_factory) -> list[str]:
    """Local shards (jsonl and parquet, 4 each, so 2 processes get 2 whole shards each) and the flags every run
    shares."""
    root = tmp_path_factory.mktemp("shards")
    zh = write_shards(root / "zh", documents("zh", 400, seed=1, long_every=7), shards=4)
    en = write_shards(root / "en", documents("en", 300, seed=2), shards=4, kind="parquet")
    return [
        "--streaming",
        "--tokenizer_name",
        str(tiny_tokenizer_dir),
        "--train_files",
        f"zh={zh}:0.5",
        f"en={en}:0.5",
        "--validation_docs",
        "20",
        "--shuffle_window",
        "64",
        "--model_config",
        "tiny",
        "--block_size",
        "32",
        "--per_device_train_batch_size",
        "2",
        "--learning_rate",
        "1e-2",
        "--warmup_steps",
        "2",
        "--report_to",
        "none",
        "--seed",
        "0",
        "--logging_steps",
        "1",
        "--eval_steps",
        "4",
        "--eval_rows",
        "16",
        "--save_steps",
        "4",
    ]


@pytest.mark.slow(minutes=1.5)
def test_two_processes_resume_a_stream_exactly(common, tmp_path):
    reference = tmp_path / "reference"
    proc = run([*common, "--max_steps", str(STEPS), "--output_dir", str(reference)], processes=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 whole shard(s) each" in proc.stdout
    positions = json.loads((reference / "checkpoints" / "step-00000004" / "data_stream.json").read_text())
    assert len(positions["processes"]) == 2 and positions["processes"][0] != positions["processes"][1]
    log = [json.loads(line) for line in (reference / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "eval/zh/bits_per_byte" in e and "eval/en/bits_per_byte" in e] == [4, 8]

    resumed = tmp_path / "resumed"
    shutil.copytree(reference, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-00000008")  # as if the run had died after step 4's checkpoint
    shutil.rmtree(resumed / "final")
    proc = run([*common, "--max_steps", str(STEPS), "--output_dir", str(resumed), "--resume_from_checkpoint", "latest"],
               processes=2)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout + proc.stderr
    assert losses(resumed) == losses(reference)  # steps 5..8 on the same batches: bit for bit the same losses
    card = (reference / "final" / "README.md").read_text()
    assert "| zh | `*.jsonl` | 0.5 |" in card and "| en | `*.parquet` | 0.5 |" in card

    # the stream's positions are per process: another number of processes is refused, in one line
    proc = run([*common, "--max_steps", str(STEPS + 2), "--output_dir", str(resumed), "--resume_from_checkpoint",
                "latest"])  # fmt: skip
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines()[-1].endswith("each process streams its own shards, so resume with 2 processes")
    )


def one_line_error(args: list[str], processes: int = 1) -> str:
    proc = run(args, processes=processes)
    assert proc.returncode != 0, proc.stdout[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "train_clm.py: error:" in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sft"], "--streaming reads plain text; --sft conversations are prepared"),
        (["--data_dir", "somewhere"], "--data_dir somewhere names prepared blocks, and --streaming reads"),
        (["--dataloader_num_workers", "2"], "--dataloader_num_workers 2 with --streaming"),
        (["--shuffle_window", "0"], "--shuffle_window 0: must be at least 1"),
    ],
)
def test_flags_that_cannot_stream_are_refused_when_parsed(common, extra, message):
    from shuangyu.errors import UsageError
    from shuangyu.training.arguments import parse_args

    with pytest.raises(UsageError, match=re.escape(message)):
        parse_args([*common, *extra, "--max_steps", "2", "--output_dir", "out"])


def test_a_missing_text_column_stops_both_processes_in_one_line(common, tmp_path):
    """The sources' other errors (a glob matching nothing, mixed file types, no weights) are one line the same way:
    tests/test_data_streaming.py."""
    error = one_line_error([*common, "--text_column", "content", "--max_steps", "2", "--output_dir",
                            str(tmp_path / "run")], processes=2)  # fmt: skip
    assert error.endswith(": no column 'content' (columns: text, id); set --text_column"), error
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_stream_resumed_with_other_sources_is_refused_before_it_is_opened(common, tmp_path, capsys):
    """A streamed run resumed with other weights or --train_files printed the source table, tokenised the validation
    documents and noted the warmup before its refusal, which named no source ("--train_files/--dataset_name (the
    sources, their weights or their files) changed"). Now: one line naming the change, before anything is read;
    another run's checkpoint named in a new --output_dir leaves no folder."""
    from shuangyu.training import cli

    def given(flags, flag, *values):  # `flags` with `flag`'s values replaced
        at = flags.index(flag) + 1
        end = next((i for i in range(at, len(flags)) if flags[i].startswith("--")), len(flags))
        return [*flags[:at], *values, *flags[end:]]

    run = tmp_path / "run"
    first = given(given(common, "--save_steps", "2"), "--eval_steps", "100")
    assert cli.main([*first, "--max_steps", "2", "--output_dir", str(run)]) == 0
    at = common.index("--train_files")
    zh, en = (value.rsplit(":", 1)[0] for value in common[at + 1 : at + 3])  # without their weights
    capsys.readouterr()
    for sources, change, out, checkpoint in [
        ([f"{zh}:0.7", f"{en}:0.3"], "the weights (zh 0.5, en 0.5 -> zh 0.7, en 0.3)", run, "latest"),
        ([zh], "the sources (zh, en -> zh)", tmp_path / "branch", run / "checkpoints" / "step-00000002"),
    ]:
        resume = ["--resume_from_checkpoint", str(checkpoint), "--max_steps", "4", "--output_dir", str(out)]
        assert cli.main([*given(first, "--train_files", *sources), *resume]) == 2
        said = capsys.readouterr()
        lines = said.err.strip().splitlines()
        assert len(lines) == 1 and not said.out.strip(), said  # no source table, validation or warmup note
        assert f"this run trained on other data ({change} changed since it started)" in lines[0], lines[0]
    assert not (tmp_path / "branch").exists()


def test_a_checkpoint_resumes_only_in_the_mode_it_was_saved_in(tmp_path):
    from shuangyu.errors import UsageError
    from shuangyu.training import checkpoint as ckpt
    from shuangyu.training import resume_checks

    streamed, prepared = tmp_path / "streamed", tmp_path / "prepared"
    streamed.mkdir()
    prepared.mkdir()
    (streamed / ckpt.STREAM_POSITIONS).write_text(json.dumps({"processes": [{"p": 0}, {"p": 1}]}))
    resume_checks.check_data_kind(streamed, streaming=True)
    resume_checks.check_data_kind(prepared, streaming=False)
    with pytest.raises(UsageError, match="saved by a --streaming run: resume it with --streaming"):
        resume_checks.check_data_kind(streamed, streaming=False)
    with pytest.raises(UsageError, match="saved by a run on prepared blocks"):
        resume_checks.check_data_kind(prepared, streaming=True)
    assert ckpt.read_stream_position(streamed, 1, 2) == {"p": 1}
    with pytest.raises(UsageError, match="for 2 processes, not 3: .* resume with 2 processes"):
        ckpt.read_stream_position(streamed, 0, 3)


@pytest.mark.slow
def test_a_bad_line_mid_run_stops_both_processes_at_one_step_in_one_line(common, tmp_path):
    """Each process reads ahead of the loop; at every logging step they agree whether a stream failed, so both stop
    at the same step, save it, and one of them names the line (no gloo error from the other)."""
    path = tmp_path / "en.jsonl"
    lines = [json.dumps({"text": d}).encode() for d in documents("en", 400, seed=4)]
    lines[150] = b'{"text": "caf\xe9"}'
    path.write_bytes(b"\n".join(lines) + b"\n")
    i = common.index("--train_files")
    args = [*common[:i], "--train_files", str(path), *common[i + 3 :]]
    out = tmp_path / "run"
    proc = run([*args, "--max_steps", "500", "--save_steps", "1000", "--logging_steps", "5", "--output_dir", str(out)],
               processes=2)  # fmt: skip
    errors = [line for line in proc.stderr.splitlines() if "train_clm.py: error:" in line]
    assert len(errors) == 1 and f"{path}:151: not valid UTF-8" in errors[0], proc.stderr[-3000:]
    saved = sorted((out / "checkpoints").iterdir())
    step = int(saved[0].name[5:])
    assert len(saved) == 1 and f"(stopped at step {step}; the steps so far are saved" in errors[0]
    assert proc.returncode != 0 and step % 5 == 0  # they agree at the logging steps
    assert "Connection closed by peer" not in proc.stderr and "UnicodeDecodeError" not in proc.stderr
    # the launcher lists the processes that failed (with our usage exit code) before it stopped the rest: a
    # process still ending when the first one exits is stopped by its SIGTERM (-15), its step already saved
    codes = re.findall(r"exitcode\s*: (-?\d+)", proc.stderr)
    assert "2" in codes and set(codes) <= {"2", "-15"}, proc.stderr[-3000:]
