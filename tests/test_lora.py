"""LoRA: the adapter on the model's projections, its optimizer, targets that do not exist, and merging into a plain
folder with the same logits (in-process, no training loop: the end-to-end run is in test_sft_train.py)."""

import io
import json
import logging
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from shuangyu.chat.cli import load as load_for_chat
from shuangyu.errors import UsageError
from shuangyu.training.arguments import LoraArguments, OptimizerArguments
from shuangyu.training.finetune import adapter_optimizer, apply_lora, as_chat_model
from shuangyu.training.merge_lora import main as merge_main
from shuangyu.training.model_folder import save_model_folder


@pytest.fixture
def base(tiny_base_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_base_model_dir, trust_remote_code=True)


def test_the_adapter_covers_every_projection_and_freezes_the_rest(base):
    model = apply_lora(base, LoraArguments(lora_r=4), say=lambda _: None)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(f"{proj}.lora_A" in n for n in trainable), proj


def test_a_target_that_does_not_exist_is_named(base):
    with pytest.raises(UsageError, match="--lora_target_modules qkv: no such linear module"):
        apply_lora(base, LoraArguments(lora_r=4, lora_target_modules=["q_proj", "qkv"]))


def test_the_head_is_a_target_only_when_an_adapter_on_it_can_train_and_merge(base, tiny_base_model_dir, tmp_path):
    """An adapter on the tied head trained, then merge_lora failed (safetensors: shared tensors) after the run; on
    an untied head with the chat tokens' rows trainable (--sft), PEFT raised a TypeError as the run started."""
    from transformers import AutoModelForCausalLM

    assert base.get_output_embeddings().weight is base.get_input_embeddings().weight
    targets = LoraArguments(lora_r=4, lora_target_modules=["q_proj", "lm_head"])
    with pytest.raises(UsageError, match=r"^--lora_target_modules lm_head: this model's output head is its token"):
        apply_lora(base, targets, token_ids=(2, 3))
    untied = AutoModelForCausalLM.from_pretrained(
        untied_copy(tiny_base_model_dir, tmp_path / "u"), trust_remote_code=True
    )
    with pytest.raises(
        UsageError, match=r"^--lora_target_modules lm_head: this model's output head has its chat-token"
    ):
        apply_lora(untied, targets, token_ids=(2, 3))
    model = apply_lora(untied, targets, say=lambda _: None)  # no trainable tokens: an adapter of its own
    assert any("lm_head.lora_A" in n for n, p in model.named_parameters() if p.requires_grad)


def test_muon_falls_back_to_adamw_for_the_adapter():
    said = []
    assert adapter_optimizer(OptimizerArguments(optimizer="muon"), said.append).optimizer == "adamw"
    assert "AdamW" in said[0]
    assert adapter_optimizer(OptimizerArguments(optimizer="adamw"), said.append).optimizer == "adamw"


