"""Training from counts: the bounded pre-token counter (on numbers), the rustbpe merges and their
conversion to a `tokenizers` BPE (encodes as rustbpe does), min_frequency, max_token_length, and real
training on small text against tokenizers' own trainer."""

import itertools
import json
import random
from collections import Counter
from pathlib import Path

import pytest
import regex
import rustbpe
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import pre_tokenizers

from shuangyu.tokenizer import bpe, merges
from shuangyu.tokenizer.counting import KEEP_COUNT, PretokenCounter, count_in_workers, is_sampled

WORDS = r"\S+"


def head_text(path: Path, lines: int) -> list[str]:
    import json

    with open(path, encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in itertools.islice(fh, lines)]


@pytest.fixture(scope="module")
def small_texts(corpus_dir) -> list[str]:
    """About 0.6 MB of real zh + en text."""
    return (
        head_text(corpus_dir / "zh/news_xinwenlianbo.jsonl", 150)
        + head_text(corpus_dir / "zh/reviews.jsonl", 400)
        + head_text(corpus_dir / "en/bbc_news.jsonl", 80)
    )


# --- the counter, on numbers ------------------------------------------------------------------------


def test_below_the_bound_every_count_is_exact():
    texts = ["a b c a", "b a", "d"]
    counter = PretokenCounter(WORDS, max_pretokens=10)
    counter.add_texts(texts)
    assert counter.level == 0 and counter.pretokens_seen == 7
    assert dict(counter.weights()) == {"a": 3, "b": 2, "c": 1, "d": 1}
    assert not counter.counts  # weights() hands the table over


def synthetic_stream(n_rare: int, heavy: dict[str, int], seed: int = 0, rare: str = "稀") -> list[str]:
    """Each rare word (a number + `rare`: it ends in Han, so it may be sampled) once and each heavy word `count`
    times, shuffled, in texts of 100 words."""
    words = [f"{i}{rare}" for i in range(n_rare)] + [w for w, c in heavy.items() for _ in range(c)]
    random.Random(seed).shuffle(words)
    return [" ".join(words[i : i + 100]) for i in range(0, len(words), 100)]


def test_the_table_never_outgrows_the_bound_and_rare_han_runs_are_sampled():
    heavy = {f"{i}重": 2000 + 100 * i for i in range(20)}
    texts = synthetic_stream(50_000, heavy)
    counter = PretokenCounter(WORDS, max_pretokens=2000)
    most = 0
    for i in range(0, len(texts), 10):
        counter.add_texts(texts[i : i + 10])
        most = max(most, len(counter))
    assert most <= 2000 + 10 * 100  # pruned after every batch: at most the bound plus one batch's words
    level = counter.level
    assert level >= 4  # 50,000 rare runs in a table of 2,000
    weights = dict(counter.weights())
    for word, count in heavy.items():  # heavy runs: exact, but for their light start (estimated)
        assert weights[word] == pytest.approx(count, abs=3 * 2**level)
    rare = [w for w in weights if w.endswith("稀")]
    assert all(weights[w] == 2**level and is_sampled(w, level) for w in rare)  # each stands for 2**level
    expected = 50_000 / 2**level  # the hash sample of 1 in 2**level
    assert expected * 0.8 < len(rare) < expected * 1.2
    assert len(rare) == sum(is_sampled(f"{i}稀", level) for i in range(50_000))  # none lost, none extra


def test_words_that_are_not_han_are_counted_exactly_however_late_they_come():
    """The regression of the first version: English words that first occurred after the last prune were
    taken for samples (dropped, or counted 2**level times). Here every non-Han word is exact."""
    early = synthetic_stream(20_000, {}, seed=1)
    late = synthetic_stream(3000, {"film": 700, "the": 3000, "rare-ish": 3, "once": 1}, seed=2, rare="晚")
    counter = PretokenCounter(WORDS, max_pretokens=1000)
    for i in range(0, len(early), 5):
        counter.add_texts(early[i : i + 5])
    level_before = counter.level
    counter.add_texts(late)  # no prune after it
    assert level_before >= 4
    weights = dict(counter.weights())
    assert (weights["film"], weights["the"], weights["rare-ish"], weights["once"]) == (700, 3000, 3, 1)


