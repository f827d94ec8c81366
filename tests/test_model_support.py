"""Helpers for the model tests: a small real Shuangyu-style tokenizer and folders holding a tiny model with it.

The tokenizer is trained here with the `tokenizers` library the way tokenizer/bpe.py trains Shuangyu's (same
pre-tokenization regex, byte-level alphabet, special tokens, saved as a transformers fast tokenizer), on a few
hundred lines of the shared corpus, once per test process.
"""

import functools
import itertools
import json
import os
from pathlib import Path

import torch

from shuangyu.modeling import ShuangyuConfig, ShuangyuForCausalLM

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("SHUANGYU_SHARED", REPO.parent / "shared")) / "data" / "corpus"

# Shuangyu's pre-tokenization (tokenizer/bpe.py, PRETOKENIZE_PATTERN).
PRETOKENIZE_PATTERN = "|".join(
    [
        r"'(?i:[sdmt]|ll|ve|re)",
        r"[^\r\n\p{L}\p{N}]?\p{Han}+",
        r"[^\r\n\p{L}\p{N}]?[^\s\p{Han}\p{N}\p{P}\p{S}\p{C}]+",
        r"\p{N}",
        r" ?[\p{P}\p{S}]+[\r\n]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>")
EOS_ID, PAD_ID = 0, 1
TRAIN_FILES = ("zh/news_xinwenlianbo", "zh/tech_weekly_ruanyf", "en/bbc_news", "en/openstax_textbooks")
VOCAB_SIZE = 1024  # the model's rows; the tokenizer has a few fewer (its training stops at VOCAB_SIZE - 24)


def corpus_lines(name: str, n: int, split: str = "") -> list[str]:
    """The first n documents of a shared corpus file (`zh/reviews`, ...; split "_val" for held-out text)."""
    with open(CORPUS / f"{name}{split}.jsonl", encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in itertools.islice(fh, n)]


@functools.cache
def tokenizer_json() -> str:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - 24,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [text for name in TRAIN_FILES for text in corpus_lines(name, 120)]
    tok.train_from_iterator(texts, trainer=trainer)
    return tok.to_str()


def save_tokenizer(folder: Path):
    """Write the test tokenizer into `folder` as transformers saves it; returns the fast tokenizer."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer_json()),
        bos_token=SPECIAL_TOKENS[0],
        eos_token=SPECIAL_TOKENS[0],
        pad_token=SPECIAL_TOKENS[1],
        extra_special_tokens=list(SPECIAL_TOKENS[2:]),
        split_special_tokens=True,
        clean_up_tokenization_spaces=False,
    )
    tok.save_pretrained(str(folder))
    return tok


def tiny_config(**overrides) -> ShuangyuConfig:
    ids = dict(vocab_size=VOCAB_SIZE, bos_token_id=EOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    return ShuangyuConfig.from_preset("tiny", **{**ids, **overrides})


def tiny_model(seed: int = 0, **overrides) -> ShuangyuForCausalLM:
    torch.manual_seed(seed)
    return ShuangyuForCausalLM(tiny_config(**overrides)).eval()


def model_folder(folder: Path, seed: int = 0, **overrides) -> tuple[Path, ShuangyuForCausalLM]:
    """A saved tiny model with the test tokenizer beside it: what users share and export."""
    model = tiny_model(seed, **overrides)
    model.save_pretrained(folder)
    save_tokenizer(folder)
    return folder, model


def test_test_tokenizer_is_lossless_and_bilingual(tmp_path):
    tok = save_tokenizer(tmp_path)
    texts = corpus_lines("zh/news_xinwenlianbo", 5, "_val") + corpus_lines("en/bbc_news", 5, "_val")
    for text in texts:
        ids = tok(text, add_special_tokens=False).input_ids
        assert tok.decode(ids) == text
        assert len(ids) < len(text.encode("utf-8"))  # merges were learned for both languages
    assert len(tok) <= VOCAB_SIZE and tok.eos_token_id == EOS_ID and tok.pad_token_id == PAD_ID
    # split_special_tokens: special-token text inside user input is plain text.
    assert EOS_ID not in tok("a <|endoftext|> b", add_special_tokens=False).input_ids
