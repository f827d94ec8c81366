"""Counting pre-tokens in bounded memory: all that BPE training needs to know about the text.

BPE learns merges from how often each distinct pre-token occurs, never from where. Pre-tokens that are
not Chinese (words, digits, punctuation, spaces) repeat: their distinct number grows slowly with the
text (Zipf), 0.29 million in the 204 MB sample corpus. Chinese pre-tokens are whole Han runs (clauses, see
bpe.py) and mostly occur once: 2.3 million distinct ones there (2.0 million seen once), growing with the
text. So `PretokenCounter`:

* counts every pre-token whose last character lies below SAMPLED_FROM (Latin, Cyrillic, digits, ASCII
  punctuation, ...) exactly, always, however late in the stream it first occurs;
* lets every Han run (any pre-token ending at or past SAMPLED_FROM; the last character, since a run may
  start with a space or a punctuation mark, see bpe.py) enter the table as it occurs; when the table
  overflows `max_pretokens`, it takes out the light runs, counted fewer than `keep_count` (KEEP_COUNT, 2)
  times since they entered: a sampled one (its CRC-32 ends in `level` zero bits, 1 in 2**level runs; the
  hash is fixed, so a run sampled at a level is sampled at every lower one) keeps the occurrences taken
  out in a second table, `lost`; any other is dropped. The level rises by one until at most PRUNE_TO of the
  bound is left; should repeated runs alone take half of that (a corpus of duplicated documents),
  `keep_count` doubles instead.

`weights()` gives each pre-token its count plus, for a sampled run, its lost occurrences times 2**level:
those stand for the lost occurrences of the 2**level runs like it. Whether a run stays in the table never
depends on its hash, so the weight is an unbiased estimate of every pre-token's count (over the hash), exact
for non-Han pre-tokens and for everything below the bound, and made of integers: no frequent pre-token is
thinned. The error is the sample's variance: a light run is in the sample as a whole or not at all.
(The first version sampled all pre-tokens alike and scaled only those that had repeated before some
prune: English words first seen after the last prune, most of them in the 204 MB corpus, whose English
comes after its Chinese, were dropped or counted 2**level times, which cost 17% of English compression.)
Pre-tokens ending below SAMPLED_FROM are not bounded: a corpus with very many distinct ones holds them all.

Tables counted apart (by worker processes, `count_in_workers`) merge: both are taken to the higher of their
levels and keep counts, and their counts and lost occurrences added.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import resource
import signal
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator

import regex

KEEP_COUNT = 2  # a Han run counted this often since it entered the table survives pruning
PRUNE_TO = 0.5  # after an overflow the table is pruned to at most this share of max_pretokens
# Pre-tokens ending at or past this character may be sampled: the CJK blocks and all after them (Han runs
# above all, see bpe.PRETOKENIZE_PATTERN; also kana and Hangul runs, full-width punctuation, emoji), where
# words are not cut apart by spaces. Latin, Greek, Cyrillic, digits and ASCII punctuation lie below it. The
# last character decides: a Han run may start with a space or a mark such as “ (U+201C), a Latin word with
# a full-width one such as （.
SAMPLED_FROM = "\u2e80"
MIN_SAMPLE_SHARE = 0.25  # of a prune's target, the least room left to the sample of light Han runs
QUEUED_BATCHES = 4  # batches waiting for each worker: bounds the text held in flight


def sample_bits(pretoken: str) -> int:
    """A fixed 32-bit hash of the pre-token: the same in every process and every run."""
    return zlib.crc32(pretoken.encode("utf-8", "surrogatepass"))


def is_sampled(pretoken: str, level: int) -> bool:
    return sample_bits(pretoken) & ((1 << level) - 1) == 0


def rss_kib() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def max_rss_kib() -> int:
    """This process's peak resident memory so far (ru_maxrss: KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_memory_kib(counter: PretokenCounter) -> int:
    """The most memory counting and training held at once, bounded from above: while the counting processes
    lived, this process at its peak until counting ended plus each counting process at its own peak; after
    them, this process alone at its peak (call this when training has ended). Adding every peak instead would
    count the counting processes on top of the merge learning, which only starts once they have exited."""
    return max(counter.counting_peak_kib, max_rss_kib())


