"""Samples of a saved model for fixed prompts: greedy (repeatable, and honest about repetition) and sampled with
`python -m shuangyu.chat`'s defaults and a fixed seed (what a user talking to it sees)."""

from __future__ import annotations

from pathlib import Path

from shuangyu.tokenizer.chat_template import CHAT_SAMPLING

PROMPTS = {
    "zh": ["今天天气很好，我们", "中国的首都是"],
    "en": ["Once upon a time, there was a", "The capital of France is"],
}
QUESTIONS = {"zh": ["给出三个保持健康的秘诀。"], "en": ["Give three tips for staying healthy."]}  # chat models
# the chat command's sampling, with transformers' own repetition penalty (the command's own spares the byte pieces
# of rare Chinese characters, which transformers' can garble; a report's short samples rarely meet one)
SAMPLING = CHAT_SAMPLING | {"repetition_penalty": 1.1}


def generate_samples(folder: Path, chat: bool, max_new_tokens: int = 48, seed: int = 0) -> list[dict]:
    """[{lang, prompt, greedy, sampled}] for a model folder (a chat folder answers the fixed questions)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shuangyu.tokenizer.chat_template import encode_chat, stop_token_ids

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        # PEFT's own loader, as chat and merge_lora use: transformers' loading of an adapter folder misses the
        # adapter's trainable-token weights on a tied head and initialises them anew
        from shuangyu.sharing.folder import load_adapter_model

        model = load_adapter_model(folder)[0]
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    rows = []
    for lang, prompts in (QUESTIONS if chat else PROMPTS).items():
        for prompt in prompts:
            if chat:
                ids = encode_chat(tokenizer, [{"role": "user", "content": prompt}], True)[0]
            else:
                ids = tokenizer(prompt, add_special_tokens=False).input_ids
            ids = torch.tensor([ids])
            row = {"lang": lang, "prompt": prompt}
            for kind, options in (("greedy", {"do_sample": False}), ("sampled", SAMPLING)):
                torch.manual_seed(seed)
                with torch.no_grad():
                    out = model.generate(
                        input_ids=ids,
                        attention_mask=torch.ones_like(ids),
                        max_new_tokens=max_new_tokens,
                        pad_token_id=tokenizer.pad_token_id,
                        eos_token_id=stop_token_ids(tokenizer) if chat else tokenizer.eos_token_id,
                        **options,
                    )
                # decoded whole, then the prompt cut off: decoding the new tokens alone drops a leading space
                full = tokenizer.decode(out[0], skip_special_tokens=True)
                row[kind] = full[len(tokenizer.decode(ids[0], skip_special_tokens=True)) :]
            rows.append(row)
    return rows
