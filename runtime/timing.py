"""Per-stage timing of tracker steps, at no extra device synchronisation.

On the CPU a stage is wall time (``perf_counter``). On CUDA, CUDA events are recorded on the runner's stream
between stages and read once the step's index mask has reached the host: that copy already waits for the stream,
so timing adds no synchronisation of its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

STAGES = ("pre", "query_encode", "read", "decode", "post", "memorize")
STAGE_TITLES = {
    "pre": "pre (frame to input)",
    "query_encode": "query encode",
    "read": "memory read",
    "decode": "decode",
    "post": "post (mask at frame size)",
    "memorize": "memorize",
    "total": "total per frame",
}


class StepClock:
    """Marks stage boundaries of one step; :meth:`seconds` gives the durations (and ``total``)."""

    def __init__(self, stream: torch.cuda.Stream | None):
        self.stream = stream
        self.marks: list[tuple[str, object]] = [("start", self._now())]

    def _now(self) -> object:
        if self.stream is None:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(self.stream)
        return event

    def lap(self, stage: str) -> None:
        """The stage ``stage`` ends now."""
        self.marks.append((stage, self._now()))

    def seconds(self) -> dict[str, float]:
        """{stage: seconds} for the stages marked, plus ``total``. On CUDA, call it after the step's results
        reached the host (it waits for the last event otherwise)."""
        times: dict[str, float] = {}
        for (_, start), (stage, end) in zip(self.marks, self.marks[1:]):
            if self.stream is None:
                elapsed = end - start  # type: ignore[operator]
            else:
                end.synchronize()  # type: ignore[union-attr]
                elapsed = start.elapsed_time(end) / 1000.0  # type: ignore[union-attr]
            times[stage] = times.get(stage, 0.0) + elapsed
        times["total"] = sum(times.values())
        return times


@dataclass
class StageTimes:
    """Step times collected over a video, for the table ``kmnrt run`` prints."""

    samples: dict[str, list[float]] = field(default_factory=dict)   # stage -> seconds per step

    def add(self, times: dict[str, float]) -> None:
        for stage, seconds in times.items():
            self.samples.setdefault(stage, []).append(seconds)

    @property
    def steps(self) -> int:
        return len(self.samples.get("total", []))

    def median_ms(self, stage: str) -> float:
        return 1000.0 * float(np.median(self.samples[stage]))

    def format_table(self) -> str:
        """Median and p90 per stage in milliseconds, and the frames per second the median total gives."""
        lines = [f"{'stage':<28}{'median ms':>10}{'p90 ms':>10}{'frames':>8}"]
        for stage in (*STAGES, "total"):
            values = self.samples.get(stage)
            if values:
                lines.append(f"{STAGE_TITLES[stage]:<28}{1000 * np.median(values):>10.2f}"
                             f"{1000 * np.percentile(values, 90):>10.2f}{len(values):>8}")
        if self.steps:
            median = self.median_ms("total")
            lines.append(f"{'fps (1000 / median total)':<28}{1000.0 / median if median > 0 else float('inf'):>10.2f}")
        return "\n".join(lines)
