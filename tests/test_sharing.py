"""Sharing: the model card, eval/push.py and train_clm.py --push_to_hub, against a local stand-in for the Hub's
HTTP API (tests/hub_standin.py); what arrives is read back the way a Hub user would load it."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hub_standin import HubStandIn, run_card_code
from huggingface_hub import ModelCard

from shuangyu.sharing.card import render_card, write_card

REPO = Path(__file__).resolve().parent.parent
TOKEN = "hf_ShuangyuTestToken0123456789abcdef"
PUSH = [sys.executable, str(REPO / "eval" / "push.py")]


@pytest.fixture
def hub():
    with HubStandIn(TOKEN) as standin:
        yield standin


def hub_env(hub, tmp_path, token: str | None = TOKEN) -> dict:
    """The Hub at the stand-in, online, an empty cache and no cached login, and HF_TOKEN if given."""
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    home = tmp_path / "hf_home"
    home.mkdir(exist_ok=True)
    env |= {
        "HF_ENDPOINT": hub.url,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(home),
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
    }
    if token:
        env["HF_TOKEN"] = token
    return env


def read_back(repo_id: str, local: Path, env: dict, revision: str = "main") -> subprocess.CompletedProcess:
    """As a Hub user: AutoModelForCausalLM and AutoTokenizer from the repo id, in a fresh process; the
    logits must equal those of the local folder that was pushed."""
    code = f"""
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
kw = dict(trust_remote_code=True, revision={revision!r})
model = AutoModelForCausalLM.from_pretrained({repo_id!r}, **kw)
tok = AutoTokenizer.from_pretrained({repo_id!r}, **kw)
local = AutoModelForCausalLM.from_pretrained({str(local)!r}, trust_remote_code=True)
ids = tok("今天天气很好, the weather is nice", return_tensors="pt").input_ids
assert tok.decode(ids[0]) == "今天天气很好, the weather is nice"
torch.testing.assert_close(model(ids).logits, local(ids).logits, rtol=0, atol=0)
print("loaded", type(model).__name__, model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] - ids.shape[1])
"""
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd="/")


def assert_no_token(*texts: str, folders: tuple[Path, ...] = ()) -> None:
    for text in texts:
        assert TOKEN not in text
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                assert TOKEN.encode() not in path.read_bytes(), path


@pytest.fixture
def checkpoint(tiny_cpu_run, tmp_path) -> Path:
    """A copy of the tiny-cpu run's final folder (tests write into it)."""
    return Path(shutil.copytree(tiny_cpu_run / "final", tmp_path / "final"))


def report(table, limit=None, held_out=None) -> dict:
    """An evaluation report as eval/run.py writes it."""
    from shuangyu.evaluation.local_tasks import HELLASWAG_NOTE
    from shuangyu.evaluation.run import hub_dataset

    rows = [
        {"task": t, "metric": m, "value": v, "random_guess": g, "dataset": hub_dataset(t, {})} for t, m, v, g in table
    ]
    notes = [f"hellaswag_local: {HELLASWAG_NOTE}"] if any("hellaswag" in t for t, *_ in table) else []
    return {
        "limit": limit,
        "table": rows,
        "held_out": held_out or {},
        "notes": notes,
        "lm_eval": {"n-shot": {}, "configs": {}},
    }


def test_the_trainer_writes_a_model_card(tiny_cpu_run):
    card = ModelCard.load(tiny_cpu_run / "final" / "README.md")
    data = card.data.to_dict()
    assert data["language"] == ["zh", "en"] and data["license"] == "apache-2.0"
    assert {"shuangyu", "bilingual", "custom_code"} <= set(data["tags"])
    assert data["pipeline_tag"] == "text-generation" and data["library_name"] == "transformers"
    assert "model-index" not in data  # not evaluated yet
    text = card.text
    assert "| zh | `zh_reviews.jsonl` | 0.5 |" in text and "| en | `en_reviews.jsonl` | 0.5 |" in text
    assert "| steps | 24 |" in text and "| optimizer | muon (match_rms_adamw) |" in text
    assert "| precision | fp32 |" in text and "| tokens seen | 49,152 |" in text
    assert "Held-out validation at step 24" in text
    assert f'from_pretrained("{tiny_cpu_run / "final"}", trust_remote_code=True)' in text


