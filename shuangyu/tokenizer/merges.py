"""Learning BPE merges from pre-token counts with rustbpe, and writing them as a `tokenizers` BPE model.

rustbpe (the trainer nanochat uses) keeps one small integer array per distinct pre-token and updates pair
counts incrementally: about twice as fast as `tokenizers`' BpeTrainer, with half its memory.
It learns from an iterator of texts cut by a regex, not from counts, and its regex engine is slow on
Shuangyu's pattern (fancy-regex falls back to backtracking for the `(?!\\S)` look-ahead). So the text is
counted on our side (counting.py), and rustbpe gets each counted pre-token written out `weight` times,
separated by SEPARATOR and cut again by the trivial pattern `[^SEPARATOR]+`: it then sees exactly the
weighted pre-tokens, and its own pass over them is a plain character-class scan.

Three things rustbpe does not do are done around it:

* `min_frequency`: rustbpe merges count-1 pairs too. A sentinel pre-token, two NUL bytes written
  `min_frequency - 1` times, is fed along; its pair (0, 0) is the smallest possible, so rustbpe (largest
  count first, ties to the smallest pair) merges it exactly when the best remaining pair falls below
  `min_frequency`. Merges from the sentinel on are dropped. NUL and SEPARATOR never occur in what is fed
  otherwise: pre-tokens are cut at them, so these two characters never take part in merges.
* Duplicates: two different pairs can join to the same bytes (a+bc, ab+c); `tokenizers` needs each token
  once, so a repeat is dropped (it is rare), and rustbpe is asked for a few spare merges to make up for it.
* Pairs: rustbpe returns each token's bytes in merge order; the pair that made it is recovered by applying
  the earlier merges to its bytes, lowest rank first, as BPE encoding does (and as tiktoken's format
  assumes). tests/test_tokenizer_training.py checks the result encodes like rustbpe itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from shuangyu.errors import ctrl_c_remembered, stop_if_ctrl_c_was_seen

BYTE_ALPHABET_SIZE = 256
SEPARATOR = "\x01"
SENTINEL = "\x00\x00"
FEED_PATTERN = f"[^{SEPARATOR}]+"
FEED_CHUNK_CHARS = 1 << 20  # characters per string handed to rustbpe
FEED_BUFFER = 32  # strings rustbpe holds at once: 32 MiB of text at most


def byte_to_char() -> dict[int, str]:
    """GPT-2's byte-level alphabet (what `pre_tokenizers.ByteLevel` uses): printable Latin-1 bytes stand
    for themselves, the other 68 bytes for the characters from U+0100 on, in byte order."""
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    table, shifted = {}, 0
    for b in range(BYTE_ALPHABET_SIZE):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(0x100 + shifted)
            shifted += 1
    return table


BYTE_TO_CHAR = byte_to_char()


def byte_level(token: bytes) -> str:
    """A token's bytes written in the byte-level alphabet, as `tokenizers` stores it."""
    return "".join(BYTE_TO_CHAR[b] for b in token)


def cut(pretoken: str, max_bytes: int | None) -> list[str]:
    """The pieces of a pre-token that are fed: cut at NUL and SEPARATOR, and into pieces of at most
    `max_bytes` UTF-8 bytes (at character boundaries) when a longest token is asked for."""
    if "\x00" in pretoken or SEPARATOR in pretoken:
        pieces = [p for p in pretoken.replace("\x00", SEPARATOR).split(SEPARATOR) if p]
    else:
        pieces = [pretoken]
    if max_bytes is None or all(len(p) * 4 <= max_bytes for p in pieces):  # (4: the most bytes a character takes)
        return pieces
    out = []
    for piece in pieces:
        start, size = 0, 0
        for i, char in enumerate(piece):
            n = len(char.encode("utf-8", "surrogatepass"))
            if size + n > max_bytes and i > start:
                out.append(piece[start:i])
                start, size = i, 0
            size += n
        out.append(piece[start:])
    return out


