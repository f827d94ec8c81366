"""The weights a checkpoint writes: the shareable model folder (checkpoints/step-N/model/, then final/), and the
accelerate state's weights without a second name for a shared tensor."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from shuangyu.sharing.card import write_card
from shuangyu.tokenizer.loading import save_tokenizer


def drop_shared_tensors(models, weights, output_dir) -> None:
    """`accelerator.register_save_state_pre_hook`: keep one name of each tensor that several names share (a tied
    head *is* the embedding; a LoRA run's token rows for a tied head are the embedding's). safetensors refuses
    aliased tensors, so accelerate would drop the same later names itself and warn "Removed shared tensor" at
    every save. Loading restores them: the model is built tied again before its state is loaded."""
    import torch
    from accelerate.utils import id_tensor_storage

    for state_dict in weights:
        first = {}  # storage -> the first name holding it
        for key in list(state_dict):
            tensor = state_dict[key]
            if not isinstance(tensor, torch.Tensor):
                continue
            if first.setdefault((id_tensor_storage(tensor), tensor.shape), key) != key:
                del state_dict[key]


@contextmanager
def own_class(model):
    """FSDP2 gives a sharded model a class of its own, made in torch (FSDPShuangyuForCausalLM). save_pretrained
    copies the file defining the model's class into the folder, for trust_remote_code, and names that class in
    auto_map: under FSDP2 the folder held torch's FSDP code and loaded nothing. Save as the model's own class."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without FSDP2 has no such classes
        FSDPModule = ()  # noqa: N806
    sharded = type(model)
    if not FSDPModule or not issubclass(sharded, FSDPModule):
        yield
        return
    model.__class__ = next(c for c in sharded.__mro__ if not issubclass(c, FSDPModule))
    try:
        yield
    finally:
        model.__class__ = sharded  # training goes on sharded


def add_tied_head_token_rows(model, state_dict: dict, path: Path) -> None:
    """A LoRA adapter's trainable token rows (an SFT run's chat tokens) on a tied head are the embedding's: PEFT
    saves them once, under the embedding, and leaves the head's name to the loader. PEFT's loaders tie it again;
    transformers' (`AutoModelForCausalLM.from_pretrained(ADAPTER)`, `pipeline`) looks for the head's name in the
    file and, not finding it, printed a LOAD REPORT of the head's rows as MISSING, for weights that loaded right.
    So the adapter file holds them under the head's name too (the state dict's name, the one transformers loads);
    PEFT's loaders pass over it."""
    heads = [  # PEFT's wrapper on a tied head: its token adapter follows the embedding's (`tied_adapter`)
        f"{name}.token_adapter.trainable_tokens_delta."
        for name, module in model.named_modules()
        if getattr(getattr(module, "token_adapter", None), "tied_adapter", None) is not None
    ]
    rows = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items() if k.startswith(tuple(heads))}
    file = path / "adapter_model.safetensors"
    if not rows or not file.is_file():
        return
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(file, "pt") as f:
        metadata = f.metadata()
    save_file({**load_file(file), **rows}, file, metadata=metadata)


def save_model_folder(accelerator, model, tokenizer, path: Path, card: dict | None = None) -> None:
    """An HF folder anyone can load: weights (safetensors), config with auto_map and code, tokenizer, and
    the model card (README.md; `card` holds write_card's name, load_path and training). Collective: gathering
    a sharded model needs every rank; the main process writes."""
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
        # a compiled model's state dict names every tensor under torch.compile's wrapper (`_orig_mod.`); the
        # folder holds the model's own names, or nothing would load them
        state_dict = {name.removeprefix("_orig_mod."): tensor for name, tensor in state_dict.items()}
        if getattr(unwrapped.config, "tie_word_embeddings", False):
            # a tied head is the embedding: leave it out, as save_pretrained does when it gathers the weights
            # itself (given both, it drops one and warns "Removed shared tensor" at every save)
            tied = getattr(unwrapped, "_tied_weights_keys", None) or {}
            state_dict = {k: v for k, v in state_dict.items() if k not in tied}
        with own_class(unwrapped):
            unwrapped.save_pretrained(path, state_dict=state_dict, safe_serialization=True)
        add_tied_head_token_rows(unwrapped, state_dict, path)
        if (path / "adapter_config.json").is_file():
            # PEFT saves no generation config beside an adapter, and transformers and PEFT load one from the base
            # model's folder: a pretrained base stops at <|endoftext|> only, greedily. The adapter's own (an SFT
            # run's: stop at <|im_end|>, sample) travels in its folder, as a full model's does, for
            # GenerationConfig.from_pretrained(ADAPTER), as its card says
            unwrapped.generation_config.save_pretrained(path)
        save_tokenizer(tokenizer, path)
        write_card(path, **(card or {}))
