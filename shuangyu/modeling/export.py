"""Export a Shuangyu folder for clients that do not run our code.

One job, one file though long: both targets share the knob checks, the tokenizer rewrite and the refusal rules.

    python -m shuangyu.modeling.export --to llama SRC DST          # a stock LlamaForCausalLM folder
    python -m shuangyu.modeling.export --to gguf SRC OUT.gguf      # one file for llama.cpp and ollama

Both need LLaMA's knobs (RMSNorm, SwiGLU; biases, GQA, RoPE theta and scaling and tied embeddings all carry
over). Bad input (a missing file, knobs Llama cannot express, a tokenizer llama.cpp would split differently)
prints one line naming the file or flag and exits with status 2, before anything is written. An existing DST is
replaced only with --overwrite, and a folder only when it is a model folder (config.json) or empty. Ctrl-C is
one line, exit status 130, DST as it was: both targets are written under a temporary name and renamed.

--to llama: parameter names are already LLaMA's, so the weights are copied as they are. The tokenizer files in
SRC are copied with a tokenizer_config.json rewritten to load under transformers 4.x and 5.x alike
(`PreTrainedTokenizerFast`, `additional_special_tokens`, no loader flags such as `local_files_only`), and
config.json carries `rope_theta` and `rope_scaling` (4.x) next to `rope_parameters` (5.x). SRC's model card comes
along (with its loss curves and eval_results.json): the same logits, so its training record and evaluation hold;
its "How to use" loads DST, without trust_remote_code.

--to gguf: the llama architecture with the tokenizer as a byte-level BPE (`tokenizer.ggml.model = gpt2`) under
llama.cpp's `qwen2` pre-tokenizer, whose split agrees with ours on Chinese, English, digits, code and emoji.
llama.cpp names pre-tokenizers by a hash of known vocabularies, so its own converter refuses any newly trained
tokenizer; we name it. Before the file appears, a tokenizer rebuilt from the GGUF's own tokens, merges and
llama.cpp's qwen2 split must give the same ids as SRC's tokenizer on a fixed zh/en/edge-case text
(`CHECK_TEXT`); otherwise the export is refused. The file is written to a temporary name and renamed.
"""

import argparse
import sys
from pathlib import Path

import torch
from transformers.utils import logging as transformers_logging

from shuangyu.errors import (
    UsageError,
    ctrl_c_is_one_line,
    left_whole,
    print_error,
    print_interrupted,
    refuse_in_one_line,
)
from shuangyu.files import check_replaceable, check_writable_folder

from .gguf_export import (
    CHECK_TEXT,
    GGUF_DTYPES,
    export_to_gguf,
    gguf_field,
    interleave_rotary_rows,
    tokenizer_from_gguf,
)
from .llama_export import export_to_llama, to_llama_config

PROG = "python -m shuangyu.modeling.export"

__all__ = [
    "CHECK_TEXT",
    "export_to_gguf",
    "export_to_llama",
    "gguf_field",
    "interleave_rotary_rows",
    "main",
    "to_llama_config",
    "tokenizer_from_gguf",
]


def main(argv: list[str] | None = None) -> int:
    parser = refuse_in_one_line(argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0]))
    parser.add_argument("--to", choices=["llama", "gguf"], required=True, help="target: a Llama folder, or a GGUF")
    parser.add_argument("--dtype", choices=GGUF_DTYPES, default="auto", help="GGUF weights (auto: as SRC's)")
    parser.add_argument("src", help="a Shuangyu folder written by save_pretrained (with its tokenizer)")
    parser.add_argument("dst", help="output: a folder for --to llama, a .gguf file for --to gguf")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace DST if it exists (--to llama: a model folder or an empty one)"
    )
    try:
        args = parser.parse_args(argv)
    except UsageError as err:  # one line, exit status 2, as for every other refusal
        return print_error(PROG, err)
    src = Path(args.src)
    # stderr is for the one-line verdict: no "Loading weights" bars before it.
    transformers_logging.disable_progress_bar()
    try:
        if args.to == "llama" and args.dtype != "auto":
            raise UsageError(f"--dtype {args.dtype}: applies to --to gguf; a Llama folder keeps SRC's dtype")
        if args.to == "llama":
            check_writable_folder(args.dst, "DST")
        else:  # a .gguf file: its folder is the one written (its temporary name is made there)
            check_writable_folder(Path(args.dst).parent, "DST", named=args.dst)
        if not src.is_dir():
            raise UsageError(f"{src}: not a folder; pass a folder written by save_pretrained")
        # DST is replaced whole: `export --to llama outputs/run/final outputs` would have deleted every run, and
        # --overwrite on a folder of other files would have deleted them
        check_replaceable(args.dst, src, "SRC", args.overwrite, "config.json" if args.to == "llama" else None)
        with torch.no_grad():
            if args.to == "llama":
                export_to_llama(src, args.dst)
            else:
                export_to_gguf(src, args.dst, args.dtype)
    except UsageError as err:
        return print_error(PROG, err)
    except KeyboardInterrupt:  # both targets are written under a temporary name and renamed when complete
        return print_interrupted(PROG, left_whole(args.dst))
    target = "a LlamaForCausalLM folder" if args.to == "llama" else "a GGUF (llama architecture, qwen2 tokenizer)"
    print(f"wrote {target} to {args.dst}")
    return 0


if __name__ == "__main__":
    # a Ctrl-C that main() lets through is one line too, with the exit status for Ctrl-C
    with ctrl_c_is_one_line(PROG):
        sys.exit(main())
