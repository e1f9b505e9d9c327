"""Summaries of timing samples, speed-ups against the baseline, and process/device memory readings."""

from __future__ import annotations

import re
import resource
import sys
from pathlib import Path

import numpy as np

from kmnrt.runtime.timing import STAGES  # noqa: F401  (re-exported: the report orders stages by it)

MAIN_STAGES = ("query_encode", "read", "decode", "memorize")
END_TO_END = "end_to_end"
PERCENTILES = {"median_ms": 50, "p90_ms": 90, "p99_ms": 99}


def summarize(seconds: list[float]) -> dict[str, float]:
    """Milliseconds: median, p90, p99 (linear interpolation), mean, min, max, and the sample count."""
    values = np.asarray(seconds, dtype=np.float64) * 1000.0
    if values.size == 0:
        raise ValueError("no samples to summarise")
    summary = {key: float(np.percentile(values, q)) for key, q in PERCENTILES.items()}
    summary.update(mean_ms=float(values.mean()), min_ms=float(values.min()), max_ms=float(values.max()),
                   samples=int(values.size))
    return summary


def summarize_stages(samples: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per-stage summaries over steps (each step a {stage: seconds} dict); stages in :data:`STAGES` order."""
    names = [s for s in STAGES if any(s in step for step in samples)]
    return {stage: summarize([step.get(stage, 0.0) for step in samples]) for stage in names}


def speedups(result: dict, baseline: dict) -> dict[str, float | None]:
    """Baseline median / this median, per stage and end to end (> 1: faster than the baseline)."""
    ratios: dict[str, float | None] = {}
    pairs = [(END_TO_END, baseline[END_TO_END], result[END_TO_END])]
    pairs += [(s, baseline["stages"].get(s), result["stages"].get(s)) for s in STAGES]
    for name, base, ours in pairs:
        if base is None or ours is None:
            continue
        ratios[name] = base["median_ms"] / ours["median_ms"] if ours["median_ms"] > 0 else None
    return ratios


# --- memory ---------------------------------------------------------------------------------------------------

_STATUS = Path("/proc/self/status")


def rss_bytes() -> int | None:
    """The process's resident set now (Linux), or None."""
    return _status_kb("VmRSS")


def peak_rss_bytes() -> int | None:
    """The process's RSS high-water mark since start or the last :func:`reset_peak_rss`."""
    peak = _status_kb("VmHWM")
    if peak is not None:
        return peak
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def reset_peak_rss() -> bool:
    """Reset the RSS high-water mark to the current RSS (Linux >= 4.0: ``5 > /proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_kb(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None
