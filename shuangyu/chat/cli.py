"""Talk to a checkpoint on a terminal, with the reply streamed as it is generated.

    python -m shuangyu.chat outputs/sft-tiny/final                       # multi-turn; /reset, /exit (or Ctrl-D)
    python -m shuangyu.chat outputs/sft-tiny/final --prompt "你好"        # one reply, then exit (scripts, tests)
    python -m shuangyu.chat outputs/tiny-cpu/final --prompt "今天天气"     # a base model: plain continuation

A chat model (an SFT, DPO or merged folder: its generation stops at <|im_end|>) is prompted in its ChatML format,
with the whole conversation so far and an optional `--system` prompt. Any other model continues the text (`--mode
continue` forces that for a chat model too; a continuation prints your text, then what the model adds to it). A
LoRA adapter folder is loaded on its base model through PEFT (the one it names, or `--base_model DIR`, as
merge_lora does); a name that is not a folder is read as a Hub id (USER/NAME), as a pushed model card tells its
readers to run it. The prompt leaves room for the reply: the oldest exchanges go first, then the start of a
too-long text, each with a note.

Small models fall into loops ("的的的的", one sentence over and over). The defaults keep them out: sampling
(temperature 0.7, top-p 0.9, top-k 50) rather than greedy decoding, and `--repetition_penalty 1.1`, which lowers
the odds of every token already in the text, except tokens that are pieces of one character: a byte-level
tokenizer spells a rare Chinese character as 2-3 byte tokens, and penalising a byte because an earlier character
shared it would garble the character (transformers' own penalty does). If a model still loops, raise the penalty
(1.2-1.3) or add `--no_repeat_ngram_size 4` (never repeat a 4-token run verbatim; with a small vocabulary this
can also cut a repeated rare word); `--greedy` shows the model's single most likely reply, loops and all.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shuangyu.devices import pick_device
from shuangyu.errors import UsageError, print_error, print_interrupted, refuse_in_one_line
from shuangyu.sharing.folder import is_chat_folder, load_adapter_model, needs_remote_code
from shuangyu.tokenizer.chat_template import CHAT_SAMPLING, chat_token_ids, encode_chat, encode_text, stop_token_ids
from shuangyu.tokenizer.special_tokens import EOS_TOKEN

PROG = "python -m shuangyu.chat"


def parse_args(argv):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    refuse_in_one_line(p)
    p.add_argument("checkpoint", help="a model folder or a LoRA adapter folder, or a Hub id (USER/NAME) of either")
    p.add_argument("--base_model", default=None, help="a LoRA adapter's base model, if not the one the adapter names")
    p.add_argument("--prompt", default=None, help="answer this one message (or continue this text) and exit")
    p.add_argument("--system", default=None, help="a system prompt for a chat model")
    p.add_argument("--mode", choices=("auto", "chat", "continue"), default="auto")
    p.add_argument("--max_new_tokens", type=int, default=None, help="the reply's most tokens (default: 256)")
    p.add_argument("--temperature", type=float, default=CHAT_SAMPLING["temperature"])
    p.add_argument("--top_p", type=float, default=CHAT_SAMPLING["top_p"])
    p.add_argument("--top_k", type=int, default=CHAT_SAMPLING["top_k"])
    p.add_argument("--repetition_penalty", type=float, default=1.1)
    p.add_argument("--no_repeat_ngram_size", type=int, default=0, help="never repeat an n-token run (0: off)")
    p.add_argument("--greedy", action="store_true", help="the most likely token every time (no sampling)")
    p.add_argument("--seed", type=int, default=None, help="make sampling repeatable")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    args = p.parse_args(argv)
    args.max_new_tokens_asked = args.max_new_tokens is not None  # only a number the user gave is noted when capped
    args.max_new_tokens = 256 if args.max_new_tokens is None else args.max_new_tokens
    return args


def local_folder(name: str) -> Path:
    """The folder NAME, or for a Hub id (USER/NAME, as a pushed model card tells its readers to run) the local copy
    of that repository, downloaded once into the Hugging Face cache (or read from it offline)."""
    folder = Path(name)
    if folder.is_dir():
        return folder
    if folder.exists() or name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise UsageError(f"{name} is not a folder")
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    try:  # the model's files only: a pushed run also carries its logs and plots
        return Path(snapshot_download(repo_id=name, ignore_patterns=["runs/*", "*.png", "*.gguf"]))
    except Exception as err:  # offline without a cached copy, no such repo, no access, a bad id: say which, once
        raise UsageError(f"{name} is not a folder, and the Hub did not give it: {hub_failure(err)}") from None


def hub_failure(err: Exception) -> str:
    """One line for why a download failed (huggingface_hub's own messages run over several lines)."""
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(err, RepositoryNotFoundError):
        return "no such model, or a private one (log in with `hf auth login`)"
    if isinstance(err, RevisionNotFoundError):
        return "the repository has no main branch"
    if isinstance(err, LocalEntryNotFoundError):
        return "not downloaded before, and the Hub cannot be reached (or HF_HUB_OFFLINE=1 is set)"
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def load(folder: Path, device: str, base_model: str | None = None):
    """(model, tokenizer) from a model folder or a LoRA adapter folder (on `base_model` if given)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()  # the terminal is for the conversation
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder")
    adapter = (folder / "adapter_config.json").is_file()
    if not adapter and not (folder / "config.json").is_file():
        raise UsageError(f"{folder} is not a model folder (no config.json or adapter_config.json)")
    if base_model and not adapter:
        raise UsageError(f"--base_model: {folder} is a whole model, not a LoRA adapter folder; leave the flag out")
    if adapter:
        model, _ = load_adapter_model(folder, base_model)
        remote = False
    else:
        remote = needs_remote_code(json.loads((folder / "config.json").read_text(encoding="utf-8")))
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=remote, dtype="float32")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=remote)
    except Exception as err:  # many types, depending on what is missing
        raise UsageError(f"{folder}: no usable tokenizer ({type(err).__name__}: {err})") from None
    return model.to(device).eval(), tokenizer


def is_chat_model(model, tokenizer) -> bool:
    """A chat model's tokenizer carries a template and its generation stops at <|im_end|> (SFT runs set both)."""
    ids = chat_token_ids(tokenizer)
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    return bool(ids and getattr(tokenizer, "chat_template", None) and ids[1] in eos)


class Conversation:
    """The messages so far, encoded for the model to fit its context with `reserve` tokens left for the reply: the
    oldest exchanges go first, then the start of a question too long on its own (its turn markers and the system
    prompt stay, so the model still sees a chat)."""

    def __init__(self, tokenizer, system: str | None, context: int, reserve: int):
        self.tokenizer, self.context, self.reserve = tokenizer, context, reserve
        self.system = [{"role": "system", "content": system}] if system else []
        self.turns: list[dict] = []
        self.dropped = 0  # exchanges dropped from the start to fit the last question
        self.cut = 0  # tokens cut from the start of the last question

    def encode(self) -> list[int]:
        return encode_chat(self.tokenizer, self.system + self.turns, add_generation_prompt=True)[0]

    def prompt_ids(self, user: str) -> list[int]:
        self.turns.append({"role": "user", "content": user})
        budget, self.dropped, self.cut = self.context - self.reserve, 0, 0
        while len(ids := self.encode()) > budget:
            if len(self.turns) > 1:  # the oldest exchange goes: its question, then what comes before the next one
                self.turns = self.turns[1:]
                while len(self.turns) > 1 and self.turns[0]["role"] != "user":
                    self.turns = self.turns[1:]
                self.dropped += 1
                continue
            question = self.turns[0]["content"]
            pieces = encode_text(self.tokenizer, question).ids
            if not pieces:
                raise UsageError(f"the system prompt leaves no room in the model's {self.context}-token context")
            cut = min(len(ids) - budget, len(pieces))
            self.cut += cut
            # decoding from inside a character gives U+FFFD for its first bytes: those go too
            self.turns[0]["content"] = self.tokenizer.decode(pieces[cut:]).lstrip("\ufffd")
        return ids

    def add_reply(self, reply: str) -> None:
        self.turns.append({"role": "assistant", "content": reply})

    def withdraw(self) -> None:
        """Forget the last question when its reply was cut off (Ctrl-C): turns keep alternating."""
        if self.turns and self.turns[-1]["role"] == "user":
            self.turns.pop()

    def reset(self) -> None:
        self.turns = []


def continuation_ids(tokenizer, text: str, budget: int) -> tuple[list[int], int]:
    """The ids a base model continues from (an empty text: the start of a new document, after <|endoftext|>, as
    pretraining packs them), the last `budget` of them; and how many were cut from the start."""
    ids = encode_text(tokenizer, text).ids or [tokenizer.convert_tokens_to_ids(EOS_TOKEN)]
    return ids[-budget:], max(0, len(ids) - budget)


def within_context(kwargs: dict, prompt_ids: list[int], context: int) -> dict:
    """The reply stops where the model's context ends (its position embeddings were trained that far)."""
    return kwargs | {"max_new_tokens": min(kwargs["max_new_tokens"], context - len(prompt_ids))}


def character_pieces(tokenizer, vocab_size: int):
    """A bool per id: the token is part of a character (its bytes are not whole UTF-8), as byte-level BPE makes."""
    import torch

    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    pieces = torch.zeros(max(vocab_size, len(tokenizer)), dtype=torch.bool)
    pieces[: len(texts)] = torch.tensor(["\ufffd" in t for t in texts])
    return pieces


def character_safe_penalty(penalty: float, pieces):
    """A repetition penalty (as transformers': logits of tokens already in the text divided by `penalty`, or
    multiplied when negative) that leaves pieces of characters alone."""
    import torch
    from transformers import LogitsProcessor

    class CharacterSafeRepetitionPenalty(LogitsProcessor):
        def __call__(self, input_ids, scores):
            seen = torch.gather(scores, 1, input_ids)
            penalised = torch.where(seen < 0, seen * penalty, seen / penalty)
            exempt = pieces.to(input_ids.device)[input_ids]
            return scores.scatter(1, input_ids, torch.where(exempt, seen, penalised))

    return CharacterSafeRepetitionPenalty()


def generation_kwargs(args, model, tokenizer) -> dict:
    from transformers import LogitsProcessorList

    processors = []
    if args.repetition_penalty != 1.0:
        pieces = character_pieces(tokenizer, model.config.vocab_size)
        processors.append(character_safe_penalty(args.repetition_penalty, pieces))
    kwargs = {
        "max_new_tokens": args.max_new_tokens,
        "logits_processor": LogitsProcessorList(processors),
        "no_repeat_ngram_size": args.no_repeat_ngram_size,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": stop_token_ids(tokenizer),
    }
    if args.greedy:
        return kwargs | {"do_sample": False}
    return kwargs | {"do_sample": True, "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k}


def reply(model, tokenizer, prompt_ids: list[int], kwargs: dict, out=None) -> str:
    """Generate after `prompt_ids`, streaming the text to `out` (default: sys.stdout as it is when called, not as it
    was at import); returns the reply's text (no special tokens, no cut character at its end)."""
    import torch
    from transformers import TextStreamer

    out = out or sys.stdout

    class Printer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False):
            # only the last piece can end inside a character: the streamer holds back text that ends in U+FFFD
            text = without_a_cut_character(text) if stream_end else text
            print(text, flush=True, end="" if not stream_end else "\n", file=out)

    ids = torch.tensor([prompt_ids], device=model.device)
    streamer = Printer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    with torch.no_grad():
        output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer, **kwargs)
    return without_a_cut_character(tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True))