def untied_copy(folder, out):
    """The tiny base model with an output head of its own (as the `mini` preset has), saved to `out`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    config.tie_word_embeddings = False
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(config, trust_remote_code=True).save_pretrained(out)
    AutoTokenizer.from_pretrained(folder).save_pretrained(out)
    return out


@pytest.mark.parametrize("tied", [True, False])
def test_merged_folder_has_the_adapter_models_logits(tied, tiny_base_model_dir, tmp_path, capsys):
    from accelerate import Accelerator
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_base_model_dir if tied else untied_copy(tiny_base_model_dir, tmp_path / "untied")
    base = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    args = LoraArguments(lora_r=4, lora_target_modules=["all-linear"])
    with warnings.catch_warnings():  # no framework warning the user cannot act on (PEFT reading a deprecated alias)
        warnings.simplefilter("error", FutureWarning)
        model = apply_lora(base, args, say=lambda _: None, token_ids=(2, 3))  # and the chat tokens' embeddings
    with torch.no_grad():  # a trained-looking adapter: B and the token deltas are zero at initialisation
        for name, p in model.named_parameters():
            if "lora_B" in name or "trainable_tokens_delta" in name:
                p.normal_(0, 0.05)
    tok = AutoTokenizer.from_pretrained(folder)
    as_chat_model(model, tok)
    adapter = tmp_path / "adapter"
    save_model_folder(Accelerator(cpu=True), model, tok, adapter)  # as a run writes its final/
    assert (adapter / "adapter_model.safetensors").is_file()
    # transformers loads an adapter folder itself too (so does pipeline("text-generation", model=ADAPTER)): on a
    # tied head it printed a LOAD REPORT of the head's token rows as MISSING, for weights that loaded right
    heard = io.StringIO()  # its logger does not propagate, and its handler holds whichever stderr it first met
    handler = logging.StreamHandler(heard)
    logging.getLogger("transformers").addHandler(handler)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(adapter, trust_remote_code=True).eval()
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert "MISSING" not in heard.getvalue() and "LOAD REPORT" not in heard.getvalue()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert merge_main([str(adapter), str(tmp_path / "merged")]) == 0
        chat_model, _ = load_for_chat(adapter, "cpu")  # as `python -m shuangyu.chat ADAPTER_FOLDER` loads it
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", trust_remote_code=True).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())  # a plain model: no PEFT needed
    reloaded = AutoPeftModelForCausalLM.from_pretrained(adapter, trust_remote_code=True).eval()
    ids = torch.randint(4, 250, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, reloaded(ids).logits, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(chat_model(ids).logits, reloaded(ids).logits, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(loaded(ids).logits, merged(ids).logits, atol=1e-5, rtol=1e-4)
        plain = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
        assert not torch.allclose(merged(ids).logits, plain(ids).logits, atol=1e-3)  # the adapter is in it
        for layer in ("input", "output"):  # an untied head learns the chat tokens' rows too
            weight = {m: getattr(m, f"get_{layer}_embeddings")().weight for m in (merged, plain)}
            changed = (weight[merged] != weight[plain]).any(-1)
            assert changed.nonzero().flatten().tolist() == [2, 3]  # the chat tokens' rows, and no other
        assert (merged.lm_head.weight is merged.get_input_embeddings().weight) == tied
    generation = json.loads((tmp_path / "merged" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [0, 3] and generation["do_sample"] is True
    # the adapter's tokenizer was loaded and saved plainly (it records is_local, local_files_only); the merged one not
    tokenizer_config = json.loads((tmp_path / "merged" / "tokenizer_config.json").read_text())
    assert "local_files_only" not in tokenizer_config and "is_local" not in tokenizer_config
    assert merge_main([str(adapter), str(tmp_path / "merged")]) == 2  # exists: not replaced silently
    assert "--overwrite" in capsys.readouterr().err
    assert merge_main([str(adapter), str(tmp_path), "--overwrite"]) == 2  # would delete the adapter with the rest
    assert "is or holds the adapter" in capsys.readouterr().err and (adapter / "adapter_config.json").is_file()
    assert merge_main([str(tmp_path), str(tmp_path / "x")]) == 2  # not an adapter folder


def test_an_sft_adapter_folder_stops_at_im_end_in_transformers(base, tiny_base_model_dir, tmp_path):
    """The QA repro: a LoRA SFT run's final/ had no generation_config.json (a full SFT folder has one), so nothing
    outside `python -m shuangyu.chat` could stop its replies at <|im_end|>: transformers and PEFT load the base
    model's, which stops at <|endoftext|> only. The folder holds the adapter's, and the card's line loads it."""
    from accelerate import Accelerator
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, pipeline

    tok = AutoTokenizer.from_pretrained(tiny_base_model_dir)
    as_chat_model(base, tok)  # as train_clm.py --sft --lora_r does: the chat generation config, then the adapter
    model = apply_lora(base, LoraArguments(lora_r=4), say=lambda _: None, token_ids=(2, 3))
    adapter = tmp_path / "adapter"
    save_model_folder(Accelerator(cpu=True), model, tok, adapter)  # as a run writes its final/ and checkpoints
    generation = GenerationConfig.from_pretrained(adapter)
    assert generation.eos_token_id == [0, 3] and generation.do_sample is True  # 3: <|im_end|>
    card = (adapter / "README.md").read_text()
    assert f'model.generation_config = GenerationConfig.from_pretrained("{adapter}")' in card
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt"
    )
    prompt = getattr(prompt, "input_ids", prompt)
    # a model whose next token is <|im_end|> (an untrained one would rarely say it): the reply is that token alone
    ends = {"sequence_bias": {(3,): 30.0}, "max_new_tokens": 8}
    for loaded in (
        AutoModelForCausalLM.from_pretrained(adapter, trust_remote_code=True),
        AutoPeftModelForCausalLM.from_pretrained(adapter, trust_remote_code=True),
    ):
        loaded.generation_config = GenerationConfig.from_pretrained(adapter)  # the card's line
        out = loaded.eval().generate(prompt, **ends)
        assert out[0, prompt.shape[1] :].tolist() == [3], out
    chat = pipeline("text-generation", model=str(adapter), trust_remote_code=True)
    generation = GenerationConfig.from_pretrained(adapter, **ends)
    ids = chat([{"role": "user", "content": "hi"}], generation_config=generation, return_tensors=True)[0]
    assert ids["generated_token_ids"][-2:] == [prompt[0, -1].item(), 3], ids  # the prompt, then one <|im_end|>, not 8


