"""The byte-level BPE tokenizer for Chinese + English: pre-tokenization, special tokens, training, saving.

Choices, and why:

* Byte-level alphabet (256 symbols) and no normaliser inside the tokenizer, so that
  `decode(encode(x)) == x` for every Unicode string. NFKC would fold the full-width punctuation that
  Chinese text uses on purpose (，→ ,) and even NFC recomposes accents, so either would make the
  tokenizer lossy. If a corpus needs normalising, do it as an explicit data-preparation step; the shared
  corpus is already cleaned (see its SOURCES.md), so Shuangyu does not normalise by default.
* Pre-tokenization (`PRETOKENIZE_PATTERN`) cuts text into pieces that merges never cross:
  - runs of Han characters stay whole, so BPE can learn multi-character words (中国, 人工智能); Chinese
    has no spaces, so a run is a clause and merges are learned inside it;
  - other letters (Latin, Cyrillic, kana, ... with combining marks) form words; Han and Latin never
    merge with each other (`iPhone手机` -> `iPhone` | `手机`), which would waste vocabulary on accidental
    neighbours;
  - a word or Han run may start with one character that is neither a letter, a digit nor a line break: a
    space (` the`, as in GPT-2) or a punctuation mark (`，但是`, `(the`, `“我们`), as GPT-4's cl100k and
    Qwen2's patterns allow. Chinese puts a mark every few characters, so tokens such as `，但` and `。我们`
    raise held-out compression by 5% (zh) at 32k; English gains a little (bench/RESULTS.md, "Tokenizer
    at scale"). It is also how llama.cpp's `qwen2` pre-tokenizer splits, which the GGUF export relies on;
  - English contractions ('s 't 're 've 'm 'll 'd) split off the word;
  - every digit is its own piece (as in LLaMA and Qwen): numbers get one consistent spelling, which
    small models learn arithmetic and dates from far more easily than from arbitrary digit chunks;
  - other punctuation and symbols (ASCII and CJK, emoji) group apart from letters, with an optional
    leading space, and may absorb the newlines that follow them; a mark never ends a word;
  - newlines group together; runs of spaces leave their last space to the next word (GPT-2's rule).
* Special tokens `<|endoftext|>` (document separator, also BOS/EOS), `<|pad|>`, and reserved chat tokens
  `<|im_start|>`, `<|im_end|>`. The saved tokenizer sets `split_special_tokens=True`: their text inside
  ordinary input is encoded as plain text, so user data can never inject them; pass
  `split_special_tokens=False` to a call (or add the ids) when you want them.
* Training (`train`) counts pre-tokens in bounded tables, one per counting process (counting.py: memory
  stops growing with the text, light Han runs are sampled past the bound, everything else is counted
  exactly) and learns the merges from the counts with rustbpe, written back as a `tokenizers` BPE model
  (merges.py). `tokenizers`' own BpeTrainer, which Shuangyu used before, holds every distinct pre-token
  with its symbols: 4.4x the memory and 6-10x the time on the sample corpus (bench/RESULTS.md). It stays as
  `train_with_bpe_trainer` for the benchmark and as a reference.
* A ChatML chat template over the reserved tokens (chat_template.py, which also says how the template's control
  tokens become ids while message text never does).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from shuangyu.tokenizer import merges
from shuangyu.tokenizer.chat_template import CHAT_TEMPLATE
from shuangyu.tokenizer.counting import PretokenCounter, count_in_workers, default_workers
from shuangyu.tokenizer.special_tokens import CHAT_TOKENS, EOS_TOKEN, PAD_TOKEN, SPECIAL_TOKENS

BYTE_ALPHABET_SIZE = 256
MIN_VOCAB_SIZE = BYTE_ALPHABET_SIZE + len(SPECIAL_TOKENS)

PRETOKENIZE_PATTERN = "|".join(
    [
        r"'(?i:[sdmt]|ll|ve|re)",  # English contractions
        # both word kinds may start with one space or punctuation mark (see above)
        r"[^\r\n\p{L}\p{N}]?\p{Han}+",  # Chinese: whole runs, so words can form inside them
        r"[^\r\n\p{L}\p{N}]?[^\s\p{Han}\p{N}\p{P}\p{S}\p{C}]+",  # other letters and marks
        r"\p{N}",  # one digit at a time
        r" ?[\p{P}\p{S}]+[\r\n]*",  # punctuation and symbols, with the newlines after them
        r"\s*[\r\n]+",  # newlines
        r"\s+(?!\S)",  # spaces that do not precede a word
        r"\s+",
    ]
)
# Counting splits text as the tokenizer does. What no alternative matches (control and format characters,
# \p{C} but not spaces, unless one leads a word) the tokenizer's Split keeps as pieces of their own;
# re.findall would skip it, so counting adds it as a last alternative, a run that stops before a character
# that leads a word or Han run.
COUNT_PATTERN = PRETOKENIZE_PATTERN + r"|(?:[^\s\P{C}](?![^\s\p{N}\p{P}\p{S}\p{C}]))+"
# Distinct pre-tokens held while counting, in each counting process (counting.py); beyond it, light Han runs
# are sampled. The 204 MB sample corpus has 2.6 million: with 2 processes its light Han runs end sampled 1 in
# 16, and rustbpe's time grows with the distinct Han runs it gets (about 30 us each), so this default trains it
# faster than sentencepiece for 0.3% less held-out compression at 32k than exact counts (bench/RESULTS.md).
DEFAULT_MAX_PRETOKENS = 700_000


def build_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE tokenizer with Shuangyu's pre-tokenization."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def gpt2_baseline_tokenizer() -> Tokenizer:
    """A plain byte-level BPE with GPT-2's pre-tokenizer: the baseline the benchmark compares against."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def train(
    texts: Iterable[str] | Iterable[list[str]],
    vocab_size: int,
    min_frequency: int = 2,
    max_token_length: int | None = None,
    max_pretokens: int = DEFAULT_MAX_PRETOKENS,
    workers: int | None = None,
) -> Tokenizer:
    """Train the BPE from a stream of texts (or batches of texts): count pre-tokens in bounded memory,
    in `workers` processes (default: one per core, at most 4), then learn merges from the counts (see
    counting.py and merges.py)."""
    counter = count_pretokens(texts, max_pretokens, workers)
    return train_from_counts(counter, vocab_size, min_frequency, max_token_length)