def without_a_cut_character(text: str) -> str:
    """A byte-level tokenizer spells a rare character as 2-3 byte tokens; a reply that stops after some of them
    (at --max_new_tokens or the context's end) decodes them as U+FFFD, which the reply loses (on the screen and
    in the conversation)."""
    return text.rstrip("\ufffd")


def check_args(args) -> None:
    if args.max_new_tokens < 1:
        raise UsageError(f"--max_new_tokens {args.max_new_tokens} must be at least 1")
    if not args.greedy and args.temperature <= 0:
        raise UsageError(f"--temperature {args.temperature} must be positive (or pass --greedy)")
    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top_p {args.top_p} must be in (0, 1]")
    if args.top_k < 0:
        raise UsageError(f"--top_k {args.top_k} must be 0 (off) or more")
    if args.no_repeat_ngram_size < 0:
        raise UsageError(f"--no_repeat_ngram_size {args.no_repeat_ngram_size} must be 0 (off) or more")
    if args.repetition_penalty <= 0:
        raise UsageError(f"--repetition_penalty {args.repetition_penalty} must be positive (1.0: none)")


def note_cut(cut: int, context: int, reserve: int) -> None:
    if cut:
        print(
            f"{PROG}: note: the start of your text ({cut} tokens) was cut: the model's context is {context} tokens, "
            f"{reserve} of them kept for the reply (--max_new_tokens)",
            file=sys.stderr,
        )