@pytest.mark.parametrize("stage", ["sft", "dpo", "fine-tuning", "adapter"])
def test_the_card_for_the_hub_names_no_local_path(stage, tmp_path):
    """The base model (SFT, DPO's chat model, merge_lora's and an adapter's base), a --dataset folder and a
    validation source named by its file reach the card as local paths; the pushed form keeps only what a reader
    can place (RUN/final), said to be local, and a Hub id as is. The folder's own card keeps the paths."""
    base, folder = tmp_path / "base-run" / "final", tmp_path / "run" / "final"
    folder.mkdir(parents=True)
    if stage == "adapter":
        adapter = {"r": 4, "base_model_name_or_path": str(base), "peft_type": "LORA"}
        (folder / "adapter_config.json").write_text(json.dumps(adapter))
    else:
        (folder / "config.json").write_text(json.dumps({"model_type": "shuangyu", "num_hidden_layers": 2}))
    source = {"name": "en", "files": [], "dataset": str(tmp_path / "ds"), "weight": None, "passes": 1}
    validation = f"every 10 steps, the first rows of each source: {tmp_path / 'val' / 'zh.jsonl'} 16"
    training = {
        "stage": "sft" if stage == "adapter" else stage,
        "base_model": str(base),
        "sources": [source],
        "recipe": {"model": str(base), "validation": validation},
    }
    write_card(folder, name="run", training=training)
    write_card(folder, load_path=str(folder))
    local = (folder / "README.md").read_text()
    assert str(base) in local and str(folder) in local  # useful here: where the model came from, where it is
    shared = render_card(folder, name="me/run", load_path="me/run", portable=True)
    assert str(tmp_path) not in shared and "/tmp/" not in shared, [x for x in shared.splitlines() if "/tmp/" in x]
    assert "`base-run/final` (a local folder)" in shared and "| model | base-run/final (a local folder) |" in shared
    assert "| en | ds (a local folder) |" in shared and "the first rows of each source: zh.jsonl 16" in shared
    hub = render_card(
        folder, training=training | {"base_model": "org/base", "recipe": {"model": "org/base"}}, portable=True
    )
    assert "| model | org/base |" in hub