class PretokenCounter:
    """Counts of the pieces `pattern` finds in texts, in a table of at most `max_pretokens` entries (as long
    as the non-Han pre-tokens alone fit in it)."""

    def __init__(self, pattern: str, max_pretokens: int):
        if max_pretokens < 1:
            raise ValueError(f"max_pretokens must be at least 1, got {max_pretokens}")
        self.split = regex.compile(pattern).findall
        self.max_pretokens = max_pretokens
        self.prune_at = max_pretokens
        self.counts: Counter[str] = Counter()  # every pre-token since it (last) entered the table
        self.lost: Counter[str] = Counter()  # sampled light runs: occurrences that pruning took from counts
        self.level = 0
        self.keep_count = KEEP_COUNT
        self.pretokens_seen = 0  # occurrences counted, over all texts
        self.worker_peak_kib: list[int] = []  # resident memory each counting process added at its peak
        self.counting_peak_kib = 0  # memory held while counting, at most (set by count_in_workers)

    def __len__(self) -> int:
        return len(self.counts) + len(self.lost)

    def add_texts(self, texts: Iterable[str]) -> None:
        for text in texts:
            pieces = self.split(text)
            self.pretokens_seen += len(pieces)
            self.counts.update(pieces)
        if len(self) > self.prune_at:
            self.prune(int(self.max_pretokens * PRUNE_TO))

    def _drop_light(self) -> None:
        """Take the light Han runs (counted fewer than keep_count times) out of `counts`: a sampled one's count
        goes to `lost`, any other is dropped. Whether a run stays in `counts` never depends on its hash."""
        if self.level == 0:
            return
        keep, mask, crc = self.keep_count, (1 << self.level) - 1, zlib.crc32
        light = [(p, c) for p, c in self.counts.items() if c < keep and p[-1] >= SAMPLED_FROM]
        self.note_memory()
        for p, c in light:
            del self.counts[p]
            if crc(p.encode("utf-8", "surrogatepass")) & mask == 0:
                self.lost[p] += c
        del light
        if any(crc(p.encode("utf-8", "surrogatepass")) & mask for p in self.lost):  # the level rose
            self.lost = Counter(
                {p: c for p, c in self.lost.items() if crc(p.encode("utf-8", "surrogatepass")) & mask == 0}
            )

    def note_memory(self) -> None:
        """In a counting process, remember the most resident memory seen (see _count_worker)."""
        if self.worker_peak_kib:
            self.worker_peak_kib[0] = max(self.worker_peak_kib[0], rss_kib())

    def prune(self, target: int) -> None:
        """Take out the light Han runs, raising the level (or keep_count) until at most `target` entries are
        left. The sample of light runs always keeps room (MIN_SAMPLE_SHARE of the target), so when non-Han
        pre-tokens alone fill the table, it outgrows the bound by that much."""
        while True:
            self._drop_light()
            if len(self) <= target:
                break
            keep = self.keep_count
            han = [c >= keep for p, c in self.counts.items() if p[-1] >= SAMPLED_FROM]
            repeated = sum(han)
            light = len(self.lost) if self.level else len(han) - repeated  # the sample (at level 0: all light runs)
            del han
            if repeated > target // 2:  # repeated runs would leave the sample too little room
                self.keep_count *= 2
                self.level = max(self.level, 1)
            elif light > target * MIN_SAMPLE_SHARE:
                self.level += 1
            else:
                break
        # past the bound with what must stay: let the table grow rather than prune after every batch
        self.prune_at = max(self.max_pretokens, int(len(self) / PRUNE_TO))

    def merge(self, other: PretokenCounter) -> None:
        """Add another table (emptying it): both taken to the higher of the two levels and keep_counts, then
        added, then pruned to the bound."""
        self.level, other.level = (max(self.level, other.level),) * 2
        self.keep_count, other.keep_count = (max(self.keep_count, other.keep_count),) * 2
        self._drop_light()
        other._drop_light()
        self.pretokens_seen += other.pretokens_seen
        self.worker_peak_kib += other.worker_peak_kib
        for name in ("counts", "lost"):
            small, big = sorted([getattr(self, name), getattr(other, name)], key=len)
            big.update(small)
            setattr(self, name, big)
            setattr(other, name, Counter())
            del small
        self.prune(self.max_pretokens)

    def weights(self) -> Iterator[tuple[str, int]]:
        """(pre-token, weight): its count, plus for a sampled Han run its lost occurrences times 2**level (it
        stands for the 2**level runs like it whose light occurrences were dropped). Empties the table as it
        goes, so that its memory is freed while a trainer builds its own."""
        self._drop_light()
        counts, lost, level = self.counts, self.lost, self.level
        self.counts, self.lost = Counter(), Counter()
        while counts:
            pretoken, count = counts.popitem()
            yield pretoken, count + (lost.pop(pretoken, 0) << level)
        while lost:
            pretoken, count = lost.popitem()
            yield pretoken, count << level


