"""cloud/modal_app.py offline: GPU specs, the command each entry runs (parsed by the real parsers of accelerate,
train_clm, prepare, eval and push), the attempt logic (stop before the time limit, retry, give up), and, where the
`modal` package is installed (requirements-cloud.txt), the app, image and volume definitions. Modal's servers are
never reached."""

import importlib.util
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def load_app():
    spec = importlib.util.spec_from_file_location("modal_app", REPO / "cloud" / "modal_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


app = load_app()


@pytest.mark.parametrize(
    "spec, parsed",
    [("H100:8", ("H100", 8)), ("h100", ("H100", 1)), ("A10G:4", ("A10G", 4)), ("a100-80gb:2", ("A100-80GB", 2))],
)
def test_gpu_specs_modal_accepts(spec, parsed):
    assert app.parse_gpu(spec) == parsed
    assert app.gpu_argument(*parsed) == (parsed[0] if parsed[1] == 1 else f"{parsed[0]}:{parsed[1]}")


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("H101:8", "Modal has no GPU 'H101'; choose one of T4, L4"),
        ("H100:0", "at least 1"),
        ("H100:x", "whole number"),
        ("H100:16", "at most 8 x H100 per container"),
        ("A10G:8", "at most 4 x A10G"),
    ],
)
def test_gpu_specs_modal_refuses_are_one_line(spec, needle):
    with pytest.raises(app.LaunchError) as err:
        app.parse_gpu(spec)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_the_train_command_is_accelerate_launch_of_train_clm_resuming(monkeypatch):
    from accelerate.commands.launch import launch_command_parser

    from shuangyu.training.arguments import parse_args

    monkeypatch.chdir(REPO)
    config = app.remote_config(str(REPO / "configs" / "124m.yaml"))
    assert config == "configs/124m.yaml"
    cmd = app.train_command(config, 8, app.run_name(config), extra="--max_steps 100")
    assert cmd[:2] == ["accelerate", "launch"]
    launch = launch_command_parser().parse_args(cmd[2:])
    assert launch.num_processes == 8 and launch.config_file == "accelerate_configs/multi_gpu.yaml"
    assert launch.training_script == "train_clm.py"
    parsed = parse_args(launch.training_script_args)
    assert parsed.checkpoint.output_dir == "/runs/124m" and parsed.checkpoint.resume_from_checkpoint == "latest"
    assert parsed.data.data_dir == "/root/shared/prepared/124m"
    assert parsed.model.tokenizer_name == "/root/shared/tokenizer"
    assert parsed.train.max_steps == 100  # extra flags win over the config
    # the configs' data paths are ../shared/...: the data Volume is mounted where they point
    assert all(f.split("=", 1)[1].startswith("../shared/") for f in parsed.data.train_files)
    assert (app.REMOTE_REPO.parent / "shared") == app.DATA_MOUNT
    single = launch_command_parser().parse_args(app.train_command(config, 1, "124m")[2:])
    assert single.config_file == "accelerate_configs/single_gpu.yaml" and single.num_processes is None


def test_the_prepare_command_feeds_prepare_the_configs_data(monkeypatch):
    from transformers import HfArgumentParser

    from shuangyu.data.inputs import PrepareArguments
    from shuangyu.training.arguments import parse_args

    monkeypatch.chdir(REPO)
    parsed = parse_args(["--config", "configs/124m.yaml", "--output_dir", "/runs/124m"])
    cmd = app.prepare_command(parsed.data, "124m", "/root/shared/tokenizer", parsed.train.seed, 16)
    assert cmd[:3] == ["python", "-m", "shuangyu.data.prepare"]
    (prep,) = HfArgumentParser(PrepareArguments).parse_args_into_dataclasses(args=cmd[3:])
    assert prep.output_dir == "/root/shared/prepared/124m" and prep.files == parsed.data.train_files
    assert prep.exclude == parsed.data.exclude and prep.validation_files == parsed.data.validation_files
    assert prep.block_size == parsed.data.block_size and prep.seed == parsed.train.seed and prep.num_proc == 16


def test_evaluate_chat_and_push_commands():
    from shuangyu.evaluation.run import parse_args as eval_args
    from shuangyu.sharing.push import parse_args as push_args

    cmd = app.evaluate_command("124m", "arc_easy_local,xcopa_zh_local", 100)
    assert cmd[:2] == ["python", "eval/run.py"]
    parsed = eval_args(cmd[2:])
    assert str(parsed.checkpoint) == "/runs/124m/final" and parsed.limit == 100
    assert "--limit" not in app.evaluate_command("124m", "arc_easy_local")
    cmd = app.push_command("124m", "user/shuangyu-124m", private=True)
    parsed = push_args(cmd[2:])
    assert parsed.hub_model_id == "user/shuangyu-124m" and parsed.private
    from shuangyu.chat.cli import parse_args as chat_args

    cmd = app.chat_command("124m", "今天天气", 50)
    assert cmd[:3] == ["python", "-m", "shuangyu.chat"]
    parsed = chat_args(cmd[3:])
    assert str(parsed.checkpoint) == "/runs/124m/final" and parsed.prompt == "今天天气" and parsed.max_new_tokens == 50