def test_the_last_character_decides_what_may_be_sampled():
    """A Han run may start with a mark below U+2E80 (“, or a space) and a Latin word with a full-width one
    (（): the run is still sampled, the word still counted exactly."""
    runs = [f"“{i}晚" for i in range(20_000)]
    texts = [" ".join(runs[i : i + 100] + ["（film"] * 2) for i in range(0, len(runs), 100)]
    counter = PretokenCounter(WORDS, max_pretokens=1000)
    for i in range(0, len(texts), 5):
        counter.add_texts(texts[i : i + 5])
    level = counter.level
    assert level >= 4
    weights = dict(counter.weights())
    assert weights["（film"] == 2 * len(texts)
    kept = [w for w in weights if w.startswith("“")]
    assert 0 < len(kept) < len(runs) / 8 and all(is_sampled(w, level) for w in kept)


def test_duplicated_documents_do_not_thin_the_sample_further():
    """Ten copies of the same 5,000 Han runs, one copy after the other (a corpus of duplicated documents):
    the copies repeat what the first one sampled, so the sample rate stays where one copy puts it."""
    words = [f"{i}字" for i in range(5000)]
    counter = PretokenCounter(WORDS, max_pretokens=2000)
    for copy in range(10):
        order = words[:]
        random.Random(copy).shuffle(order)
        counter.add_texts(" ".join(order[i : i + 100]) for i in range(0, 5000, 100))
        assert len(counter) <= 2000 + 100
    assert counter.level <= 3  # 5,000 distinct runs in a table of 2,000: 1 in 8 at most
    weights = dict(counter.weights())
    estimate = sum(weights.values())
    assert estimate == pytest.approx(50_000, rel=0.2)  # thinly spread runs too: sampled ones stand for the rest


def test_repeated_han_runs_alone_overflowing_raise_the_keep_count():
    counter = PretokenCounter(WORDS, max_pretokens=100)
    counter.add_texts([" ".join(f"{i}字" for i in range(300))] * 3)  # 300 runs, each 3 times
    counter.add_texts(["一 二"])
    assert len(counter) <= 100 and counter.keep_count > KEEP_COUNT


def test_sampling_is_the_same_in_every_run():
    def run():
        counter = PretokenCounter(WORDS, max_pretokens=500)
        counter.add_texts(synthetic_stream(5000, {"x": 300}, seed=1))
        return sorted(counter.weights())

    assert run() == run()


def test_worker_processes_count_what_one_process_counts():
    texts = synthetic_stream(3000, {"the": 500, "重": 40}, seed=3)
    batches = [texts[i : i + 3] for i in range(0, len(texts), 3)]
    one = count_in_workers(WORDS, 10**6, batches, workers=1)
    two = count_in_workers(WORDS, 10**6, batches, workers=2)
    assert one.level == two.level == 0 and one.pretokens_seen == two.pretokens_seen
    exact = Counter(w for t in texts for w in t.split())
    assert dict(two.weights()) == dict(one.weights()) == exact  # a bound large enough: exact counts
    assert len(two.worker_peak_kib) == 2
    sampled = count_in_workers(WORDS, 1000, batches, workers=2)
    assert sampled.level >= 2 and len(sampled) <= 1000
    weights = dict(sampled.weights())
    assert weights["the"] == 500 and "重" in weights


def test_a_failing_worker_stops_counting_with_an_error():
    with pytest.raises(RuntimeError, match="counting process failed"):
        count_in_workers(WORDS, 1000, [["fine"], [None], ["fine"]] * 20, workers=2)


def test_count_pattern_splits_as_the_tokenizer_does(small_texts):
    pre = bpe.build_tokenizer().pre_tokenizer
    find = regex.compile(bpe.COUNT_PATTERN).findall
    samples = small_texts[:50] + ["a\x00\x01b  c\u200b\u200bd\n\n e", "iPhone手机 2023年, it's ﬁ \x1b[0m"]
    for text in samples:
        ours = [merges.byte_level(p.encode("utf-8")) for p in find(text)]
        theirs = [p for p, _ in pre.pre_tokenize_str(text)]  # byte-level pieces
        assert ours == theirs, text[:80]


