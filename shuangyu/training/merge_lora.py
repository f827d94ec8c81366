"""Merge a LoRA adapter (a `--lora_r` run's checkpoint model/ or final/ folder) into a full model folder that loads
without PEFT, with the same logits as the adapter on its base model.

    python -m shuangyu.training.merge_lora outputs/sft-lora/final outputs/sft-lora-merged [--base_model DIR]

The base model is the one the adapter names (adapter_config.json's base_model_name_or_path), or `--base_model`.
The merged folder gets the adapter folder's tokenizer (with the chat template), generation that stops at
<|im_end|> when the tokenizer is a chat one, and a model card; it is written whole or not at all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shuangyu.errors import UsageError, ctrl_c_is_one_line, print_error, refuse_in_one_line
from shuangyu.files import atomic_folder, check_holds_no_input, check_replaceable, check_writable_folder
from shuangyu.progress import bars_only_on_a_terminal
from shuangyu.sharing.card import card_stage, copy_section, write_card
from shuangyu.sharing.folder import load_adapter_model
from shuangyu.tokenizer.chat_template import chat_generation, chat_token_ids, for_chat_model
from shuangyu.tokenizer.loading import carries_own_code, save_tokenizer

PROG = "python -m shuangyu.training.merge_lora"


def merge(adapter_dir: Path, out: Path, base_model: str | None = None, overwrite: bool = False) -> Path:
    from transformers import AutoTokenizer

    check_writable_folder(out, "OUTPUT")  # before the model is loaded and merged
    check_holds_no_input(out, [("the adapter", adapter_dir)])
    model, base = load_adapter_model(adapter_dir, base_model)  # names the base; nothing is written before the checks
    if Path(base).exists():  # replacing it would delete the model the adapter needs (and, above it, a run)
        check_holds_no_input(out, [("the base model", base)])
    # config.json: --overwrite replaces an earlier merged folder, not a folder of other files (a run's folder)
    check_replaceable(out, adapter_dir, "the adapter", overwrite, marker="config.json")
    merged = model.merge_and_unload()
    tokenizer_dir = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else Path(base)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=carries_own_code(tokenizer_dir))
    if chat_token_ids(tokenizer) and getattr(tokenizer, "chat_template", None):
        for_chat_model(tokenizer)
        chat_generation(merged.generation_config, tokenizer)
    with atomic_folder(out) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(tokenizer, tmp)
        training = {"stage": card_stage(adapter_dir), "base_model": base}  # the adapter's: sft, dpo or fine-tuning
        write_card(tmp, name=out.resolve().name, training=training)
        copy_section(adapter_dir, tmp, "training")  # the adapter run's data and recipe
        write_card(tmp, load_path=str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = refuse_in_one_line(argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0]))
    parser.add_argument("adapter", type=Path, help="the adapter folder (a --lora_r run's final/ or checkpoint model/)")
    parser.add_argument("output", type=Path, help="the merged model folder to write")
    parser.add_argument("--base_model", default=None, help="the base model, if not the one the adapter names")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    try:
        args = parser.parse_args(argv)
        bars_only_on_a_terminal()
        out = merge(args.adapter, args.output, args.base_model, args.overwrite)
    except UsageError as err:
        return print_error(PROG, err)
    print(f"merged {args.adapter} into {out} (loads with AutoModelForCausalLM, no PEFT needed)")
    return 0


if __name__ == "__main__":
    # a Ctrl-C that main() lets through is one line too, with the exit status for Ctrl-C
    with ctrl_c_is_one_line(PROG):
        sys.exit(main())
