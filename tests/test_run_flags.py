"""train_clm.py's flags that ask something of the machine (a tracker's package, a compiler, an attention kernel
that trains on its device): refused in one line, exit 2, before the output folder is made. Each was a traceback
at the first step, or a run that went on without what was asked for."""

import importlib.util
import shutil

import pytest

from shuangyu.training import checks, cli
from shuangyu.training.arguments import parse_args

REFUSED = {
    "flex_on_cpu": (["--attn_implementation", "flex_attention"], {}, "--attn_implementation flex_attention does "
                    "not train on the CPU: use sdpa"),
    "flex_document_compile": (["--attn_implementation", "flex_attention", "--document_attention", "--compile"], {},
                              "--attn_implementation flex_attention does not train on the CPU"),
    "flash_on_cpu": (["--attn_implementation", "flash_attention_2"], {}, "flash_attention_2 does not train on the CPU"),
    "unknown_tracker": (["--report_to", "foo"], {}, "--report_to foo: unknown tracker 'foo'"),
    "unknown_in_list": (["--report_to", "tensorboard,foo"], {}, "unknown tracker 'foo'"),
    "no_cxx": (["--compile"], {"CXX": "/nonexistent/g++"},
               "--compile needs a C++ compiler (torch inductor): $CXX (/nonexistent/g++) is not one found on PATH"),
    # Accelerate enables fp16 on GPUs only: the run trained in fp32 and recorded fp16
    "fp16_on_cpu": (["--mixed_precision", "fp16"], {}, "--mixed_precision fp16 does not train on the CPU (it would "
                    "run in fp32): use bf16"),
}  # fmt: skip


def flags(tokenizer, tmp_path, *extra) -> list[str]:
    out = ["--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--model_config", "tiny"]
    return ["--tokenizer_name", str(tokenizer), "--train_files", str(tmp_path / "none.jsonl"), *out, *extra]


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_flag_this_machine_cannot_run_is_one_line(case, gpt2_tokenizer_dir, tmp_path, capsys, monkeypatch):
    extra, env, needle = REFUSED[case]
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # accelerate's cpu.yaml: the CPU, on a GPU machine too
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(flags(gpt2_tokenizer_dir, tmp_path, *extra)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train_clm.py: error:") and needle in lines[0], lines
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_report_to_wandb_without_wandb_is_refused(gpt2_tokenizer_dir, tmp_path, capsys):
    # accelerate only warned, and the run trained with no tracking
    for report_to in ("wandb", "tensorboard,wandb"):
        assert cli.main(flags(gpt2_tokenizer_dir, tmp_path, "--report_to", report_to)) == 2
        line = capsys.readouterr().err.strip()
        assert line == (
            "train_clm.py: error: --report_to wandb: wandb is not installed: pip install wandb, or --report_to "
            "tensorboard"
        )
    assert not (tmp_path / "out").exists()


def test_what_a_machine_can_run_passes(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    monkeypatch.delenv("CXX", raising=False)
    ok = ["none", "all"] + (["tensorboard"] if importlib.util.find_spec("tensorboard") else [])
    for report_to in ok:
        config = parse_args(["--report_to", report_to, "--attn_implementation", "eager"])
        checks.check_trackers(config.logging.report_to)
        checks.check_machine(config)
    if shutil.which("g++"):
        checks.check_machine(parse_args(["--compile"]))
    for precision in ("auto", "no", "bf16"):
        checks.check_machine(parse_args(["--mixed_precision", precision]))


def test_without_cxx_the_refusal_names_g_plus_plus(gpt2_tokenizer_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(checks, "cpp_compiler", lambda: None)  # a machine without g++
    assert cli.main(flags(gpt2_tokenizer_dir, tmp_path, "--compile")) == 2
    assert capsys.readouterr().err.strip().endswith("install g++ or leave out --compile")


def test_the_cpp_compiler_is_the_one_inductor_uses(monkeypatch):
    # inductor tries $CXX alone where it is set (no fallback to g++), else g++
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    assert checks.cpp_compiler() is None
    monkeypatch.delenv("CXX")
    assert checks.cpp_compiler() == shutil.which("g++")
    monkeypatch.setenv("CC", "/nonexistent/gcc")
    assert checks.c_compiler() is None
    monkeypatch.delenv("CC")
    assert checks.c_compiler() == (shutil.which("gcc") or shutil.which("clang"))