def count_pretokens(
    texts: Iterable[str] | Iterable[list[str]], max_pretokens: int = DEFAULT_MAX_PRETOKENS, workers: int | None = None
) -> PretokenCounter:
    """A PretokenCounter over the texts, split as `build_tokenizer()` splits them; with more than one
    worker, counted in that many processes and merged."""
    batches = ([item] if isinstance(item, str) else item for item in texts)
    return count_in_workers(COUNT_PATTERN, max_pretokens, batches, default_workers() if workers is None else workers)


def train_from_counts(
    counter: PretokenCounter, vocab_size: int, min_frequency: int = 2, max_token_length: int | None = None
) -> Tokenizer:
    """The trained tokenizer: merges learned from the counter's weights (which empties it)."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size {vocab_size} is below the byte alphabet plus special tokens ({MIN_VOCAB_SIZE})")
    tokens = merges.learn_merges(counter.weights(), vocab_size - MIN_VOCAB_SIZE, min_frequency, max_token_length)
    vocab, merge_list = merges.bpe_vocab_and_merges(tokens, SPECIAL_TOKENS)
    tok = build_tokenizer()
    tok.model = models.BPE(vocab=vocab, merges=merge_list)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def train_with_bpe_trainer(
    texts: Iterable[str] | Iterator[list[str]],
    vocab_size: int,
    min_frequency: int = 2,
    max_token_length: int | None = None,
    tokenizer: Tokenizer | None = None,
    show_progress: bool = True,
) -> Tokenizer:
    """The trainer Shuangyu used before: `tokenizers`' BpeTrainer, which holds every distinct pre-token with
    its symbols and pair positions (about 36 bytes of memory per byte of mostly unique Chinese text). Kept
    for the benchmark (the 'before' row and the GPT-2-style baseline) and as a reference in tests."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size {vocab_size} is below the byte alphabet plus special tokens ({MIN_VOCAB_SIZE})")
    tok = tokenizer or build_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_token_length=max_token_length,
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def to_transformers(tok: Tokenizer):
    """Wrap a trained tokenizer so `save_pretrained` writes a folder `AutoTokenizer` loads as fast."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=list(CHAT_TOKENS),
        split_special_tokens=True,
        clean_up_tokenization_spaces=False,  # the default cleanup edits spaces and breaks losslessness
        chat_template=CHAT_TEMPLATE,  # ChatML over the reserved tokens (shuangyu/tokenizer/chat_template.py)
    )


@dataclass
class Compression:
    docs: int
    chars: int
    bytes: int
    tokens: int

    @property
    def chars_per_token(self) -> float:
        return self.chars / max(self.tokens, 1)

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / max(self.tokens, 1)

    def as_dict(self) -> dict:
        return {
            "docs": self.docs,
            "chars": self.chars,
            "bytes": self.bytes,
            "tokens": self.tokens,
            "chars_per_token": round(self.chars_per_token, 4),
            "bytes_per_token": round(self.bytes_per_token, 4),
        }


def measure_compression(tok: Tokenizer, docs: list[str], batch_size: int = 256) -> Compression:
    """Characters and UTF-8 bytes per token over documents, encoded in batches (no special tokens)."""
    tokens = 0
    for i in range(0, len(docs), batch_size):
        tokens += sum(len(e.ids) for e in tok.encode_batch(docs[i : i + batch_size], add_special_tokens=False))
    return Compression(
        docs=len(docs),
        chars=sum(len(d) for d in docs),
        bytes=sum(len(d.encode("utf-8")) for d in docs),
        tokens=tokens,
    )