def _count_worker(pattern: str, max_pretokens: int, batches, results) -> None:
    # A forked process starts with its parent's pages in its resident memory (and its ru_maxrss may start from
    # the parent's): it reports the most it added, read after each batch and at each prune.
    # Ctrl-C reaches every process of the terminal's group: the parent says the one line and terminates the
    # workers; a worker's own KeyboardInterrupt was a traceback under that line.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    start_kib = rss_kib()
    counter = PretokenCounter(pattern, max_pretokens)
    counter.worker_peak_kib = [start_kib]
    while (batch := batches.get()) is not None:
        counter.add_texts(batch)
        counter.note_memory()
    counter.prune(max_pretokens)  # what entered since the last prune
    peak_kib = counter.worker_peak_kib[0] - start_kib
    results.put((counter.counts, counter.lost, counter.level, counter.keep_count, counter.pretokens_seen, peak_kib))


def count_in_workers(pattern: str, max_pretokens: int, batches: Iterable[list[str]], workers: int) -> PretokenCounter:
    """Count batches of texts in `workers` processes, each with its own table (bounded alike), and merge the
    tables. The regex split and counting are most of the time of training; this parallelises them."""
    counter = PretokenCounter(pattern, max_pretokens)
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        for batch in batches:
            counter.add_texts(batch)
        counter.counting_peak_kib = max_rss_kib()
        return counter
    # fork, not spawn: spawn would run the caller's main script again in each worker
    ctx = multiprocessing.get_context("fork")
    queues = [ctx.Queue(QUEUED_BATCHES) for _ in range(workers)]
    results = ctx.Queue()
    procs = [ctx.Process(target=_count_worker, args=(pattern, max_pretokens, q, results)) for q in queues]
    for p in procs:
        p.start()
    try:
        for i, batch in enumerate(batches):
            _wait(procs, queues[i % workers].put, batch)
        for q in queues:
            _wait(procs, q.put, None)
        for _ in procs:
            part = PretokenCounter(pattern, max_pretokens)
            part.counts, part.lost, part.level, part.keep_count, part.pretokens_seen, peak_kib = _wait(
                procs, results.get
            )
            part.worker_peak_kib = [peak_kib]
            counter.merge(part)
        for p in procs:
            p.join()
        counter.counting_peak_kib = max_rss_kib() + sum(counter.worker_peak_kib)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        # A queue's feeder thread may be blocked writing a batch to a worker that is gone (Ctrl-C stopped it);
        # at exit multiprocessing joins that thread, forever, unless told not to.
        for q in [*queues, results]:
            q.cancel_join_thread()
            q.close()
    return counter


def _wait(procs, queue_op, *args):
    """A queue put or get, retried each second as long as no worker has died (which would block it forever)."""
    while True:
        try:
            return queue_op(*args, timeout=1)
        except (queue.Empty, queue.Full):
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a pre-token counting process failed (exit code {dead[0]})") from None


def default_workers() -> int:
    """Counting processes: one per core, at most 4 (each holds a table of its own)."""
    return max(1, min(4, os.cpu_count() or 1))
