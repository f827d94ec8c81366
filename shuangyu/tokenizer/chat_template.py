"""The chat format: ChatML over the reserved `<|im_start|>` / `<|im_end|>` tokens, as a transformers chat template
and as Shuangyu's own encoder of conversations into token ids and a loss mask.

    python -m shuangyu.tokenizer.chat_template DIR      # give a tokenizer (or model folder) trained earlier the template

A conversation renders as

    <|im_start|>system\\nYou are ...<|im_end|>\\n<|im_start|>user\\n你好<|im_end|>\\n<|im_start|>assistant\\n...<|im_end|>\\n

and `add_generation_prompt=True` appends `<|im_start|>assistant\\n`. The assistant's text and its `<|im_end|>` sit
inside `{% generation %}` markers, so `apply_chat_template(..., return_assistant_tokens_mask=True)` and TRL's
`assistant_only_loss=True` find them; the header and the newline after `<|im_end|>` are not trained.

Special tokens and text. Shuangyu's tokenizers set `split_special_tokens=True`: special-token text in ordinary
input is encoded as plain characters, so no document can inject `<|endoftext|>` or `<|im_end|>`. The template's
own control tokens must become their ids, though, so the template is never tokenized as one string here:
`encode_chat` encodes each run of text between control tokens with special tokens split (a message that
contains the text `<|im_end|>` stays text) and puts the control ids in between. That is exactly what
`apply_chat_template(..., tokenize=True, split_special_tokens=False)` gives for messages without control-token text
(tested), and what transformers' `sanitize_control_tokens=True` gives for messages with it.

Tools outside Shuangyu (lm-eval's `--apply_chat_template`, TRL, vLLM) render the template and tokenize the string
with the tokenizer's own setting. So a *chat model's* folder (written by an SFT or DPO run, or by merge_lora) saves
its tokenizer with `split_special_tokens=False` (`for_chat_model`), and those tools get the control ids; Shuangyu's
own readers of text (the data pipeline, the SFT encoder, the chat command, eval/run.py) split special tokens
explicitly, so they are safe with either setting. A base tokenizer keeps `split_special_tokens=True`; load it with
`AutoTokenizer.from_pretrained(DIR, split_special_tokens=False)` to hand it to TRL.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shuangyu.errors import UsageError, ctrl_c_is_one_line, print_error, refuse_in_one_line
from shuangyu.files import atomic_write_text
from shuangyu.tokenizer.loading import carries_own_code
from shuangyu.tokenizer.special_tokens import CHAT_TOKENS, EOS_TOKEN

IM_START, IM_END = CHAT_TOKENS
ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100

# Jinja, whitespace-controlled so the rendered text is exactly the format above. `{% generation %}` marks what an
# assistant-only loss trains: the reply and its <|im_end|>.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def chat_token_ids(tokenizer) -> tuple[int, int] | None:
    """The ids of <|im_start|> and <|im_end|>, or None when the tokenizer lacks either as a special token."""
    ids = tuple(tokenizer.convert_tokens_to_ids(t) for t in CHAT_TOKENS)
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        return None
    if not set(CHAT_TOKENS) <= set(tokenizer.all_special_tokens):
        return None
    return ids


def check_chat_tokenizer(tokenizer, name: str, flag: str = "--tokenizer_name") -> tuple[int, int]:
    """(im_start, im_end) ids, after checking the tokenizer can carry Shuangyu's chat format."""
    ids = chat_token_ids(tokenizer)
    if ids is None:
        raise UsageError(
            f"{flag} {name}: the tokenizer has no {IM_START} / {IM_END} special tokens, so it cannot mark "
            "conversation turns; use a tokenizer trained by tokenizer/train_bpe.py (they reserve both)"
        )
    template = getattr(tokenizer, "chat_template", None)
    if template and template != CHAT_TEMPLATE:
        raise UsageError(
            f"{flag} {name}: carries another chat template than Shuangyu's ChatML, which SFT formats "
            f"conversations with; replace it with `python -m shuangyu.tokenizer.chat_template {name} --overwrite`"
        )
    return ids


def add_chat_template(tokenizer) -> bool:
    """Set Shuangyu's template on a tokenizer that has the chat tokens; True when it was missing."""
    if getattr(tokenizer, "chat_template", None) == CHAT_TEMPLATE:
        return False
    tokenizer.chat_template = CHAT_TEMPLATE
    return True


def for_chat_model(tokenizer):
    """The tokenizer as a chat model's folder saves it: the template, and `split_special_tokens=False` so tools that
    tokenize the rendered template as one string (lm-eval, TRL, vLLM) get the control ids (see the module doc)."""
    add_chat_template(tokenizer)
    tokenizer.split_special_tokens = False
    return tokenizer


def stop_token_ids(tokenizer) -> list[int]:
    """What ends a reply: <|im_end|> (chat) and <|endoftext|> (a base model's end of document)."""
    ids = [tokenizer.convert_tokens_to_ids(EOS_TOKEN)]
    chat = chat_token_ids(tokenizer)
    if chat:
        ids.append(chat[1])
    return [i for i in dict.fromkeys(ids) if i is not None]