PIECES = [*"\x00\x01\x1b\u200b\u0301aé字中ア \t\n，(1😀", "'s"]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=12).map("".join))
def test_count_pattern_splits_mixed_text_as_the_tokenizer_does(text):
    """Control and format characters next to words, marks, digits and spaces: the count pattern's last
    alternative must leave a character that leads a word to the word, as the tokenizer's Split does."""
    ours = [merges.byte_level(p.encode("utf-8")) for p in regex.findall(bpe.COUNT_PATTERN, text)]
    assert ours == [p for p, _ in bpe.build_tokenizer().pre_tokenizer.pre_tokenize_str(text)]


# --- merges and their conversion --------------------------------------------------------------------


def test_byte_alphabet_is_tokenizers_byte_level():
    assert set(merges.BYTE_TO_CHAR.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    text = "".join(chr(c) for c in range(0, 0x250)) + "中文 😀"
    assert byte_level.pre_tokenize_str(text)[0][0] == merges.byte_level(text.encode("utf-8"))


def test_feed_writes_each_pretoken_weight_times():
    weights = [("ab", 3), ("a\x00b\x01c", 2), (" the", 5)]
    fed = "".join(merges.feed(weights, min_frequency=3))
    found = Counter(regex.findall(merges.FEED_PATTERN, fed))
    assert found == {"ab": 3, "a": 2, "b": 2, "c": 2, " the": 5, merges.SENTINEL: 2}
    assert merges.cut("中文abc", 6) == ["中文", "abc"]
    assert merges.cut("中", 2) == ["中"]  # a character is never cut


def rustbpe_tokens(weights, num_merges) -> tuple[rustbpe.Tokenizer, list[bytes]]:
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(
        merges.feed(weights, min_frequency=1), vocab_size=256 + num_merges, pattern=merges.FEED_PATTERN
    )
    ranked = sorted(trainer.get_mergeable_ranks(), key=lambda item: item[1])
    return trainer, [bytes(t) for t, _ in ranked[256:]]


def test_converted_merges_encode_as_rustbpe_does(small_texts):
    counter = bpe.count_pretokens(small_texts)
    weights = list(counter.weights())
    trainer, tokens = rustbpe_tokens(weights, 2000)
    assert len(set(tokens)) == len(tokens)  # no duplicate on this text: ids compare one to one
    vocab, merge_list = merges.bpe_vocab_and_merges(tokens, bpe.SPECIAL_TOKENS)
    from tokenizers import models

    model = models.BPE(vocab=vocab, merges=merge_list)
    id_of_rank = {rank: vocab[merges.byte_level(tok)] for rank, tok in enumerate(tokens, start=256)}
    id_of_rank.update({b: vocab[merges.BYTE_TO_CHAR[b]] for b in range(256)})
    pieces = [p for p, _ in weights if "\x00" not in p and merges.SEPARATOR not in p]
    pieces += regex.findall(bpe.COUNT_PATTERN, "没见过的句子，unseen words 和 1234 数字!")
    for piece in pieces:
        theirs = [id_of_rank[i] for i in trainer.encode(piece)]
        ours = [t.id for t in model.tokenize(merges.byte_level(piece.encode("utf-8")))]
        assert ours == theirs, piece


def merge_counts(weights: dict[str, int], tokens: list[bytes]) -> tuple[list[int], int]:
    """Replay BPE in plain Python: the count of each merge when it was made, and the best count after."""
    words = {tuple(bytes([b]) for b in w.encode()): c for w, c in weights.items()}

    def pair_counts():
        pairs = Counter()
        for word, c in words.items():
            for a, b in itertools.pairwise(word):
                pairs[(a, b)] += c
        return pairs

    counts = []
    for pair in merges.merge_pairs(tokens):
        counts.append(pair_counts()[pair])
        new = {}
        for word, c in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + c
        words = new
    rest = pair_counts()
    return counts, max(rest.values(), default=0)


@pytest.mark.parametrize("min_frequency", [1, 2, 3])
def test_min_frequency_stops_where_pairs_get_rare(min_frequency):
    weights = {"lower": 5, "lowest": 2, "newer": 6, "wider": 3, "new": 2, "abcdefg": 1}
    tokens = merges.learn_merges(iter(weights.items()), num_merges=100, min_frequency=min_frequency)
    counts, best_left = merge_counts(weights, tokens)
    assert all(c >= min_frequency for c in counts)
    if min_frequency > 1:
        assert best_left < min_frequency  # stopped because the pairs ran out, not early
    else:
        assert best_left == 0  # every pair merged: each word is one token
    assert len(tokens) == len(set(tokens))


def test_max_token_length_caps_every_token(small_texts):
    tok = bpe.train(small_texts[:300], vocab_size=1500, max_token_length=4)
    lengths = [len(t) for t in tok.get_vocab() if t not in bpe.SPECIAL_TOKENS]
    assert max(lengths) <= 4 and tok.get_vocab_size() > 1000


# --- real training on small text --------------------------------------------------------------------


def test_training_matches_tokenizers_own_trainer(small_texts):
    """Same text, same vocabulary: the vocabularies are nearly the same and compress alike."""
    ours = bpe.train(small_texts, vocab_size=3000)
    before = bpe.train_with_bpe_trainer(small_texts, vocab_size=3000, show_progress=False)
    assert ours.get_vocab_size() == before.get_vocab_size() == 3000
    shared = set(ours.get_vocab()) & set(before.get_vocab())
    assert len(shared) > 0.97 * 3000
    text = small_texts[::7]
    a = bpe.measure_compression(ours, text).chars_per_token
    b = bpe.measure_compression(before, text).chars_per_token
    assert a == pytest.approx(b, rel=0.01)
    assert ours.decode(ours.encode("中文 English 123 😀\x00").ids) == "中文 English 123 😀\x00"


def test_small_text_runs_out_of_pairs_like_tokenizers_trainer():
    texts = ["low lower lowest", "new newer", "low low new"]
    ours = bpe.train(texts, vocab_size=1000)
    before = bpe.train_with_bpe_trainer(texts, vocab_size=1000, show_progress=False)
    assert bpe.MIN_VOCAB_SIZE < ours.get_vocab_size() < 1000
    assert ours.get_vocab_size() == before.get_vocab_size()  # same merges with count >= 2
    assert set(ours.get_vocab()) == set(before.get_vocab())


@pytest.mark.slow
def test_sampled_counts_train_nearly_as_well_as_exact_ones(corpus_dir):
    """About 16 MB of zh + en, counted exactly and with a table a third of its distinct pre-tokens (rare
    Han runs sampled): held-out compression stays within 2%."""
    texts = head_text(corpus_dir / "zh/news_xinwenlianbo.jsonl", 6000) + head_text(
        corpus_dir / "en/imdb_reviews-00.jsonl", 6000
    )
    heldout = head_text(corpus_dir / "zh/news_xinwenlianbo_val.jsonl", 200) + head_text(
        corpus_dir / "en/imdb_reviews_val.jsonl", 200
    )
    exact = bpe.count_pretokens(texts)
    assert exact.level == 0
    sampled = bpe.count_pretokens(texts, max_pretokens=len(exact.counts) // 3)
    assert sampled.level >= 2
    a = bpe.measure_compression(bpe.train_from_counts(exact, 8000), heldout).chars_per_token
    b = bpe.measure_compression(bpe.train_from_counts(sampled, 8000), heldout).chars_per_token
    assert b == pytest.approx(a, rel=0.02)


def test_a_vocabulary_of_the_byte_alphabet_and_special_tokens_alone_learns_no_merge(tmp_path):
    """--vocab_size 260 (256 bytes + 4 special tokens) asks for no merge; the loop's count check came only after
    adding a token, so it kept the 17 spare ones: 277 tokens."""
    from transformers import AutoTokenizer

    from shuangyu.tokenizer.train_bpe import main

    assert merges.learn_merges(iter({"lower": 5, "newer": 6}.items()), num_merges=0) == []
    text = tmp_path / "a.jsonl"
    text.write_text(
        "".join(json.dumps({"text": f"some text 一些文本 {i}"}, ensure_ascii=False) + "\n" for i in range(50))
    )
    for vocab in (260, 261):
        assert main(["--files", str(text), "--vocab_size", str(vocab), "--output_dir", str(tmp_path / str(vocab))]) == 0
        assert len(AutoTokenizer.from_pretrained(tmp_path / str(vocab))) == vocab
