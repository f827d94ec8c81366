"""What a fine-tuning run changes in the set-up: a chat model's tokenizer and stop tokens (`--sft`), and the LoRA
adapter (`--lora_r`). The loop, optimizer, checkpoints and resume are pretraining's (train.py), unchanged.

Which optimizer trains a LoRA adapter: AdamW, always. Muon orthogonalises each whole weight matrix's update; the
adapter's A (r x in) and B (out x r) factors are thin matrices whose product is the update, and orthogonalising
each factor separately neither orthogonalises nor bounds the product (B starts at zero, so its first Muon steps
are normalised noise at full scale). LoRA's own recipe, and every PEFT tool, use AdamW; so `--optimizer muon` with
`--lora_r` falls back to AdamW for the adapter, and says so.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from shuangyu.errors import UsageError
from shuangyu.library_warnings import reading_the_old_checkpointing_name
from shuangyu.tokenizer.chat_template import chat_generation, check_chat_tokenizer, for_chat_model
from shuangyu.training.arguments import LoraArguments, OptimizerArguments, TrainConfig

if TYPE_CHECKING:  # torch is imported where it is used: dpo.py imports this file, and --help should not wait for it
    from torch import nn


def check_finetune(config: TrainConfig, tokenizer, model_config) -> None:
    """Flags a fine-tuning run cannot do without, checked before any heavy work (the LoRA targets on an empty
    model of the same config)."""
    if config.sft.sft:
        if not config.model.model_name_or_path:
            raise UsageError(
                "--sft fine-tunes a trained model: give --model_name_or_path (a checkpoint's model/ folder)"
            )
        name = config.model.tokenizer_name
        # without --tokenizer_name the model folder's own tokenizer is used: name the flag the user gave
        flag = "--model_name_or_path" if name == config.model.model_name_or_path else "--tokenizer_name"
        check_chat_tokenizer(tokenizer, name, flag)
    lora = config.lora
    if lora.lora_r < 0:
        raise UsageError(f"--lora_r {lora.lora_r} must be positive (0: no LoRA)")
    if lora.lora_r and not config.model.model_name_or_path:
        raise UsageError("--lora_r adapts a trained model: give --model_name_or_path")
    if lora.lora_r and not 0 <= lora.lora_dropout < 1:
        raise UsageError(f"--lora_dropout {lora.lora_dropout} must be in [0, 1)")
    if lora.lora_r:
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            lora_config(AutoModelForCausalLM.from_config(model_config, trust_remote_code=True), lora)


def as_chat_model(model, tokenizer) -> None:
    """An SFT run's model and tokenizer save as a chat model: the chat template, split_special_tokens=False for tools
    that tokenize the template (shuangyu.tokenizer.chat_template), and generation that stops at <|im_end|> and samples."""
    for_chat_model(tokenizer)
    chat_generation(model.generation_config, tokenizer)


def linear_module_names(model: nn.Module) -> set[str]:
    from torch import nn

    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}


def trainable_token_rows(model: nn.Module, token_ids: tuple[int, ...]) -> list[int] | dict[str, list[int]] | None:
    """PEFT's `trainable_token_indices` for `token_ids`: the input embedding's rows, which a tied head follows; an
    untied head (the `mini` preset's) gets the same rows of its own, or it would keep predicting the chat tokens
    with rows pretraining only ever pushed down."""
    if not token_ids:
        return None
    head = model.get_output_embeddings()
    if head is None or head.weight is model.get_input_embeddings().weight:
        return list(token_ids)
    names = {id(module): name.rsplit(".", 1)[-1] for name, module in model.named_modules()}
    return {names[id(model.get_input_embeddings())]: list(token_ids), names[id(head)]: list(token_ids)}


def lora_config(model, lora_args: LoraArguments, token_ids: tuple[int, ...] = ()):
    """PEFT's LoraConfig for the flags, after checking that every target module exists in the model; `token_ids`:
    embedding (and head) rows trained too (PEFT's trainable tokens)."""
    from peft import LoraConfig

    targets = list(lora_args.lora_target_modules)
    if targets != ["all-linear"]:
        known = linear_module_names(model)
        missing = [t for t in targets if t not in known]
        if missing:
            raise UsageError(
                f"--lora_target_modules {','.join(missing)}: no such linear module in the model "
                f"(it has {', '.join(sorted(known))})"
            )
        head = model.get_output_embeddings()
        head_name = next((n.rsplit(".", 1)[-1] for n, module in model.named_modules() if module is head), None)
        tied = head is not None and head.weight is model.get_input_embeddings().weight
        # each found late, PEFT's own way: it adapts a tied head apart from the embedding it shares a tensor with
        # (merge_lora then cannot save the shared tensors), and refuses an adapter on a layer whose rows are
        # trainable tokens (an SFT run's chat tokens, on an untied head)
        if head_name in targets and (tied or token_ids):
            why = (
                "is its token embedding (tie_word_embeddings), which an adapter cannot change apart"
                if tied
                else "has its chat-token rows trained already (--sft's trainable tokens), which PEFT cannot join"
            )
            raise UsageError(f"--lora_target_modules {head_name}: this model's output head {why}; leave it out")
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=lora_args.lora_r,
        lora_alpha=lora_args.lora_alpha,
        lora_dropout=lora_args.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        trainable_token_indices=trainable_token_rows(model, token_ids),
    )


def apply_lora(model, lora_args: LoraArguments, say=print, token_ids: tuple[int, ...] = ()):
    """The model wrapped by PEFT with a LoRA adapter on `lora_target_modules`, and the embeddings of `token_ids`
    trainable; every other weight frozen.

    An SFT run passes the chat tokens: a base model never saw <|im_start|> or <|im_end|> in pretraining, so their
    embeddings are still the random ones it started with, and a frozen random <|im_end|> (in the head too, tied or
    not) would leave the adapter hard put to learn to end a reply."""
    from peft import get_peft_model

    with reading_the_old_checkpointing_name():
        model = get_peft_model(model, lora_config(model, lora_args, token_ids))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    say(f"LoRA r={lora_args.lora_r}: training {trainable:,} of {total:,} parameters ({trainable / total:.2%})")
    return model


def adapter_optimizer(optim_args: OptimizerArguments, say=print) -> OptimizerArguments:
    """AdamW for a LoRA adapter (the module doc says why)."""
    if optim_args.optimizer == "muon":
        say(
            "note: --lora_r trains the adapter with AdamW, not Muon (Muon orthogonalises whole matrices, not A/B factors)"
        )
        return dataclasses.replace(optim_args, optimizer="adamw")
    return optim_args


def check_lora_launch(accelerator, lora_args: LoraArguments) -> None:
    from accelerate.utils import DistributedType

    if lora_args.lora_r and accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise UsageError(
            "--lora_r under DeepSpeed is not supported here (saving a PEFT adapter from a ZeRO engine is untested): "
            "use accelerate_configs/multi_gpu.yaml or fsdp2.yaml, or train without --lora_r"
        )