def test_running_it_with_python_says_how_to_run_it():
    """`python cloud/modal_app.py` (and --help) printed nothing and exited 0, with or without modal installed."""
    for argv in ([], ["--help"]):
        proc = subprocess.run([sys.executable, str(REPO / "cloud/modal_app.py"), *argv], capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stdout == ""
        assert len(proc.stderr.splitlines()) == 1, proc.stderr
        if app.modal is None:
            assert "modal is not installed: pip install -r requirements-cloud.txt" in proc.stderr
        else:
            assert "modal run cloud/modal_app.py" in proc.stderr


def test_run_names_and_configs_outside_the_checkout_are_refused(tmp_path):
    assert app.run_name("configs/1b.yaml") == "1b" and app.run_name("configs/1b.yaml", "1b-try2") == "1b-try2"
    with pytest.raises(app.LaunchError, match="names a folder"):
        app.run_name("x.yaml", "../etc")
    outside = tmp_path / "plan.yaml"
    outside.write_text("max_steps: 1\n")
    with pytest.raises(app.LaunchError, match="not inside"):
        app.remote_config(str(outside))
    with pytest.raises(app.LaunchError, match="no such file"):
        app.remote_config(str(tmp_path / "missing.yaml"))


CHILD = textwrap.dedent(
    """
    import signal, sys, time
    def stop(*_):
        print("saved a checkpoint", flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    print("training", flush=True)
    time.sleep(float(sys.argv[1]))
    """
)


def test_an_attempt_near_its_time_limit_stops_training_cleanly_and_asks_for_a_retry(tmp_path):
    """What train_clm does on SIGTERM (finish the step, save, exit 0) stood in for by a small script."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    status, stopped_by = app.supervise([sys.executable, str(script), "60"], deadline_s=1, cwd=tmp_path, poll_s=0.2)
    assert status == 0 and stopped_by == "the attempt's time limit is near"
    with pytest.raises(app.AttemptStopped, match="resumes from the latest checkpoint"):
        app.attempt_outcome(status, stopped_by)
    status, stopped_by = app.supervise([sys.executable, str(script), "0"], deadline_s=60, cwd=tmp_path, poll_s=0.2)
    assert app.attempt_outcome(status, stopped_by) == {"returncode": 0, "done": True, "reason": "finished"}


def test_failures_another_attempt_would_repeat_are_not_retried():
    assert app.attempt_outcome(2, None)["reason"] == "a usage error"
    assert not app.attempt_outcome(3, None)["done"]
    with pytest.raises(app.AttemptStopped):
        app.attempt_outcome(1, None)  # a crash: resume and try again
    with pytest.raises(app.AttemptStopped):
        app.attempt_outcome(-signal.SIGKILL, None)


def test_modal_is_imported_by_nothing_but_the_launcher():
    offenders = [
        str(p.relative_to(REPO))
        for p in (REPO / "shuangyu").rglob("*.py")
        if "import modal" in p.read_text(encoding="utf-8") or "from modal" in p.read_text(encoding="utf-8")
    ]
    assert offenders == []
    assert "modal" not in (REPO / "requirements.txt").read_text()
    assert (REPO / "requirements-cloud.txt").read_text().count("modal==") == 1


# ----------------------------------------------------------------------- with the modal package (optional)


@pytest.fixture
def with_modal():
    pytest.importorskip("modal", reason="modal is optional: pip install -r requirements-cloud.txt")
    return load_app()


def test_the_app_its_volumes_and_functions(with_modal):
    m = with_modal
    assert m.app.name == "shuangyu"
    spec = m.train._spec_  # modal 1.6.4 (pinned in requirements-cloud.txt)
    assert {path: repr(v) for path, v in spec.volumes.items()} == {
        "/root/shared": "modal.Volume.from_name('shuangyu-data')",
        "/runs": "modal.Volume.from_name('shuangyu-runs')",
    }
    assert spec.gpus == "H100"  # replaced per run by --gpu (train.with_options)
    assert m.evaluate._spec_.gpus == "L4" and m.push._spec_.gpus is None and m.prepare._spec_.gpus is None
    from modal._utils.function_utils import parse_gpu_config

    for spec_text in ("H100:8", "a10g:4", "T4"):  # what --gpu becomes is what Modal's own parser reads
        kind, count = m.parse_gpu(spec_text)
        config = parse_gpu_config(m.gpu_argument(kind, count))
        assert (config.gpu_type, config.count) == (kind, count)
    assert "with_options" in repr(m.train.with_options(gpu="H100:8"))


def image_layers(image):
    """The Dockerfile commands of each layer, base first (modal 1.6.4's lazy image objects, read offline)."""
    from modal._utils.async_utils import synchronizer

    def commands(img):
        for cell in img._load.__closure__ or ():
            if getattr(cell.cell_contents, "__name__", "") == "build_dockerfile":
                return cell.cell_contents("2024.10").commands
        return []

    layers, img = [], synchronizer._translate_in(image)
    while img is not None:
        layers.append(commands(img))
        deps = img._deps()
        img = deps[0] if deps else None
    return layers[::-1]


def test_the_image_installs_cuda_torch_then_requirements_then_the_checkout(with_modal):
    layers = image_layers(with_modal.image)
    text = ["\n".join(layer) for layer in layers]
    assert any("python:3.11" in t for t in text[:1])
    torch_at = next(i for i, t in enumerate(text) if "torch==2.13.0 --index-url https://download.pytorch.org/whl/" in t)
    reqs_at = next(i for i, t in enumerate(text) if "pip install -r /.requirements.txt" in t)
    assert torch_at < reqs_at < len(text) - 1
    assert "COPY . /" in text[-1]  # the checkout, copied last
    assert "ENV PYTHONPATH=/root/shuangyu" in "\n".join(text)


def test_the_launcher_module_imports_under_modal_run(with_modal, tmp_path):
    """`modal run` imports the file as a script: it must load with modal present and not touch the network."""
    proc = subprocess.run(
        [sys.executable, "-c", f"import runpy; runpy.run_path({str(REPO / 'cloud/modal_app.py')!r})"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