def note_dropped(dropped: int, context: int, reserve: int) -> None:
    if dropped:
        exchanges = "exchange" if dropped == 1 else f"{dropped} exchanges"
        print(
            f"{PROG}: note: the oldest {exchanges} (question and reply) went: the conversation no longer fits the "
            f"model's {context}-token context with {reserve} tokens kept for the reply (/reset starts afresh)",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> int:
    try:
        return talk(argv)
    except KeyboardInterrupt:  # while the model loads or a --prompt is answered (the terminal loop catches its own)
        return print_interrupted(PROG, "nothing was written")


def talk(argv: list[str] | None) -> int:
    try:
        args = parse_args(argv)
        check_args(args)
        import torch

        device = pick_device(args.device)
        folder = local_folder(args.checkpoint)
        model, tokenizer = load(folder, device, args.base_model)
        if args.seed is not None:  # after loading, which may draw random numbers (a LoRA adapter's initialisation)
            torch.manual_seed(args.seed)
        guess = is_chat_model(model, tokenizer) or is_chat_folder(folder)
        chat = args.mode == "chat" or (args.mode == "auto" and guess)
        if chat and not chat_token_ids(tokenizer):
            raise UsageError(f"--mode chat: {args.checkpoint}'s tokenizer has no <|im_start|>/<|im_end|> tokens")
        if chat and args.prompt is not None and not args.prompt.strip():  # it answered an empty turn with noise
            raise UsageError('--prompt "": a chat model answers a message: give one (or --mode continue)')
        context = getattr(model.config, "max_position_embeddings", 2048)
        reserve = min(args.max_new_tokens, context // 2)  # a longer reply runs into the room the prompt left
        conversation = Conversation(tokenizer, args.system if chat else None, context, reserve)
        if chat and len(conversation.encode()) + 4 > context - reserve:  # + a question's markers
            raise UsageError(f"--system: too long for the model's {context}-token context with room for a reply")
    except UsageError as err:
        return print_error(PROG, err)
    if args.system and not chat:
        why = " in continue mode" if args.mode == "continue" else f": {args.checkpoint} is not a chat model"
        print(f"{PROG}: note: --system is ignored{why}", file=sys.stderr)
    kwargs = generation_kwargs(args, model, tokenizer)
    capped_said = False

    def answer(text: str) -> str:
        nonlocal capped_said
        if chat:
            ids = conversation.prompt_ids(text)
            note_dropped(conversation.dropped, context, reserve)
            note_cut(conversation.cut, context, reserve)
        else:
            ids, cut = continuation_ids(tokenizer, text, context - reserve)
            note_cut(cut, context, reserve)
        limited = within_context(kwargs, ids, context)
        capped = limited["max_new_tokens"] < args.max_new_tokens
        if capped and args.max_new_tokens_asked and not capped_said:  # once: later replies are capped alike
            capped_said = True
            print(
                f"{PROG}: note: --max_new_tokens {args.max_new_tokens} is capped to {limited['max_new_tokens']}: a "
                f"reply stops where the model's {context}-token context ends, and the prompt takes {len(ids)}",
                file=sys.stderr,
            )
        if not chat:  # a continuation reads as one text: the text given, then what the model adds
            print(text, end="", flush=True)
        return reply(model, tokenizer, ids, limited)

    if args.prompt is not None:
        answer(args.prompt)
        return 0
    if chat:
        print(f"{args.checkpoint}: chat. /reset clears the conversation, /exit (or Ctrl-D) quits.", file=sys.stderr)
    else:
        kind = "" if args.mode == "continue" else " (a base model)"
        print(
            f"{args.checkpoint}: continuation{kind}: each line is continued on its own. /exit (or Ctrl-D) quits.",
            file=sys.stderr,
        )
    while True:
        try:
            line = input("\n> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        if line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/reset":
            conversation.reset()
            cleared = "the conversation is cleared" if chat else "nothing to clear: each line is continued on its own"
            print(f"({cleared})", file=sys.stderr)
            continue
        if not line.strip():
            continue
        try:
            text = answer(line)
            if chat:
                conversation.add_reply(text)
        except KeyboardInterrupt:  # stops this reply, not the chat
            conversation.withdraw()
            print(file=sys.stderr)