def test_the_card_needs_no_lm_eval(checkpoint):
    """Training writes the card; a training-only install (the GPU image, say) has no lm-eval."""
    code = (
        "import sys; sys.modules['lm_eval'] = None\n"
        "from pathlib import Path\nfrom shuangyu.sharing.card import write_card\n"
        f"write_card(Path({str(checkpoint)!r}), training={{'sources': [], 'recipe': {{'steps': 7}}}})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| steps | 7 |" in (checkpoint / "README.md").read_text()


def test_card_evaluation_and_model_index(checkpoint):
    (checkpoint / "README.md").write_text(
        (checkpoint / "README.md").read_text(encoding="utf-8") + "\n## Notes by the author\n\nKeep me.\n"
    )
    rows = [
        ("arc_easy_local", "acc", 0.31, 0.25),
        ("hellaswag_local", "acc_norm", 0.27, 0.25),
        ("cmmlu_local", "acc", 0.26, 0.25),
        ("xcopa_zh_local", "acc", 0.55, 0.5),
    ]
    held_out = {"zh": {"bits_per_byte": 2.5, "perplexity": 300.0}}
    # a quick check (--limit): in the table, marked, and never in model-index
    write_card(checkpoint, evaluation=report(rows, limit=5, held_out=held_out))
    card = ModelCard.load(checkpoint / "README.md")
    assert "| arc_easy_local | acc | 0.3100 | 0.25 |" in card.text and "Quick check only" in card.text
    assert "| held-out zh | bits_per_byte | 2.5000 | |" in card.text
    assert "model-index" not in card.data.to_dict()
    # a full run: model-index with the stock datasets, without the approximate HellaSwag rebuild
    write_card(checkpoint, evaluation=report(rows), name="alice/tiny")
    card = ModelCard.load(checkpoint / "README.md")
    results = {r.dataset_name: r for r in card.data.eval_results}
    assert set(results) == {"arc_easy", "cmmlu", "xcopa_zh"}
    arc = results["arc_easy"]
    assert (arc.dataset_type, arc.dataset_config, arc.dataset_split) == ("allenai/ai2_arc", "ARC-Easy", "test")
    assert (arc.metric_type, arc.metric_value) == ("acc", 0.31)
    assert results["xcopa_zh"].dataset_type == "cambridgeltl/xcopa" and results["cmmlu"].dataset_split == "test"
    assert card.data.model_name == "alice/tiny"
    assert "not comparable with published HellaSwag" in card.text and "Quick check only" not in card.text
    assert card.text.count("## Evaluation") == 1 and "| steps | 24 |" in card.text  # training kept
    assert card.text.rstrip().endswith("Keep me.")  # the author's text outside the sections survives


def test_the_card_says_what_each_held_out_number_was_measured_on(checkpoint):
    """Training's validation (the first rows of the run's own validation files) and eval/run.py's held-out rows
    (every _val file of the corpus) differ; a card showing both says which is which."""
    validation = {"zh": {"loss": 3.0, "bits_per_byte": 1.4112}, "en": {"loss": 2.0, "bits_per_byte": 1.8227}}
    held_out = {"zh": {"bits_per_byte": 2.9095, "perplexity": 600.0, "tokens": 1000, "bytes": 784_636}}
    write_card(checkpoint, training={"sources": [], "recipe": {"steps": 7}, "validation": validation})
    write_card(checkpoint, evaluation=report([("arc_easy_local", "acc", 0.31, 0.25)], held_out=held_out))
    text = ModelCard.load(checkpoint / "README.md").text
    assert (
        "Held-out validation at step 7, measured during training on the first rows of the run's own "
        "`--validation_files`" in text
    )
    assert "| held-out zh | bits_per_byte | 2.9095 | |" in text
    assert (
        "The held-out rows here are over 785 kB of zh from every `<corpus>/<lang>/*_val.jsonl` file, sources the "
        "model did not train on included; the training section's validation uses the first rows of the run's own "
        "`--validation_files`, so the two differ." in text
    )


def test_eval_run_adds_its_results_to_the_card(checkpoint):
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "eval" / "run.py"),
            str(checkpoint),
            "--tasks",
            "xcopa_zh_local",
            "--bpb_max_bytes",
            "5000",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = ModelCard.load(checkpoint / "README.md")
    [result] = card.data.eval_results  # the whole task ran: it goes into model-index
    value = json.loads((checkpoint / "eval_results.json").read_text())["lm_eval"]["results"]["xcopa_zh_local"]
    assert result.dataset_type == "cambridgeltl/xcopa" and result.metric_value == round(value["acc,none"], 4)
    assert "| xcopa_zh_local | acc |" in card.text and "| held-out en | perplexity |" in card.text


