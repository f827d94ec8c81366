"""The docs against the code: every flag a command takes is named in the README or docs/, so a user reading them
finds it (a tester found --license, --corpus_tokens, --usd_per_gpu_hour, --references and --no_samples only in
--help)."""

import contextlib
import dataclasses
import importlib
import io
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# each command's module (its main takes argv); python -m shuangyu.training.dpo is below: most of its flags are TRL's
COMMANDS = [
    "shuangyu.training.cli",  # train_clm.py
    "shuangyu.tokenizer.train_bpe",
    "shuangyu.data.prepare",
    "shuangyu.evaluation.run",  # eval/run.py
    "shuangyu.sharing.push",  # eval/push.py
    "shuangyu.planning.plan",
    "shuangyu.report.build",  # python -m shuangyu.report
    "shuangyu.chat.cli",
    "shuangyu.training.merge_lora",
    "shuangyu.modeling.export",
    "shuangyu.demo",
]


def documented(flag: str) -> bool:
    text = "\n".join(page.read_text(encoding="utf-8") for page in DOCS)
    return re.search(re.escape(flag) + r"(?![A-Za-z0-9_])", text) is not None


def flags_in_help(module: str) -> set[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit):
        importlib.import_module(module).main(["--help"])
    found = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9_-]*[a-z0-9])", out.getvalue())) - {"--help"}
    # HfArgumentParser adds a dashed spelling of each flag and a --no_X for each flag that defaults to True
    return {f for f in found if "-" not in f[2:] and not (f.startswith("--no_") and f"--{f[5:]}" in found)}


@pytest.mark.parametrize("module", COMMANDS)
def test_every_flag_of_every_command_is_in_the_docs(module):
    flags = flags_in_help(module)
    assert flags, f"{module} --help listed no flags"
    assert sorted(f for f in flags if not documented(f)) == []


def test_every_flag_of_shuangyus_own_dpo_arguments_is_in_the_docs():
    """TRL's DPOConfig flags are TRL's to document; the ones Shuangyu adds are its own."""
    from shuangyu.training.dpo import DPOArguments, LoraArguments

    names = [f"--{f.name}" for cls in (DPOArguments, LoraArguments) for f in dataclasses.fields(cls)]
    assert names and [flag for flag in names if not documented(flag)] == []