def feed(weights: Iterable[tuple[str, int]], min_frequency: int, max_bytes: int | None = None) -> Iterator[str]:
    """Strings for rustbpe in which FEED_PATTERN finds each pre-token `weight` times (and the sentinel)."""
    parts, size = [], 0
    if min_frequency > 1:
        parts.append((SENTINEL + SEPARATOR) * (min_frequency - 1))
    for pretoken, weight in weights:
        pieces = cut(pretoken, max_bytes)
        for piece in pieces:
            # very frequent pre-tokens are written in slices, so no string is much over FEED_CHUNK_CHARS
            per_slice, left = max(1, FEED_CHUNK_CHARS // (len(piece) + 1)), weight
            while left > 0:
                n = min(left, per_slice)
                parts.append((piece + SEPARATOR) * n)
                size += n * (len(piece) + 1)
                left -= n
                if size >= FEED_CHUNK_CHARS:
                    yield "".join(parts)
                    parts, size = [], 0
    if parts:
        yield "".join(parts)


def learn_merges(
    weights: Iterable[tuple[str, int]], num_merges: int, min_frequency: int = 2, max_token_length: int | None = None
) -> list[bytes]:
    """Up to `num_merges` new tokens (their bytes, in merge order) learned from weighted pre-tokens; with
    `max_token_length`, none longer than that many bytes."""
    import rustbpe

    spare = 1 + max(16, num_merges // 200)  # the sentinel, and room for dropped duplicates
    trainer = rustbpe.Tokenizer()
    # a Ctrl-C that lands while rustbpe runs reaches it as an error it does not pass on: the run trained on to the
    # end and exited 0. Remembered, it stops the run as soon as rustbpe returns.
    with ctrl_c_remembered():
        trainer.train_from_iterator(
            feed(weights, min_frequency, max_token_length),
            vocab_size=BYTE_ALPHABET_SIZE + num_merges + spare,
            buffer_size=FEED_BUFFER,
            pattern=FEED_PATTERN,
        )
        stop_if_ctrl_c_was_seen()
    ranked = sorted(trainer.get_mergeable_ranks(), key=lambda item: item[1])
    tokens, seen = [], set()
    if num_merges <= 0:  # the loop below checks the count only after adding a token
        return tokens
    for token, _ in ranked[BYTE_ALPHABET_SIZE:]:
        token = bytes(token)
        if token == SENTINEL.encode():
            break  # every later merge had a count below min_frequency
        if token not in seen and (max_token_length is None or len(token) <= max_token_length):
            seen.add(token)
            tokens.append(token)
            if len(tokens) == num_merges:
                break
    return tokens


def merge_pairs(tokens: list[bytes]) -> list[tuple[bytes, bytes]]:
    """The pair of earlier tokens each new token was merged from (tokens in merge order)."""
    rank: dict[bytes, int] = {}
    pairs = []
    for i, token in enumerate(tokens):
        if len(token) < 2:
            raise ValueError(f"merged token {token!r} is a single byte")
        parts = [token[j : j + 1] for j in range(len(token))]
        while len(parts) > 2:
            best, where = None, -1
            for j in range(len(parts) - 1):
                r = rank.get(parts[j] + parts[j + 1])
                if r is not None and (best is None or r < best):
                    best, where = r, j
            if best is None:
                raise ValueError(f"merged token {token!r} cannot be built from the tokens merged before it")
            parts[where : where + 2] = [parts[where] + parts[where + 1]]
        pairs.append((parts[0], parts[1]))
        rank[token] = i
    return pairs


def bpe_vocab_and_merges(
    tokens: list[bytes], special_tokens: Iterable[str]
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """`tokenizers` BPE vocabulary and merges: special tokens first, then the byte alphabet (sorted, as
    tokenizers' own trainer orders it), then the merged tokens in merge order."""
    vocab = {token: i for i, token in enumerate(special_tokens)}
    for char in sorted(BYTE_TO_CHAR.values()):
        vocab[char] = len(vocab)
    merges = [(byte_level(a), byte_level(b)) for a, b in merge_pairs(tokens)]
    for token in tokens:
        vocab[byte_level(token)] = len(vocab)
    return vocab, merges