RECORDS = {  # what each kind of run records for its card (the sources' shape tells the table apart)
    "sft": [{"name": "zh", "files": ["zh.jsonl"], "conversations": 60, "truncated": 0, "skipped": 0,
             "trained_tokens": 900}],
    "dpo": [{"name": "preference", "files": ["p.jsonl"], "pairs": 9, "left_out": 2, "cut": 3, "used": 7}],
    "fine-tuning": [{"name": "zh", "files": ["zh.jsonl"], "weight": 1.0, "docs_taken": 5, "tokens_taken": 800,
                     "passes": 1}],
}  # fmt: skip
SAYS = {  # (the adapter's card, the merged model's card, the limitations of both)
    "sft": ("instruction-tuned (SFT) on the conversations listed below",
            "instruction-tuned with Shuangyu by supervised fine-tuning on the conversations listed below",
            "instruction-tuned on the conversations listed above"),
    "dpo": ("preference-tuned (DPO) on the pairs listed below",
            "preference-tuned with Shuangyu by DPO on the pairs listed below",
            "preference-tuned (DPO) on the pairs listed above"),
    "fine-tuning": ("trained on the data listed below", "base language model", "trained further on the data listed"),
}  # fmt: skip


@pytest.mark.parametrize("stage", ["sft", "dpo", "fine-tuning"])
def test_the_merged_card_keeps_the_adapters_stage(stage, base, tiny_base_model_dir, tmp_path):
    """A merged DPO adapter is a DPO model, a merged SFT one an SFT model; each card says what it lists."""
    from transformers import AutoTokenizer

    from shuangyu.sharing.card import card_stage, write_card

    model = apply_lora(base, LoraArguments(lora_r=4), say=lambda _: None)
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(tiny_base_model_dir).save_pretrained(adapter)
    training = {"stage": stage, "base_model": str(tiny_base_model_dir), "sources": RECORDS[stage]}
    write_card(adapter, name="adapter", training=training)
    assert merge_main([str(adapter), str(tmp_path / "merged")]) == 0
    cards = [(folder / "README.md").read_text() for folder in (adapter, tmp_path / "merged")]
    for card, opening in zip(cards, SAYS[stage][:2], strict=True):
        assert opening in card and SAYS[stage][2] in card, card
        assert "pretrained from scratch" not in card and "and nothing else" not in card
        if stage != "sft":
            assert "conversations listed" not in card and "supervised" not in card
        if stage != "dpo":
            assert "pairs listed" not in card and "DPO" not in card
    assert f"trained further from `{tiny_base_model_dir}`" in cards[1] or stage != "fine-tuning"
    assert cards[1].count("| preference | `p.jsonl` | 9 | 2 | 3 | 7 |") == (stage == "dpo")  # the adapter's record
    assert card_stage(tmp_path / "merged") == stage
    # eval/run.py refuses an adapter: its card says to evaluate it merged; the merged model's, to evaluate it
    assert "`python eval/run.py MERGED --tasks ...`" in cards[0] and "merge_lora FOLDER MERGED" in cards[0]
    assert "`python eval/run.py FOLDER --tasks ...` adds the results here" in cards[1]
    if stage == "dpo":  # a card written before the stage was a tag: its training section says DPO
        old = (adapter / "README.md").read_text().replace("- dpo\n", "")
        (adapter / "README.md").write_text(old)
        assert "- dpo\n" not in old and card_stage(adapter) == "dpo"


