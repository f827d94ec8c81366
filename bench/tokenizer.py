"""Benchmark Shuangyu's BPE trainer against sentencepiece, a plain GPT-2-style BPE and reference tokenizers.

    python3 bench/tokenizer.py --write_results                   # whole corpus, vocab 32k and 64k
    python3 bench/tokenizer.py --max_bytes 5MB --vocab_sizes 4000  # quick check on a slice (prints only)

Trained side by side on the same text, read once through tokenizer.sources:
  * ours       tokenizer.bpe.train: pre-tokens counted in bounded memory, merges learned by rustbpe
               (Han runs, single digits, ...: tokenizer.bpe.build_tokenizer's pre-tokenization);
  * before     the same tokenizer trained the way Shuangyu did before issue 16: tokenizers' BpeTrainer
               (tokenizer.bpe.train_with_bpe_trainer);
  * baseline   tokenizer.bpe.gpt2_baseline_tokenizer (byte-level BPE, GPT-2's pre-tokenizer, BpeTrainer);
  * spm        sentencepiece BPE with byte fallback, fed the same documents split into lines (it skips a
               "sentence" longer than max_sentence_length, and newlines cannot be part of its pieces).
Each trainer runs in a fresh process of its own, so that its peak memory (ru_maxrss) is its own; the
text is loaded into that process's memory before the clock starts, and the clock stops when training
ends (saving is not timed). The reference tokenizers in ../shared/data/tokenizers are only measured.

On the held-out `*_val.jsonl` files of each language: compression (characters and UTF-8 bytes per token,
no special tokens) and batched encode throughput (after all training; fastest of 3 rounds, or of 1 in a
quick check with --max_bytes). Prints a markdown table; with --write_results also writes it as the
`## Tokenizer` section of bench/RESULTS.md (other sections are kept), which a quick check must not replace.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path

from shuangyu.files import parse_size
from shuangyu.text.readers import ReadOptions, ReadStats, read_documents
from shuangyu.text.sampling import plan_mixture, sample_source
from shuangyu.text.sources import parse_file_source, resolve_files
from shuangyu.tokenizer import bpe
from shuangyu.tokenizer.counting import max_rss_kib, peak_memory_kib

REPO = Path(__file__).resolve().parent.parent

LANGS = ("zh", "en")
TRAINERS = ("ours", "before", "baseline", "spm")
TRAINER_LABELS = {
    "ours": "ours (Shuangyu BPE)",
    "before": "ours before issue 16 (tokenizers BpeTrainer)",
    "baseline": "plain byte-level BPE (GPT-2 pre-tokenizer)",
    "spm": "sentencepiece BPE",
}
REFERENCES = {"GPT-2 (reference)": "gpt2", "MiniMind (reference)": "minimind"}
SPM_COVERAGE = 0.9995  # of characters, the usual setting for Chinese
SPM_MIN_COVERAGE = 0.98  # sentencepiece refuses less
SPM_META_PIECES = 3 + 256  # <unk> <s> </s> and the byte-fallback pieces, all counted in its vocab size
SPM_DEFAULT_MAX_SENTENCE = 4192  # bytes; sentencepiece's default
ENCODE_BATCH_DOCS = 1000  # as datasets.map(batched=True) does
ENCODE_ROUNDS = 3  # keep the fastest: the machine is shared, and the first run also fills the BPE cache


@dataclass
class Row:
    name: str
    vocab: int
    train_s: float | None = None
    peak_mb: float | None = None
    loaded_mb: float | None = None  # resident memory once the text was loaded, before training
    encode_mbps: float | None = None  # tokenizers' encode_batch, or sentencepiece's encode on a list
    hf_encode_mbps: float | None = None  # transformers fast tokenizer, batched call
    compression: dict[str, bpe.Compression] = field(default_factory=dict)


# ---------------------------------------------------------------------------- text


def read_training_docs(corpus: Path, max_bytes: int | None, seed: int) -> tuple[list[str], dict[str, ReadStats]]:
    """Every train document of the corpus (or a slice keeping each language's natural share)."""
    opts = ReadOptions()
    specs = [parse_file_source(f"{lang}={corpus}/{lang}/*.jsonl") for lang in LANGS]
    files = [resolve_files(spec, exclude=["*_val.jsonl"]) for spec in specs]
    docs, stats = [], {}
    for plan in plan_mixture(specs, files, max_bytes, opts):
        stats[plan.spec.name] = ReadStats()
        docs.extend(sample_source(plan, opts, stats[plan.spec.name], seed))
    return docs, stats


def read_heldout(corpus: Path) -> dict[str, list[str]]:
    val_files = {lang: resolve_files(parse_file_source(f"{corpus}/{lang}/*_val.jsonl")) for lang in LANGS}
    return {lang: read_documents(files, ReadOptions()) for lang, files in val_files.items()}


def spm_lines(docs: list[str]) -> list[str]:
    return [line for doc in docs for line in doc.split("\n") if line]


def spm_coverage(char_counts: Counter, vocab_size: int) -> float:
    """sentencepiece must fit every character of its coverage into the vocabulary, else it refuses to train.
    At the real vocab sizes 0.9995 fits easily; for tiny check runs, lower it (not below sentencepiece's own
    minimum, 0.98) so that single characters take at most half of the vocabulary."""
    room = max(1, (vocab_size - SPM_META_PIECES) // 2)
    counts = sorted(char_counts.values(), reverse=True)
    if len(counts) <= room:
        return SPM_COVERAGE
    fits = sum(counts[: room - 1]) / sum(counts)
    return max(SPM_MIN_COVERAGE, min(SPM_COVERAGE, fits))


# ---------------------------------------------------------------------------- training (in a child process)


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _batches(docs: list[str], size: int = 512) -> Iterator[list[str]]:
    for i in range(0, len(docs), size):
        yield docs[i : i + size]


def _train_sentencepiece(lines: list[str], vocab_size: int, out_prefix: str, coverage: float) -> None:
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=out_prefix,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=coverage,
        # keep every line whole rather than skip the long ones
        max_sentence_length=max(SPM_DEFAULT_MAX_SENTENCE, *(len(line.encode("utf-8")) for line in lines)),
        # lossless, as ours: NFKC would fold full-width punctuation, and spaces stay as written (LLaMA's choice)
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,  # ours splits digits too
        num_threads=os.cpu_count(),
        minloglevel=2,
    )


def train_job(kind: str, vocab_size: int, docs_path: str, out_path: str, coverage: float) -> dict:
    """Load the text, then time one trainer; runs in a fresh process so its peak memory is its own."""
    with open(docs_path, encoding="utf-8") as fh:
        docs = [json.loads(line) for line in fh]
    if kind == "spm":
        docs = spm_lines(docs)
    loaded_mb = _current_rss_mb()
    counter = None
    start = time.perf_counter()
    if kind == "spm":
        _train_sentencepiece(docs, vocab_size, out_path, coverage)
    elif kind == "ours":
        counter = bpe.count_pretokens(_batches(docs))
        tok = bpe.train_from_counts(counter, vocab_size)
    else:
        base = bpe.gpt2_baseline_tokenizer() if kind == "baseline" else bpe.build_tokenizer()
        tok = bpe.train_with_bpe_trainer(_batches(docs), vocab_size, tokenizer=base, show_progress=False)
    seconds = time.perf_counter() - start
    # KiB on Linux; read before saving. Ours also counts in worker processes: counting.peak_memory_kib bounds
    # what both held at once (this process's peak until counting ended, plus each worker's; later, its own)
    peak_kib = max_rss_kib() if counter is None else peak_memory_kib(counter)
    peak_mb = peak_kib * 1024 / 1e6
    if kind != "spm":
        tok.save(out_path)
    return {"seconds": seconds, "peak_mb": peak_mb, "loaded_mb": loaded_mb}


def run_isolated(fn: Callable, *args):
    # spawn, not fork: a forked child would start with the parent's pages (the whole corpus) counted in its RSS
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


# ---------------------------------------------------------------------------- encoding

EncodeLengths = Callable[[list[str]], list[int]]  # a batch of texts -> number of tokens of each


def tokenizers_lengths(tok) -> EncodeLengths:
    return lambda batch: [len(e.ids) for e in tok.encode_batch(batch, add_special_tokens=False)]


def transformers_lengths(hf) -> EncodeLengths:
    def lengths(batch):
        ids = hf(batch, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        return [len(x) for x in ids]

    return lengths


def sentencepiece_lengths(sp) -> EncodeLengths:
    return lambda batch: [len(x) for x in sp.encode(batch, num_threads=os.cpu_count())]


def encode_all(lengths: EncodeLengths, heldout: dict[str, list[str]]) -> tuple[float, dict[str, int]]:
    """Seconds to encode all held-out text in batches, and tokens per language."""
    tokens = {}
    start = time.perf_counter()
    for lang, docs in heldout.items():
        tokens[lang] = sum(
            sum(lengths(docs[i : i + ENCODE_BATCH_DOCS])) for i in range(0, len(docs), ENCODE_BATCH_DOCS)
        )
    return time.perf_counter() - start, tokens


@dataclass
class Candidate:
    """A tokenizer to measure: its row, and its encode paths by row field (encode_mbps, hf_encode_mbps)."""

    row: Row
    paths: dict[str, EncodeLengths]


def measure_all(candidates: list[Candidate], heldout: dict[str, list[str]], rounds: int) -> None:
    """Fill in throughput (fastest run) and compression. Rounds go over every tokenizer in turn, so that a
    burst of load from other jobs on the machine slows all of them rather than one."""
    total_mb = sum(len(d.encode("utf-8")) for docs in heldout.values() for d in docs) / 1e6
    best: dict[tuple[int, str], float] = {}
    tokens: dict[tuple[int, str], dict[str, int]] = {}
    for _ in range(rounds):
        for i, cand in enumerate(candidates):
            for path, lengths in cand.paths.items():
                seconds, counted = encode_all(lengths, heldout)
                assert tokens.setdefault((i, path), counted) == counted, "same text, different token counts"
                best[(i, path)] = min(best.get((i, path), seconds), seconds)
    for i, cand in enumerate(candidates):
        for path in cand.paths:
            setattr(cand.row, path, total_mb / best[(i, path)])
        counts = [tokens[(i, path)] for path in cand.paths]
        if any(c != counts[0] for c in counts):
            print(f"warning: {cand.row.name}: encode paths disagree on token counts: {counts}", file=sys.stderr)
        cand.row.compression = compression(heldout, counts[0])


def compression(heldout: dict[str, list[str]], tokens: dict[str, int]) -> dict[str, bpe.Compression]:
    return {
        lang: bpe.Compression(
            docs=len(docs),
            chars=sum(len(d) for d in docs),
            bytes=sum(len(d.encode("utf-8")) for d in docs),
            tokens=tokens[lang],
        )
        for lang, docs in heldout.items()
    }


def hf_style(row: Row, tok, hf) -> Candidate:
    """A `tokenizers` tokenizer, measured directly and through its transformers fast wrapper."""
    return Candidate(row, {"encode_mbps": tokenizers_lengths(tok), "hf_encode_mbps": transformers_lengths(hf)})


# ---------------------------------------------------------------------------- report


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


TABLE_HEADER = (
    "| tokenizer | vocab | train s | peak RSS MB | RSS before training MB | encode MB/s | encode MB/s (transformers) "
    "| zh chars/token | zh bytes/token | en chars/token | en bytes/token |"
)


def format_table(rows: list[Row]) -> str:
    lines = [TABLE_HEADER, "|---|" + "---:|" * 10]
    for r in rows:
        cells = [
            r.name,
            f"{r.vocab:,}",
            _num(r.train_s, ".1f"),
            _num(r.peak_mb, ",.0f"),
            _num(r.loaded_mb, ",.0f"),
            _num(r.encode_mbps, ".2f"),
            _num(r.hf_encode_mbps, ".2f"),
        ]
        for lang in LANGS:
            c = r.compression[lang]
            cells += [f"{c.chars_per_token:.3f}", f"{c.bytes_per_token:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def aims(trained: dict[tuple[str, int], Row], vocab_sizes: list[int]) -> list[str]:
    """The issues' aims (2 and 16), checked per vocabulary size for the trainers that ran."""
    out = []
    for v in vocab_sizes:
        ours, before, base, sp = (trained.get((kind, v)) for kind in ("ours", "before", "baseline", "spm"))
        if ours is None:
            continue
        if sp is not None:
            out.append(
                f"- vocab {v:,}: training at most as long as sentencepiece's: "
                f"**{'met' if ours.train_s <= sp.train_s else 'not met'}** ({ours.train_s:.1f} s vs {sp.train_s:.1f} s); "
                f"peak memory at most sentencepiece's: **{'met' if ours.peak_mb <= sp.peak_mb else 'not met'}** "
                f"({ours.peak_mb:,.0f} MB vs {sp.peak_mb:,.0f} MB)."
            )
        for lang in LANGS:
            a = ours.compression[lang]
            if before is not None:
                b = before.compression[lang]
                out.append(
                    f"- vocab {v:,}, {lang}: compression no worse than before: "
                    f"**{'met' if a.bytes_per_token >= b.bytes_per_token else 'not met'}** "
                    f"({a.chars_per_token:.3f} vs {b.chars_per_token:.3f} chars/token, "
                    f"{a.bytes_per_token / b.bytes_per_token - 1:+.2%})."
                )
            if base is not None:
                c = base.compression[lang]
                out.append(
                    f"- vocab {v:,}, {lang}: compression better than the plain byte-level baseline: "
                    f"**{'met' if a.chars_per_token > c.chars_per_token else 'not met'}** "
                    f"({a.chars_per_token:.3f} vs {c.chars_per_token:.3f} chars/token, "
                    f"{a.chars_per_token / c.chars_per_token - 1:+.1%})."
                )
    return out


def machine() -> str:
    model = "unknown CPU"
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
        mem_kib = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal")))
    except (OSError, StopIteration):
        mem_kib = 0
    return f"{os.cpu_count()} cores, {model}, {mem_kib / 2**20:.0f} GiB RAM, Python {platform.python_version()}"


def library_versions() -> str:
    import sentencepiece
    import tokenizers
    import transformers

    return (
        f"tokenizers {tokenizers.__version__}, sentencepiece {sentencepiece.__version__}, "
        f"transformers {transformers.__version__}"
    )


def results_section(table: str, aim_lines: list[str], info: dict) -> str:
    return f"""## Tokenizer

Date: {info["date"]}. Machine: {info["machine"]}; {info["versions"]}.
Command: `{info["command"]}`

Training text: {info["train_text"]}, read once through `tokenizer.sources`.
Ours and the BpeTrainer rows get the whole documents (in batches of 512); sentencepiece gets the same
documents split at newlines into {info["spm_lines"]:,} non-empty lines (`sentence_iterator`, with
`max_sentence_length` raised to the longest line so that none is skipped). All train from memory.
Held-out text: every `*_val.jsonl` file, {info["heldout"]}.

- **train s**: wall clock of training only; the text is already in memory and saving is not timed. Each
  trainer runs in a fresh process of its own; **peak RSS** is that process's `ru_maxrss` (interpreter and
  text included); for ours, whose counting runs in worker processes, the larger of that and, while they
  ran, this process's peak until counting ended plus each worker's own peak (an upper bound on what was
  held at once); **RSS before training** is its resident memory once the text was loaded.
- **encode MB/s**: held-out text (zh + en) encoded in batches of {ENCODE_BATCH_DOCS} documents, no special
  tokens, fastest of {info["encode_rounds"]} run(s), after all training; each round encodes with every tokenizer in turn:
  `Tokenizer.encode_batch` (tokenizers), `SentencePieceProcessor.encode` on a list with {os.cpu_count()} threads,
  and, in the next column, the transformers `PreTrainedTokenizerFast` batch call.
- **chars/token, bytes/token**: Unicode characters and UTF-8 bytes of held-out text per token.
- sentencepiece: `model_type=bpe, byte_fallback=True, character_coverage={info["spm_coverage"]}`,
  identity normalisation, `remove_extra_whitespaces=False`, `split_digits=True`,
  `allow_whitespace_only_pieces=True`, `num_threads={os.cpu_count()}`. It never sees a newline in training,
  so each newline in held-out text costs it one byte-fallback token.
- The machine is shared with other engineers' jobs while this ran: timings are noisy, and the same trainer's
  time can differ by 2-3x between runs; compression numbers are exact and repeat from run to run.

{table}

Aims (issues 2 and 16):
{chr(10).join(aim_lines)}
"""


def write_section(path: Path, section: str) -> None:
    """Put `section` in place of the file's `## Tokenizer` section (or append it), keeping the others."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    pattern = re.compile(r"^## Tokenizer\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "data" / "corpus")
    parser.add_argument("--tokenizers_dir", type=Path, default=REPO.parent / "shared" / "data" / "tokenizers")
    parser.add_argument("--vocab_sizes", type=int, nargs="+", default=[32000, 64000])
    parser.add_argument(
        "--trainers", nargs="+", choices=TRAINERS, default=list(TRAINERS), help="Which trainers to run (default: all)."
    )
    parser.add_argument("--max_bytes", default=None, help="Train on a slice of this size, e.g. 5MB (default: all).")
    parser.add_argument(
        "--encode_rounds",
        type=int,
        default=None,
        help=f"Encode timing rounds, fastest kept (default: {ENCODE_ROUNDS}; 1 for a quick check with --max_bytes).",
    )
    parser.add_argument("--write_results", action="store_true", help="Replace the ## Tokenizer section of --results.")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md")
    parser.add_argument("--save_dir", type=Path, default=None, help="Keep the trained tokenizers here.")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    if args.encode_rounds is None:
        args.encode_rounds = 1 if args.max_bytes else ENCODE_ROUNDS
    return args


def train_all(
    docs: list[str], vocab_sizes: list[int], workdir: Path, trainers=TRAINERS
) -> tuple[dict[tuple[str, int], Row], dict]:
    """Train every trainer at every vocab size into workdir; rows hold time and memory so far."""
    docs_path = workdir / "docs.jsonl"
    with open(docs_path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    char_counts = Counter()
    for doc in docs:
        char_counts.update(doc)
    char_counts.pop("\n", None)  # sentencepiece is given lines
    coverages = {v: spm_coverage(char_counts, v) for v in vocab_sizes}

    rows = {}
    for v in vocab_sizes:
        for kind in trainers:
            print(f"training {kind} at vocab {v:,} ...", flush=True)
            stats = run_isolated(train_job, kind, v, str(docs_path), str(trained_path(workdir, kind, v)), coverages[v])
            name = f"{TRAINER_LABELS[kind]} {v / 1000:g}k"
            rows[(kind, v)] = Row(name, v, stats["seconds"], stats["peak_mb"], stats["loaded_mb"])
            print(f"  {stats['seconds']:.1f} s, peak {stats['peak_mb']:,.0f} MB", flush=True)
    return rows, coverages


def trained_path(workdir: Path, kind: str, vocab_size: int) -> Path:
    # sentencepiece takes a prefix and writes PREFIX.model and PREFIX.vocab
    return workdir / (f"{kind}-{vocab_size}" if kind == "spm" else f"{kind}-{vocab_size}.json")


def load_trained(kind: str, row: Row, path: Path) -> Candidate:
    if kind == "spm":
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=f"{path}.model")
        row.vocab = sp.get_piece_size()
        return Candidate(row, {"encode_mbps": sentencepiece_lengths(sp)})
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    row.vocab = tok.get_vocab_size()  # below the asked size when the text has too few frequent pairs
    return hf_style(row, tok, bpe.to_transformers(tok))


def load_references(tokenizers_dir: Path) -> list[Candidate]:
    from transformers import PreTrainedTokenizerFast

    candidates = []
    for name, folder in REFERENCES.items():
        hf = PreTrainedTokenizerFast(tokenizer_file=str(tokenizers_dir / folder / "tokenizer.json"))
        candidates.append(hf_style(Row(name, len(hf)), hf.backend_tokenizer, hf))
    return candidates


def _mb(stats: dict[str, ReadStats]) -> str:
    parts = [f"{lang} {s.bytes / 1e6:,.1f} MB ({s.docs:,} docs)" for lang, s in stats.items()]
    return f"{sum(s.bytes for s in stats.values()) / 1e6:,.1f} MB of UTF-8 text: " + ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # GPT-2's 1,024-token limit warning is irrelevant to counting tokens
    args = parse_args(argv)
    max_bytes = parse_size(args.max_bytes, "--max_bytes") if args.max_bytes else None
    docs, stats = read_training_docs(args.corpus, max_bytes, args.seed)
    heldout = read_heldout(args.corpus)
    print(f"training text: {_mb(stats)}", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-tok-") as tmp:
        workdir = args.save_dir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        trained, coverages = train_all(docs, args.vocab_sizes, workdir, args.trainers)
        candidates = [load_trained(kind, row, trained_path(workdir, kind, v)) for (kind, v), row in trained.items()]
    candidates += load_references(args.tokenizers_dir)
    print(f"encoding the held-out text ({args.encode_rounds} round(s)) ...", flush=True)
    measure_all(candidates, heldout, args.encode_rounds)
    rows = [c.row for c in candidates]

    table = format_table(rows)
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": library_versions(),
        "command": shlex.join(["python3", "bench/tokenizer.py", *(sys.argv[1:] if argv is None else argv)]),
        "train_text": _mb(stats),
        "spm_lines": sum(1 for doc in docs for line in doc.split("\n") if line),
        "heldout": _mb(
            {lang: ReadStats(docs=len(d), bytes=sum(len(x.encode()) for x in d)) for lang, d in heldout.items()}
        ),
        "encode_rounds": args.encode_rounds,
        "spm_coverage": ", ".join(f"{c:.4g} at {v:,}" for v, c in coverages.items()),
    }
    aim_lines = aims(trained, args.vocab_sizes)
    print("\n" + table + "\n\n" + "\n".join(aim_lines))
    if args.write_results:
        write_section(args.results, results_section(table, aim_lines, info))
        print(f"\nwrote the ## Tokenizer section of {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