# How a chat model's replies are sampled unless the caller says otherwise: `python -m shuangyu.chat`'s defaults, and
# through the folder's generation_config.json every client's (pipeline, generate), as stock instruct models ship
# theirs. Greedy decoding makes a small model loop on one phrase; do_sample=False still asks for it.
CHAT_SAMPLING = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 50}


def chat_generation(generation_config, tokenizer) -> None:
    """A chat model's generation config: stop at <|im_end|> (or <|endoftext|>), pad with the tokenizer's pad, and
    sample as CHAT_SAMPLING says."""
    generation_config.eos_token_id = stop_token_ids(tokenizer)
    generation_config.pad_token_id = tokenizer.pad_token_id
    generation_config.update(**CHAT_SAMPLING)


def encode_text(tokenizer, text: str):
    """The backend encoding (ids and character offsets) of `text` with every special token's text kept as text,
    whatever the tokenizer's own split_special_tokens setting."""
    backend = tokenizer.backend_tokenizer
    previous = backend.encode_special_tokens
    backend.encode_special_tokens = True
    try:
        return backend.encode(text, add_special_tokens=False)
    finally:
        backend.encode_special_tokens = previous


def encode_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation, and for each token whether an assistant-only loss trains it (the
    assistant's reply and its <|im_end|>; not the `<|im_start|>assistant\\n` header, nor the newline after).
    Messages are taken as given (check them with shuangyu.text.conversations)."""
    ids_of = chat_token_ids(tokenizer)
    if ids_of is None:
        raise UsageError(f"the tokenizer has no {IM_START} / {IM_END} special tokens")
    im_start, im_end = ids_of
    ids: list[int] = []
    trained: list[bool] = []
    newline = encode_text(tokenizer, "\n").ids
    for message in messages:
        role, content = message["role"], message["content"]
        header = f"{role}\n"
        encoding = encode_text(tokenizer, header + content)
        ids.append(im_start)
        trained.append(False)
        ids.extend(encoding.ids)
        is_reply = role == "assistant"
        # a token is the reply's when it starts inside the content (one that straddles the header is not)
        trained.extend(is_reply and start >= len(header) for start, _ in encoding.offsets)
        ids.append(im_end)
        trained.append(is_reply)
        ids.extend(newline)
        trained.extend([False] * len(newline))
    if add_generation_prompt:
        header = encode_text(tokenizer, "assistant\n").ids
        ids.extend([im_start, *header])
        trained.extend([False] * (len(header) + 1))
    return ids, trained


def labels_from_mask(ids: list[int], trained: list[bool]) -> list[int]:
    return [i if t else IGNORE_INDEX for i, t in zip(ids, trained, strict=True)]


# ------------------------------------------------------------------------------------------------- the command
PROG = "python -m shuangyu.tokenizer.chat_template"


def add_template_to_folder(folder: Path, overwrite: bool = False) -> str:
    """Give the tokenizer in FOLDER (a tokenizer folder or a model folder) the template, as the file
    `chat_template.jinja` that transformers writes and reads; tokenizer.json, and so every token id, stays as it was."""
    from transformers import AutoTokenizer

    config_path = folder / "tokenizer_config.json"
    if not config_path.is_file():
        raise UsageError(f"{folder}: no tokenizer_config.json (not a tokenizer folder)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=carries_own_code(folder))
    except Exception as err:  # many types, depending on what is wrong with the folder
        raise UsageError(f"{folder}: could not load the tokenizer ({type(err).__name__}: {err})") from None
    if chat_token_ids(tokenizer) is None:
        raise UsageError(
            f"{folder}: the tokenizer has no {IM_START} / {IM_END} special tokens; a chat template needs them "
            "(retrain it with tokenizer/train_bpe.py)"
        )
    current = getattr(tokenizer, "chat_template", None)
    if current == CHAT_TEMPLATE:
        return "already has Shuangyu's chat template: nothing to do"
    if current and not overwrite:
        raise UsageError(f"{folder}: already has another chat template; pass --overwrite to replace it")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.pop("chat_template", None) is not None:  # an older layout kept it here; one place only
        atomic_write_text(config_path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (folder / "chat_template.json").unlink(missing_ok=True)
    atomic_write_text(folder / "chat_template.jinja", CHAT_TEMPLATE)
    return "added Shuangyu's ChatML chat template (chat_template.jinja)"


def main(argv: list[str] | None = None) -> int:
    parser = refuse_in_one_line(argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0]))
    parser.add_argument("folder", type=Path, help="a tokenizer folder (train_bpe.py output) or a model folder")
    parser.add_argument("--overwrite", action="store_true", help="replace a chat template the folder already has")
    try:
        args = parser.parse_args(argv)
        print(f"{args.folder}: {add_template_to_folder(args.folder, args.overwrite)}")
    except UsageError as err:
        return print_error(PROG, err)
    return 0


if __name__ == "__main__":
    # a Ctrl-C that main() lets through is one line too, with the exit status for Ctrl-C
    with ctrl_c_is_one_line(PROG):
        sys.exit(main())