def test_lora_is_refused_under_deepspeed():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from shuangyu.training.finetune import check_lora_launch

    deepspeed = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED)
    with pytest.raises(UsageError, match="--lora_r under DeepSpeed"):
        check_lora_launch(deepspeed, LoraArguments(lora_r=8))
    check_lora_launch(deepspeed, LoraArguments(lora_r=0))
    check_lora_launch(SimpleNamespace(distributed_type=DistributedType.MULTI_GPU), LoraArguments(lora_r=8))


def test_a_base_model_that_is_not_there_is_named_in_one_line(tmp_path, capsys):
    """The adapter names its base by the path it was trained from; an explicit --base_model that is no folder was
    sent to the Hub as a repo id (its error about repo id forms)."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/x/final"}))
    assert merge_main([str(adapter), str(tmp_path / "merged")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"python -m shuangyu.training.merge_lora: error: {adapter / 'adapter_config.json'}: the base model /x/final "
        "is not there; pass --base_model"
    ]
    assert merge_main([str(adapter), str(tmp_path / "merged"), "--base_model", "/x/moved"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "python -m shuangyu.training.merge_lora: error: --base_model /x/moved: no such folder"
    ]
    assert not (tmp_path / "merged").exists()


def test_merge_overwrite_never_replaces_the_base_model_or_a_run(tiny_base_model_dir, tmp_path, capsys):
    """`merge_lora ADAPTER BASE --overwrite` replaced the adapter's own base model with the merged one, and
    `merge_lora ADAPTER BASE_RUN --overwrite` deleted the whole pretraining run (checkpoints, data, log)."""
    run = tmp_path / "base-run"
    shutil.copytree(tiny_base_model_dir, run / "final")
    (run / "checkpoints").mkdir()
    (run / "train_log.jsonl").write_text("{}\n")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "adapter"
    model = AutoModelForCausalLM.from_pretrained(run / "final", trust_remote_code=True)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(run / "final")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    for out in (run / "final", run):
        assert merge_main([str(adapter), str(out), "--overwrite"]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and f"is or holds the base model {run / 'final'}" in err[0], err
    other = tmp_path / "notes"  # a folder of other files is not an earlier merged output
    other.mkdir()
    (other / "todo.txt").write_text("x")
    assert merge_main([str(adapter), str(other), "--overwrite"]) == 2
    assert "holds other files (todo.txt) and no config.json" in capsys.readouterr().err
    assert (
        sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.parent != other and p != other) == before
    )


def test_an_adapter_records_its_local_base_by_an_absolute_path(tiny_base_model_dir, tmp_path, monkeypatch, capsys):
    """The QA repro: an adapter trained with --model_name_or_path outputs/tiny-cpu/final recorded that relative path,
    and chat and merge_lora from any other folder sent it to the Hub as a repo id."""
    from shuangyu.sharing.folder import adapter_base
    from shuangyu.training.arguments import ModelArguments
    from shuangyu.training.model import build_model

    monkeypatch.chdir(tiny_base_model_dir.parent.parent)
    relative = str(tiny_base_model_dir.relative_to(tiny_base_model_dir.parent.parent))
    model = build_model(ModelArguments(model_name_or_path=relative), None)
    assert model.config._name_or_path == str(tiny_base_model_dir.resolve())  # what PEFT writes as the base
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "outputs/tiny-cpu/final"}))
    with pytest.raises(UsageError) as err:  # an old adapter's relative base: a moved folder, not a Hub repo id
        adapter_base(adapter, None)
    assert str(err.value) == (
        f"{adapter / 'adapter_config.json'}: the base model outputs/tiny-cpu/final is not there (relative to "
        f"{Path.cwd()}); pass --base_model"
    )


def test_training_on_an_adapter_folder_says_to_merge_it_first(tmp_path):
    """--model_name_or_path ADAPTER was transformers' "Unrecognized model ... should have a model_type key"."""
    from shuangyu.training.arguments import ModelArguments
    from shuangyu.training.model import build_config

    adapter = tmp_path / "final"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/x/final"}))
    with pytest.raises(UsageError, match=rf"^--model_name_or_path {adapter} is a LoRA adapter: merge it first"):
        build_config(ModelArguments(model_name_or_path=str(adapter)), tokenizer=None, block_size=None)
