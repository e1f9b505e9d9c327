"""The loss curve of a run as a PNG (matplotlib, imported and set to the Agg backend only when plotting)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def moving_average(values: list[float], window: int) -> np.ndarray:
    """Trailing mean over up to ``window`` values (shorter at the start), same length as ``values``."""
    data = np.asarray(values, dtype=np.float64)
    sums = np.cumsum(np.r_[0.0, data])
    ends = np.arange(1, data.size + 1)
    starts = np.maximum(0, ends - window)
    return (sums[ends] - sums[starts]) / (ends - starts)


def plot_loss_curve(losses: list[float], path: str | os.PathLike[str], title: str = "training loss") -> Path:
    """Raw batch losses and their moving average against the iteration; written atomically."""
    import matplotlib

    matplotlib.use("Agg")  # no display here, and none needed: the figure only goes to a file
    import matplotlib.pyplot as plt

    path = Path(path)
    window = max(1, len(losses) // 50)
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    axes.plot(losses, color="0.75", linewidth=0.8, label="batch loss")
    axes.plot(moving_average(losses, window), color="C0", linewidth=1.6, label=f"mean of {window}")
    axes.set_xlabel("iteration")
    axes.set_ylabel("cross-entropy (B and C)")
    axes.set_title(title)
    if losses and min(losses) > 0:
        axes.set_yscale("log")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    try:
        figure.savefig(tmp)
        os.replace(tmp, path)
    finally:
        plt.close(figure)
        tmp.unlink(missing_ok=True)
    return path
