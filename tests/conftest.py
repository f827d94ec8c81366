"""Shared test settings and fixtures: offline Hub access, the shared corpus, small real tokenizers."""

import itertools
import json
import os
import signal
from pathlib import Path

import pytest

# Tests never reach the Hub: the real code paths are exercised on local files.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread per torch process: the tests run side by side (xdist) and most start processes of their own, so two
# threads each only spin waiting for a core (the fast suite: 479 s against 517-550 s with torch's default on 2 cores)
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SHUANGYU_SHARED", REPO.parent / "shared"))
SHARED_CORPUS = SHARED / "data" / "corpus"


@pytest.fixture(autouse=True)
def signal_handlers_restored():
    """train_clm's run keeps its stop handlers after a complete run (the process exits then); a test that runs it
    in-process must not leave them to the tests after it."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


class TerminalWindow:
    """A command run as a terminal window runs it: a pseudo-terminal is its controlling terminal, stdin, stdout and
    stderr. What it shows is read as it comes (a terminal nobody reads blocks the command); `close()` closes the
    window: the command gets SIGHUP, and its writes to the terminal fail from then on."""

    def __init__(self, cmd: list[str], **popen):
        import subprocess
        import threading

        self._terminal, window = os.openpty()
        self.process = subprocess.Popen(
            cmd, stdin=window, stdout=window, stderr=window, start_new_session=True,
            preexec_fn=self._as_a_terminal_starts_it, **popen,
        )  # fmt: skip
        os.close(window)
        self._shown: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @staticmethod
    def _as_a_terminal_starts_it():
        import fcntl
        import termios

        fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # the window's terminal is the command's
        signal.signal(signal.SIGHUP, signal.SIG_DFL)  # heard, even where the tests run under nohup (which ignores it)

    def _read(self):
        try:
            while data := os.read(self._terminal, 65536):
                self._shown.append(data)
        except OSError:  # EIO: the command's side is closed, or the window is
            pass

    def shown(self) -> str:
        return b"".join(self._shown).decode(errors="replace")

    def close(self):
        os.close(self._terminal)


@pytest.fixture
def terminal_window():
    """Starts commands in terminal windows (TerminalWindow); kills what is left of them after the test."""
    windows = []

    def start(cmd: list[str], **popen) -> TerminalWindow:
        windows.append(TerminalWindow(cmd, **popen))
        return windows[-1]

    yield start
    for window in windows:
        if window.process.poll() is None:
            os.killpg(window.process.pid, signal.SIGKILL)
            window.process.wait()


def pytest_collection_modifyitems(config, items):
    """The longest tests first, by their `slow(minutes=N)` mark: in parallel processes (pytest-xdist) a long test
    handed out last keeps one process busy after the others have finished (the slow suite's 6-minute demo test
    left one of 2 cores idle for minutes). The sort is stable: every other test keeps its order."""

    def minutes(item) -> float:
        mark = item.get_closest_marker("slow")
        return mark.kwargs.get("minutes", 0) if mark else 0

    items.sort(key=minutes, reverse=True)


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    if not SHARED_CORPUS.is_dir():
        pytest.fail(f"shared corpus not found at {SHARED_CORPUS}: set SHUANGYU_SHARED to the shared/ folder")
    return SHARED_CORPUS


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir() -> Path:
    """GPT-2's own tokenizer (shared/data/tokenizers/gpt2): <|endoftext|> is also its unk token."""
    folder = SHARED / "data" / "tokenizers" / "gpt2"
    if not (folder / "tokenizer.json").is_file():
        pytest.fail(f"GPT-2's tokenizer not found at {folder}: set SHUANGYU_SHARED to the shared/ folder")
    return folder


def _slice_corpus(src: Path, dst: Path, max_bytes: int) -> Path:
    """The first documents of a shared corpus file, up to about max_bytes of text."""
    size = 0
    with open(src, encoding="utf-8") as fin, open(dst, "w", encoding="utf-8") as fout:
        for line in fin:
            fout.write(line)
            size += len(json.loads(line)["text"].encode("utf-8"))
            if size >= max_bytes:
                break
    return dst


@pytest.fixture(scope="session")
def data_corpus_slices(tmp_path_factory, corpus_dir) -> dict[str, Path]:
    """Slices of the shared corpus (zh reviews and news, en reviews and news), ~100-150 KB of text each."""
    root = tmp_path_factory.mktemp("corpus")
    picks = {
        "zh_reviews": ("zh/reviews.jsonl", 150_000),
        "zh_news": ("zh/news_xinwenlianbo.jsonl", 100_000),
        "en_reviews": ("en/imdb_reviews-00.jsonl", 150_000),
        "en_news": ("en/bbc_news.jsonl", 100_000),
    }
    return {name: _slice_corpus(corpus_dir / rel, root / f"{name}.jsonl", size) for name, (rel, size) in picks.items()}


def _train_tokenizer(files: list[Path], vocab_size: int, out: Path) -> Path:
    from shuangyu.tokenizer import bpe

    def texts():
        for path in files:
            with open(path, encoding="utf-8") as fh:
                for line in itertools.islice(fh, 2000):
                    yield json.loads(line)["text"]

    tok = bpe.train(texts(), vocab_size)
    bpe.to_transformers(tok).save_pretrained(str(out))
    return out


