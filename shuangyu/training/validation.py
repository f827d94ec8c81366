"""Validation during training: held-out loss and bits per byte per validation source, over every process, and
greedy samples from fixed prompts so successive evaluations can be compared by eye."""

from __future__ import annotations

import torch

from shuangyu.data.loader import IGNORE_INDEX
from shuangyu.evaluation.bits_per_byte import HeldOutLoss
from shuangyu.tokenizer.chat_template import encode_chat, stop_token_ids

SAMPLE_PROMPTS = {"zh": "今天天气很好，我们", "en": "Once upon a time, there was a"}
SAMPLE_QUESTIONS = {"zh": "给出三个保持健康的秘诀。", "en": "Give three tips for staying healthy."}  # chat models


@torch.no_grad()
def evaluate(model, shards: dict, byte_lengths: torch.Tensor, accelerator) -> dict:
    """{source name: {"loss": mean per token, "bits_per_byte": ...}} over each source's validation rows, every
    predicted token counted once, whatever the number of processes (`shards`: this process's ValidationShard
    per source). Names are whatever the user gave (paths included): they are keys, never parsed."""
    model.eval()
    results = {}
    for name, shard in shards.items():
        meter = HeldOutLoss(byte_lengths, accelerator.device)
        for batch, real_rows in shard.batches():
            batch = {key: value.to(accelerator.device) for key, value in batch.items()}
            labels = batch.get("labels", batch["input_ids"])
            if real_rows < len(labels):  # the padding rows that keep processes in step: scored nothing
                labels = labels.clone()
                labels[real_rows:] = IGNORE_INDEX
            meter.add(model, batch["input_ids"], labels, batch.get("position_ids"))
        scores = meter.reduce(lambda t: accelerator.reduce(t, "sum")).result()
        results[name] = {"loss": scores["loss"], "bits_per_byte": scores["bits_per_byte"]}
    model.train()
    return results


@torch.no_grad()
def generate_samples(model, tokenizer, device, max_new_tokens: int = 32, chat: bool = False) -> dict[str, str]:
    """Greedy continuations of the fixed prompts (on the unwrapped model); `chat`: replies to fixed questions in
    the chat format, up to <|im_end|>."""
    model.eval()
    samples = {}
    for lang in SAMPLE_PROMPTS:
        if chat:
            prompt = encode_chat(tokenizer, [{"role": "user", "content": SAMPLE_QUESTIONS[lang]}], True)[0]
        else:
            prompt = tokenizer(SAMPLE_PROMPTS[lang]).input_ids
        # within the model's context: past it transformers warns at every validation (a planned model's context can
        # be as short as its training blocks)
        room = model.config.max_position_embeddings - len(prompt)
        if room <= 0:
            continue
        ids = torch.tensor([prompt], device=device)
        out = model.generate(
            input_ids=ids,
            max_new_tokens=min(max_new_tokens, room),
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=stop_token_ids(tokenizer) if chat else None,
        )
        samples[lang] = tokenizer.decode(out[0][ids.shape[1] :] if chat else out[0], skip_special_tokens=False)
    model.train()
    return samples


def validation_logs(results: dict, samples: dict) -> dict:
    """Flat tracker keys: eval/NAME/loss, eval/NAME/bits_per_byte, samples/LANG."""
    logs = {f"eval/{name}/{metric}": value for name, scores in results.items() for metric, value in scores.items()}
    return logs | {f"samples/{lang}": text for lang, text in samples.items()}


def format_validation(step: int, results: dict, samples: dict) -> str:
    """One line: loss and bits per byte per source, then the samples."""
    scores = ", ".join(
        f"{name} loss {s['loss']:.3f} ({s['bits_per_byte']:.3f} bits/byte)" for name, s in results.items()
    )
    return f"step {step} validation: {scores}" + "".join(f"\n  {lang}: {text!r}" for lang, text in samples.items())