def test_train_clm_pushes_the_final_model_and_a_hub_user_loads_it(
    hub, data_tokenizer_dir, data_corpus_slices, tmp_path
):
    s, out = data_corpus_slices, tmp_path / "run"
    args = [
        "--config",
        str(REPO / "configs" / "tiny-cpu.yaml"),
        "--tokenizer_name",
        str(data_tokenizer_dir),
        "--train_files",
        f"zh={s['zh_reviews']}:0.5",
        f"en={s['en_reviews']}:0.5",
        "--validation_files",
        f"zh={s['zh_news']}",
        f"en={s['en_news']}",
        "--max_steps",
        "4",
        "--eval_steps",
        "4",
        "--save_steps",
        "4",
        "--logging_steps",
        "1",
        "--eval_rows",
        "8",
        "--preprocessing_num_workers",
        "1",
        "--output_dir",
        str(out),
        "--push_to_hub",
        "--hub_model_id",
        "alice/shuangyu-tiny",
    ]
    env = hub_env(hub, tmp_path)
    proc = subprocess.run(
        [sys.executable, str(REPO / "train_clm.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pushed to " in proc.stdout
    [commit] = hub.commits
    assert commit["summary"] == "train_clm.py: 4 steps, 8,192 tokens"
    files = hub.files("alice/shuangyu-tiny")
    expected = {
        "README.md",
        "config.json",
        "configuration_shuangyu.py",
        "modeling_shuangyu.py",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    assert expected <= set(files)
    assert any(name.startswith("runs/") and "tfevents" in name for name in files)  # tensorboard logs
    assert commit["lfs_files"][0] == "model.safetensors"  # weights through LFS, not inline
    assert files["model.safetensors"] == (out / "final" / "model.safetensors").read_bytes()
    config = json.loads(files["config.json"])
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_shuangyu.ShuangyuForCausalLM"
    card = files["README.md"].decode()
    assert 'from_pretrained("alice/shuangyu-tiny", trust_remote_code=True)' in card and "## Training" in card
    assert not hub.repos["alice/shuangyu-tiny"].private and not hub.unauthorized
    assert_no_token(proc.stdout, proc.stderr, *(f.decode("latin-1") for f in files.values()), folders=(out,))

    loaded = read_back("alice/shuangyu-tiny", out / "final", hub_env(hub, tmp_path, token=None))
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.strip() == "loaded ShuangyuForCausalLM 3"
    # the card's own snippet, copied as is by a Hub user, continues its prompt
    snippet = run_card_code(card, hub_env(hub, tmp_path, token=None))
    assert snippet.returncode == 0 and snippet.stdout.startswith("人工智能是"), snippet.stderr[-3000:]


def test_push_cli_to_a_private_repo_branch(hub, checkpoint, tiny_cpu_run, tmp_path):
    base = tmp_path / "base-run" / "final"  # as if fine-tuned from a local model: the pushed card must not say where
    write_card(checkpoint, training={"stage": "fine-tuning", "base_model": str(base), "recipe": {"model": str(base)}})
    proc = subprocess.run(
        [
            *PUSH,
            str(checkpoint),
            "--hub_model_id",
            "team/tiny-private",
            "--private",
            "--revision",
            "exp-1",
            "--logs",
            str(tiny_cpu_run / "shuangyu"),
            "--commit_message",
            "first try",
        ],
        env=hub_env(hub, tmp_path),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith(f"pushed {checkpoint} to {hub.url}/team/tiny-private/commit/")
    repo = hub.repos["team/tiny-private"]
    assert repo.private and repo.branches["main"] == {}  # everything went to the branch
    [commit] = hub.commits
    assert (commit["branch"], commit["summary"]) == ("exp-1", "first try")
    files = hub.files("team/tiny-private", "exp-1")
    assert "model.safetensors" in files and any(n.startswith("runs/") for n in files)
    assert 'from_pretrained("team/tiny-private"' in files["README.md"].decode()
    assert str(tmp_path) not in files["README.md"].decode() and "| model | base-run/final (a local folder) |" in (
        files["README.md"].decode()
    )
    assert f'from_pretrained("{tiny_cpu_run / "final"}"' in (checkpoint / "README.md").read_text()  # local copy kept
    assert_no_token(proc.stdout, proc.stderr)
    # private: a reader needs the token
    anonymous = read_back("team/tiny-private", checkpoint, hub_env(hub, tmp_path, token=None), revision="exp-1")
    assert anonymous.returncode != 0
    loaded = read_back("team/tiny-private", checkpoint, hub_env(hub, tmp_path), revision="exp-1")
    assert loaded.returncode == 0, loaded.stderr[-3000:]


def test_push_commit_message_names_the_model_not_its_final_folder(hub, tiny_cpu_run, tmp_path):
    """The default commit message said "Upload final": it names the model as a GGUF does, by its card's title, else
    by the run's folder."""
    titled = Path(shutil.copytree(tiny_cpu_run / "final", tmp_path / "copy" / "final"))
    (titled / "README.md").unlink()
    write_card(titled, name="bilingual-tiny")  # a card's title, as train_clm.py, DPO and merge_lora give it
    plain = Path(shutil.copytree(tiny_cpu_run / "final", tmp_path / "zh-en-run" / "final"))
    (plain / "README.md").unlink()  # no card: the run's folder names it
    for folder in (titled, plain):
        proc = subprocess.run(
            [*PUSH, str(folder), "--hub_model_id", "alice/named"],
            env=hub_env(hub, tmp_path), capture_output=True, text=True, cwd=REPO, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert [c["summary"] for c in hub.commits] == [
        "Upload bilingual-tiny with Shuangyu",
        "Upload zh-en-run with Shuangyu",
    ]


@pytest.mark.parametrize(
    "case", ["not_folder", "no_weights", "no_tokenizer", "no_token", "bad_repo_id", "wrong_token", "adapter"]
)
def test_push_bad_input_one_line(case, hub, checkpoint, tmp_path):
    folder, repo_id, env = checkpoint, "alice/tiny", hub_env(hub, tmp_path)
    if case == "adapter":  # a --lora_r run's final/: its adapter_config.json names the base by a local path
        folder = tmp_path / "adapter"
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(checkpoint), "r": 4}))
        (folder / "adapter_model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes())
        shutil.copy(checkpoint / "tokenizer.json", folder)
        needle = f"{folder} is a LoRA adapter (its base model is named by a local path): merge it into a model folder"
    elif case == "not_folder":
        folder, needle = tmp_path / "nope", "is not a folder"
    elif case == "no_weights":
        (checkpoint / "model.safetensors").unlink()
        needle = "has no *.safetensors weights"
    elif case == "no_tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (checkpoint / name).unlink()
        needle = "has no tokenizer"
    elif case == "no_token":
        env, needle = hub_env(hub, tmp_path, token=None), "no Hugging Face token: set HF_TOKEN"
    elif case == "bad_repo_id":
        repo_id, needle = "just-a-name", "give the owner too"
    else:
        env, needle = hub_env(hub, tmp_path, token="hf_wrong"), "reach alice/tiny: the Hub refused the token (401)"
    proc = subprocess.run(
        [*PUSH, str(folder), "--hub_model_id", repo_id], env=env, capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("push.py: error: ") and needle in lines[0], proc.stderr
    assert not hub.commits and not hub.repos  # refused before anything was sent
    assert_no_token(proc.stdout, proc.stderr)


@pytest.mark.parametrize(
    "license, extra, needle",
    [
        ("Apache 2.0", [], "--license 'Apache 2.0': not a Hub license id (lowercase, no spaces: apache-2.0, mit"),
        ("MIT", [], "--license 'MIT': not a Hub license id"),
        ("other", [], "--license other: say which license with --license_name NAME and --license_link URL"),
        ("mit", ["--license_name", "mine"], "--license_name and --license_link name a license the Hub does not list"),
        ("other", ["--license_name", "My License", "--license_link", "https://x.org/l"], "--license_name 'My License'"),
        ("other", ["--license_name", "mine", "--license_link", "LICENSE"], "--license_link 'LICENSE': neither a URL"),
    ],
)
def test_push_refuses_a_license_the_hub_would_refuse_before_anything_is_sent(license, extra, needle, tmp_path, capsys):
    """Any string went into the card's license, and the Hub refused it only at the push."""
    from shuangyu.sharing import push

    folder = tmp_path / "final"
    folder.mkdir()
    args = [str(folder), "--hub_model_id", "alice/tiny", "--license", license, *extra]
    assert push.main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"push.py: error: {needle}"), lines
    (folder / "LICENSE").write_text("The license's text.\n")
    for fine in (
        ["--license", "cc-by-nc-sa-4.0"],
        ["--license", "other", "--license_name", "x", "--license_link", "https://example.org/license"],
        ["--license", "other", "--license_name", "x", "--license_link", "LICENSE"],  # a file pushed with the model
    ):
        assert push.parse_args([str(folder), "--hub_model_id", "alice/tiny", *fine])


def test_a_pushed_card_names_another_license_by_name_and_link(tmp_path):
    from shuangyu.sharing.card import render_card

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\n---\n\nA card.\n")
    card = ModelCard(render_card(tmp_path, license="other", license_name="mine", license_link="LICENSE"))
    assert (card.data.license, card.data.license_name, card.data.license_link) == ("other", "mine", "LICENSE")
    (tmp_path / "README.md").write_text(str(card))
    assert "license_name" not in render_card(tmp_path, license="mit")  # the other license's name goes with it


@pytest.mark.parametrize("case", ["no_repo_id", "wrong_token", "lora"])
def test_train_clm_push_problems_stop_before_training(case, hub, data_tokenizer_dir, tmp_path):
    args = [
        "--tokenizer_name",
        str(data_tokenizer_dir),
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "2",
        "--push_to_hub",
    ]
    env = hub_env(hub, tmp_path)
    if case == "no_repo_id":
        needle = "--push_to_hub: give --hub_model_id USER/NAME"
    elif case == "lora":  # an adapter is not pushed (eval/push.py refuses it): said before training, not after
        args += ["--hub_model_id", "alice/tiny", "--lora_r", "4"]
        needle = "--push_to_hub with --lora_r: an adapter is not pushed"
    else:
        args += ["--hub_model_id", "alice/tiny"]
        env, needle = hub_env(hub, tmp_path, token="hf_wrong"), "reach alice/tiny: the Hub refused the token (401)"
    start = time.time()
    proc = subprocess.run(
        [sys.executable, str(REPO / "train_clm.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train_clm.py: error: ") and needle in lines[0], proc.stderr
    assert not (tmp_path / "out").exists() and time.time() - start < 60
