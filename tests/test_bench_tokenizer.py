"""The tokenizer benchmark runs end to end on a small slice and reports every tokenizer."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "data" / "corpus"
EXPECTED_ROWS = [
    "ours (Shuangyu BPE) 2k",
    "ours before issue 16 (tokenizers BpeTrainer) 2k",
    "plain byte-level BPE (GPT-2 pre-tokenizer) 2k",
    "sentencepiece BPE 2k",
    "GPT-2 (reference)",
    "MiniMind (reference)",
]


def _table_rows(markdown: str) -> dict[str, list[str]]:
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] != "tokenizer":
            rows[cells[0]] = cells[1:]
    return rows


def _number(cell: str) -> float:
    return float(cell.replace(",", ""))


@pytest.mark.skipif(not CORPUS.is_dir(), reason="the shared corpus is not checked out beside the repository")
def test_small_benchmark_reports_every_tokenizer(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Model\n\nkept as is\n")
    cmd = [
        sys.executable,
        "bench/tokenizer.py",
        "--max_bytes",
        "2MB",
        "--vocab_sizes",
        "2000",
        "--results",
        str(results),
    ]
    # without --write_results (a quick check) the results file is left as it was
    quick = subprocess.run(
        [*cmd, "--trainers", "ours"], cwd=REPO, check=True, timeout=300, capture_output=True, text=True
    )
    assert "| ours" in quick.stdout and "wrote" not in quick.stdout
    assert results.read_text() == "# Benchmark results\n\n## Model\n\nkept as is\n"
    subprocess.run([*cmd, "--write_results"], cwd=REPO, check=True, timeout=300, capture_output=True)

    text = results.read_text()
    assert "## Model\n\nkept as is" in text  # other sections survive
    rows = _table_rows(text.split("## Tokenizer", 1)[1])
    assert list(rows) == EXPECTED_ROWS
    for name, cells in rows.items():
        vocab, train_s, peak, loaded, encode, hf_encode, *compression = cells
        trained = not name.endswith("(reference)")
        numbers = [vocab, encode, *compression] + ([train_s, peak, loaded] if trained else [])
        numbers += [hf_encode] if not name.startswith("sentencepiece") else []
        assert all(_number(n) > 0 for n in numbers), (name, cells)
