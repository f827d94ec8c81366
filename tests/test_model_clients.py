"""What people run on a transformers model, run on ours with a real tokenizer: pipeline, TextStreamer, left-padded
batches, device_map="auto", dtype and attention at load time, resize_token_embeddings, and PEFT LoRA."""

import pytest
import torch
from test_model_support import PAD_ID, VOCAB_SIZE, model_folder
from transformers import AutoModelForCausalLM, AutoTokenizer

from shuangyu.modeling import PEFT_TARGET_MODULES, ShuangyuForCausalLM

PROMPTS = ["双语模型可以", "The model was trained on", "今天的新闻：国务院", "It's a small"]


@pytest.fixture
def folder(tmp_path):
    # A wide init so an untrained model's greedy text varies (at 0.02 it repeats one token).
    path, _ = model_folder(tmp_path / "model", initializer_range=0.3)
    return path


def load(folder, **kwargs) -> ShuangyuForCausalLM:
    return AutoModelForCausalLM.from_pretrained(folder, **kwargs).eval()


def greedy(model, input_ids, n=10, **kwargs):
    return model.generate(input_ids, max_new_tokens=n, do_sample=False, pad_token_id=PAD_ID, **kwargs)


def test_text_generation_pipeline(folder):
    from transformers import pipeline

    generate = pipeline("text-generation", model=str(folder), tokenizer=str(folder))
    assert isinstance(generate.model, ShuangyuForCausalLM)
    tok, model = AutoTokenizer.from_pretrained(folder), load(folder)
    for prompt in PROMPTS[:2]:
        text = generate(prompt, max_new_tokens=10, do_sample=False)[0]["generated_text"]
        ids = tok(prompt, return_tensors="pt").input_ids
        expected = prompt + tok.decode(greedy(model, ids)[0, ids.shape[1] :])
        assert text == expected and len(text) > len(prompt)


def test_text_streamer_prints_the_generated_text(folder, capsys):
    from transformers import TextStreamer

    tok, model = AutoTokenizer.from_pretrained(folder), load(folder)
    ids = tok(PROMPTS[0], return_tensors="pt").input_ids
    capsys.readouterr()
    out = greedy(model, ids, n=12, streamer=TextStreamer(tok, skip_prompt=True))
    printed = capsys.readouterr().out
    assert printed == tok.decode(out[0, ids.shape[1] :]) + "\n"


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_left_padded_batch_generates_what_each_prompt_does_alone(folder, attn):
    tok, model = AutoTokenizer.from_pretrained(folder, padding_side="left"), load(folder, attn_implementation=attn)
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    lengths = batch.attention_mask.sum(1)
    assert len(set(lengths.tolist())) > 1 and (batch.input_ids[:, 0] == PAD_ID).any()  # really padded
    together = greedy(model, batch.input_ids, attention_mask=batch.attention_mask)
    width = batch.input_ids.shape[1]
    for i, prompt in enumerate(PROMPTS):
        alone = tok(prompt, return_tensors="pt")
        single = greedy(model, alone.input_ids, attention_mask=alone.attention_mask)
        assert together[i, width:].tolist() == single[0, alone.input_ids.shape[1] :].tolist(), prompt


def test_device_map_auto_loads_and_matches(folder):
    model, placed = load(folder), load(folder, device_map="auto")
    assert placed.device.type == "cpu"  # the only device here; Llama loads the same way
    assert placed.lm_head.weight.data_ptr() == placed.model.embed_tokens.weight.data_ptr()
    x = torch.randint(0, VOCAB_SIZE, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(placed(x).logits, model(x).logits, rtol=0, atol=0)


def test_dtype_and_attention_chosen_at_load_time(folder):
    x = torch.randint(0, VOCAB_SIZE, (2, 16), generator=torch.Generator().manual_seed(0))
    reference = load(folder)
    half = load(folder, dtype=torch.bfloat16, attn_implementation="eager")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert half.config._attn_implementation == "eager" and reference.config._attn_implementation == "sdpa"
    with torch.no_grad():
        ref, got = reference(x).logits, half(x).logits
    assert got.dtype == torch.bfloat16
    assert (got.float() - ref).abs().max() < 0.1 * ref.abs().max()
    half.save_pretrained(folder / "bf16")
    assert {p.dtype for p in load(folder / "bf16", dtype="auto").parameters()} == {torch.bfloat16}


def test_resize_token_embeddings_keeps_the_old_rows_and_the_tie(folder, tmp_path):
    model = load(folder)
    x = torch.randint(0, VOCAB_SIZE, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(x).logits
    model.resize_token_embeddings(VOCAB_SIZE + 5, pad_to_multiple_of=64)
    assert model.config.vocab_size == VOCAB_SIZE + 64 == model.get_input_embeddings().weight.shape[0]
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        after = model(x).logits
    assert after.shape[-1] == VOCAB_SIZE + 64
    torch.testing.assert_close(after[..., :VOCAB_SIZE], before, rtol=0, atol=1e-6)
    model.save_pretrained(tmp_path / "resized")
    with torch.no_grad():
        torch.testing.assert_close(load(tmp_path / "resized")(x).logits, after, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------- PEFT
def lora_targets(peft_model) -> set[str]:
    return {name.split(".")[-1] for name, module in peft_model.named_modules() if hasattr(module, "lora_A")}


def test_lora_default_config_trains_saves_reloads_and_merges(folder, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    x = torch.randint(0, VOCAB_SIZE, (4, 24), generator=torch.Generator().manual_seed(3))
    base_logits = load(folder)(x).logits.detach()
    lora = get_peft_model(load(folder), LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8))  # no target_modules
    assert lora_targets(lora) == set(PEFT_TARGET_MODULES)
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    lora.train()
    opt = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        loss = lora(input_ids=x, labels=x, return_logits=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    lora.eval()
    with torch.no_grad():
        tuned = lora(input_ids=x).logits
    assert (tuned - base_logits).abs().max() > 1e-3  # the adapter does something

    lora.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(load(folder), tmp_path / "adapter").eval()
    assert set(reloaded.peft_config["default"].target_modules) == set(PEFT_TARGET_MODULES)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=x).logits, tuned, rtol=0, atol=0)
    merged = reloaded.merge_and_unload()  # W + BA folded into the base weights: equal up to rounding
    assert type(merged) is ShuangyuForCausalLM and not lora_targets(merged)
    with torch.no_grad():
        difference = (merged(input_ids=x).logits - tuned).abs().max()
    assert difference <= 1e-5 * tuned.abs().max()


def test_lora_all_linear_and_named_modules(folder):
    from peft import LoraConfig, get_peft_model

    all_linear = get_peft_model(load(folder), LoraConfig(target_modules="all-linear", r=2))
    assert lora_targets(all_linear) == set(PEFT_TARGET_MODULES)  # every projection, not lm_head
    named = get_peft_model(load(folder), LoraConfig(target_modules=["q_proj", "v_proj"], r=2))
    assert lora_targets(named) == {"q_proj", "v_proj"}