ZH_WORDS = (
    "我们 今天 天气 很好 中国 人工智能 学习 语言 模型 数据 北京 上海 朋友 时间 工作 生活 喜欢 电影 故事 城市".split()
)
EN_WORDS = (
    "the model learns language from text and data in a small city where people read good stories every day".split()
)


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory) -> dict[str, Path]:
    """A tiny made-up zh and en corpus (JSON lines, train and _val files) for tests that need text of the
    right shape but not real text: it needs nothing outside the clone."""
    import random

    rng = random.Random(0)
    root = tmp_path_factory.mktemp("synthetic_corpus")
    files = {}
    for lang, words, sep, end in (("zh", ZH_WORDS, "", "。"), ("en", EN_WORDS, " ", ".")):
        for split, docs in (("train", 400), ("val", 40)):
            path = root / lang / (f"{lang}.jsonl" if split == "train" else f"{lang}_val.jsonl")
            path.parent.mkdir(exist_ok=True)
            lines = [
                json.dumps({"text": sep.join(rng.choices(words, k=rng.randint(8, 40))) + end}, ensure_ascii=False)
                for _ in range(docs)
            ]
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
            files[f"{lang}_{split}"] = path
    return files


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory, synthetic_corpus) -> Path:
    """A real Shuangyu tokenizer (vocab 300) trained on the synthetic corpus, in a second or so."""
    files = [synthetic_corpus["zh_train"], synthetic_corpus["en_train"]]
    return _train_tokenizer(files, 300, tmp_path_factory.mktemp("tiny_tokenizer"))


@pytest.fixture(scope="session")
def data_tokenizer_dir(tmp_path_factory, data_corpus_slices) -> Path:
    """A real Shuangyu tokenizer (vocab 2000) trained on the corpus slices."""
    return _train_tokenizer(list(data_corpus_slices.values()), 2000, tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def data_other_tokenizer_dir(tmp_path_factory, data_corpus_slices) -> Path:
    """A second, different tokenizer (vocab 400), for mismatch tests."""
    return _train_tokenizer([data_corpus_slices["en_news"]], 400, tmp_path_factory.mktemp("tokenizer_other"))


@pytest.fixture(scope="session")
def tiny_cpu_run(tmp_path_factory, data_tokenizer_dir, data_corpus_slices) -> Path:
    """A run of the shipped tiny-cpu preset (configs/tiny-cpu.yaml) through train_clm.py, shortened to fit a
    test: the corpus slices instead of whole files, 24 steps, one process. Its `final/` is what users share."""
    import subprocess
    import sys

    s, out = data_corpus_slices, tmp_path_factory.mktemp("tiny_cpu") / "run"
    args = [
        "--config",
        str(REPO / "configs" / "tiny-cpu.yaml"),
        "--tokenizer_name",
        str(data_tokenizer_dir),
        "--train_files",
        f"zh={s['zh_reviews']}:0.5",
        f"en={s['en_reviews']}:0.5",
        "--validation_files",
        f"zh={s['zh_news']}",
        f"en={s['en_news']}",
        "--max_steps",
        "24",
        "--eval_steps",
        "24",
        "--save_steps",
        "24",
        "--eval_rows",
        "16",
        "--preprocessing_num_workers",
        "1",
        "--output_dir",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "train_clm.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=900,
    )
    if proc.returncode:
        pytest.fail(f"tiny-cpu training failed:\n{proc.stderr[-3000:]}")
    return out


SFT_DATA = SHARED / "data" / "sft"


@pytest.fixture(scope="session")
def sft_data_dir() -> Path:
    if not SFT_DATA.is_dir():
        pytest.fail(f"shared SFT data not found at {SFT_DATA}: set SHUANGYU_SHARED to the shared/ folder")
    return SFT_DATA


@pytest.fixture(scope="session")
def tiny_base_model_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A randomly initialised tiny Shuangyu model saved with the tiny tokenizer (which carries the chat template):
    the 'pretrained' model that instruction-tuning tests start from, in a second."""
    import math

    import torch
    from transformers import AutoTokenizer

    from shuangyu.modeling import ShuangyuConfig, ShuangyuForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    config = ShuangyuConfig.from_preset(
        "tiny",
        vocab_size=64 * math.ceil(len(tok) / 64),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_base") / "model"
    ShuangyuForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def synthetic_chats(tmp_path_factory) -> dict[str, Path]:
    """Short made-up zh and en conversations (messages schema), train and _val, that a tiny model learns in a few
    dozen steps: greetings answered with one fixed reply each, so a test can see it answer and stop."""
    root = tmp_path_factory.mktemp("synthetic_chats")
    pairs = {
        "zh": [("你好", "你好！"), ("今天天气", "今天天气很好。"), ("学习语言", "我们学习语言。")],
        "en": [("hello", "Hello!"), ("the city", "The city is small."), ("good stories", "People read stories.")],
    }
    files = {}
    for lang, qa in pairs.items():
        for split, copies in (("train", 20), ("val", 2)):
            rows = [
                {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                for _ in range(copies)
                for q, a in qa
            ]
            path = root / lang / (f"{lang}.jsonl" if split == "train" else f"{lang}_val.jsonl")
            path.parent.mkdir(exist_ok=True)
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
            files[f"{lang}_{split}"] = path
    return files
