"""The loss curves of a run as a PNG: training loss and held-out loss per language against tokens seen (left),
held-out bits per byte per language (right), from OUTPUT_DIR/train_log.jsonl."""

from __future__ import annotations

import os
from pathlib import Path

from shuangyu.training.run_log import LOG_NAME, read_train_log


def read_log(run_dir: Path) -> tuple[list[dict] | None, bool]:
    """The log's rows in step order (None when the run folder has no log), and whether its last line was cut off
    and left out; a resumed run rewrote the rows past its checkpoint, so steps are unique."""
    path = run_dir / LOG_NAME
    if not path.is_file():
        return None, False
    rows, cut_off = read_train_log(path)
    return sorted(rows, key=lambda row: row["step"]), cut_off


def languages(rows: list[dict]) -> list[str]:
    found = []
    for row in rows:
        for key in row:
            if key.startswith("eval/") and key.endswith("/loss") and key.split("/")[1] not in found:
                found.append(key.split("/")[1])
    return found


def series(rows: list[dict], key: str) -> tuple[list, list] | None:
    """(tokens seen, values) of `key` over the rows that logged it, or None."""
    points = [(row["train/tokens"], row[key]) for row in rows if key in row and "train/tokens" in row]
    return ([t for t, _ in points], [v for _, v in points]) if points else None


def plot_curves(rows: list[dict], png: Path, title: str) -> Path | None:
    """Writes the PNG (atomically) and returns it; None when the log has no training loss to draw."""
    train = series(rows, "train/loss")
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    fig, (loss_ax, bpb_ax) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    loss_ax.plot(*train, color="0.6", linewidth=1, label="training")
    for lang in languages(rows):
        loss_ax.plot(*series(rows, f"eval/{lang}/loss"), marker="o", label=f"held-out {lang}")
        bpb = series(rows, f"eval/{lang}/bits_per_byte")
        if bpb:
            bpb_ax.plot(*bpb, marker="o", label=lang)
    loss_ax.set(xlabel="tokens seen", ylabel="loss (nats per token)", title="loss")
    bpb_ax.set(xlabel="tokens seen", ylabel="bits per byte", title="held-out bits per byte (lower is better)")
    for ax in (loss_ax, bpb_ax):
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
        if ax.has_data():
            ax.legend()
    fig.suptitle(title)
    tmp = png.with_name(f".{png.name}.tmp-{os.getpid()}")  # a reader never sees half a picture
    try:
        fig.savefig(tmp, format="png", dpi=110)
        os.replace(tmp, png)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return png
