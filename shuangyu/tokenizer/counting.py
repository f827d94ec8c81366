"""Counting pre-tokens in bounded memory: all that BPE training needs to know about the text.

BPE learns merges from how often each distinct pre-token occurs, never from where. English words repeat,
so their table stays small; Chinese clauses (whole Han runs, see bpe.py) mostly occur once, so an exact
table grows with the text: about 2.4 million distinct pre-tokens in the 204 MB sample corpus, and a
trainer spends memory and time on every one of them.

`PretokenCounter` holds at most `max_pretokens` distinct pre-tokens. Every pre-token enters the table when
it occurs; when the table overflows, it is pruned to the pre-tokens that are either

* repeated: counted at least `keep_count` times (KEEP_COUNT, 2) since they entered; kept whatever they
  are, so a word that occurs often is counted from early on, even if it first shows up late in the stream;
* or sampled: their CRC-32 ends in `level` zero bits (1 in 2**level pre-tokens). The hash is fixed, so a
  sampled pre-token was sampled at every lower level too: never pruned, its count is exact;

and the sampling level rises by one as long as that leaves more than PRUNE_TO of the bound. `weights()`
then gives each kept pre-token its weight in a 1-in-2**level sample of the text (an estimate of its count
divided by 2**level). A repeated one (sampled or not: counted `keep_count` times before some prune) gets its
count divided by 2**level, rounded up or down at random (a second fixed hash) in proportion to the
remainder; any other keeps its count if it is sampled (it stands for 2**level like it) and is left out if
not. The frequent pre-tokens that decide most merges are counted (almost) exactly, and the rare ones,
mostly Chinese clauses seen once, are represented by a sample of them. The estimate is biased where a
pre-token is pruned while still rare and later repeats: it loses those earlier occurrences (fewer than
keep_count per overflow), which matters only for pre-tokens spread thinly over a very long stream. Below
the bound (level 0) every count is exact and every weight is the count. Should the repeated pre-tokens
alone fill the table (in natural text they do not, but a corpus with duplicated documents can),
`keep_count` doubles instead of the level rising; it does so as soon as they take half of what a prune
leaves, so that the sample of rare pre-tokens always has room.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterable, Iterator

import regex

KEEP_COUNT = 2  # a pre-token counted this often since it entered the table survives pruning
PRUNE_TO = 0.5  # after an overflow the table is pruned to at most this share of max_pretokens


def sample_bits(pretoken: str) -> int:
    """A fixed 32-bit hash of the pre-token: the same in every process and every run."""
    return zlib.crc32(pretoken.encode("utf-8", "surrogatepass"))


def rounding_bits(pretoken: str) -> int:
    """A second fixed hash, independent of `sample_bits`, for rounding a scaled count up or down."""
    return zlib.crc32(pretoken.encode("utf-8", "surrogatepass"), 0x5EED)


def is_sampled(pretoken: str, level: int) -> bool:
    return sample_bits(pretoken) & ((1 << level) - 1) == 0


class PretokenCounter:
    """Counts of the pieces `pattern` finds in texts, in a table of at most `max_pretokens` entries."""

    def __init__(self, pattern: str, max_pretokens: int):
        if max_pretokens < 1:
            raise ValueError(f"max_pretokens must be at least 1, got {max_pretokens}")
        self.split = regex.compile(pattern).findall
        self.max_pretokens = max_pretokens
        self.counts: Counter[str] = Counter()
        self.level = 0
        self.keep_count = KEEP_COUNT
        self.repeated: set[str] = set()  # counted keep_count times between two prunes: counted in full since
        self.pretokens_seen = 0  # occurrences counted, over all texts

    def add_texts(self, texts: Iterable[str]) -> None:
        for text in texts:
            pieces = self.split(text)
            self.pretokens_seen += len(pieces)
            self.counts.update(pieces)
        if len(self.counts) > self.max_pretokens:
            self.prune()

    def prune(self) -> None:
        """Drop the light pre-tokens outside the sample, raising the level until at most PRUNE_TO of the
        bound is left."""
        target = int(self.max_pretokens * PRUNE_TO)
        while True:
            keep, mask = self.keep_count, (1 << self.level) - 1
            self.counts = Counter({p: c for p, c in self.counts.items() if c >= keep or sample_bits(p) & mask == 0})
            # the same test for sampled and unsampled pre-tokens, so that weights() can treat both alike
            self.repeated = {p for p in self.repeated if p in self.counts}
            self.repeated.update(p for p, c in self.counts.items() if c >= keep)
            if len(self.counts) <= target:
                return
            if self.level > 0 and sum(c >= keep for c in self.counts.values()) > target // 2:
                # repeated ones would leave the sample too little room: only the more frequent count as repeated
                self.keep_count *= 2
            else:
                self.level += 1

    def weights(self) -> Iterator[tuple[str, int]]:
        """(pre-token, weight) in a 1-in-2**level sample of the text, emptying the table as it goes so that
        its memory is freed while a trainer builds its own."""
        step = 1 << self.level
        counts, repeated = self.counts, self.repeated
        self.counts, self.repeated = Counter(), set()
        while counts:
            pretoken, count = counts.popitem()
            if step == 1 or pretoken in repeated:
                whole, rest = divmod(count, step)
                weight = whole + (rest > rounding_bits(pretoken) % step)
                if weight:
                    yield pretoken, weight
            elif sample_bits(pretoken) & (step - 1) == 0:
                yield pretoken, count
