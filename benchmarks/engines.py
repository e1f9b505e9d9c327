"""One small interface over the runtime's backends and the baseline, and the step timer.

The runtime's memory size T is pinned with its public API: the tracker is loaded with a ``mem_every`` no video
reaches (no frame becomes permanent by itself), ``Tracker.fill_memory`` adds permanent frames, and every step adds
the previous frame as the temporary memory frame. So after ``T - 1`` permanent frames every step reads exactly T
frames. T = 1 (the first frame alone) needs the temporary frame dropped after each step
(:meth:`kmnrt.runtime.memory_bank.MemoryBank.drop_temporary`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from kmnrt.benchmarks.baseline import ReferenceEngine, synchronize
from kmnrt.errors import UserInputError

BASELINE = "reference"
NEVER = 10**9  # a mem_every no benchmark reaches: permanent frames come from fill_memory only


class Engine(Protocol):
    name: str
    device: torch.device

    def start(self, frame: np.ndarray, mask: np.ndarray): ...
    def fill(self, state, frames: list[np.ndarray]) -> None: ...
    def step(self, state, frame: np.ndarray) -> dict[str, float]: ...
    def memory_frames(self, state) -> int: ...
    def permanent_frames(self, state) -> int: ...
    def drop_temporary(self, state) -> None: ...
    def describe(self) -> str: ...
    def close(self) -> None: ...


class RuntimeEngine:
    """A :class:`kmnrt.runtime.Tracker` on one backend."""

    def __init__(self, bundle: str | Path, backend: str, device: str | None = None, mem_every: int | None = NEVER):
        """``mem_every`` None: the bundle's own, as a real video runs."""
        from kmnrt.runtime.tracker import Tracker

        self.tracker = Tracker.from_bundle(bundle, backend=backend, device=device, mem_every=mem_every)
        self.name = self.tracker.backend
        self.device = self.tracker.device

    def describe(self) -> str:
        return self.tracker.runner.describe()

    def close(self) -> None:
        self.tracker.close()

    def start(self, frame: np.ndarray, mask: np.ndarray):
        return self.tracker.start(frame, mask)

    def fill(self, state, frames: list[np.ndarray]) -> None:
        self.tracker.fill_memory(state, frames)

    def step(self, state, frame: np.ndarray) -> dict[str, float]:
        return self.tracker.step(state, frame, keep_probs=False).times

    def step_batch(self, states: list, frames: list[np.ndarray]) -> list[dict[str, float]]:
        return [r.times for r in self.tracker.step_batch(states, frames, keep_probs=False)]

    def memory_frames(self, state) -> int:
        return state.memory_frames

    def permanent_frames(self, state) -> int:
        return state.bank.num_permanent

    def drop_temporary(self, state) -> None:
        state.bank.drop_temporary()


def open_engine(backend: str, bundle: str | Path, device: str | None, natural_memory: bool = False) -> Engine:
    """``natural_memory``: memorise every ``mem_every``-th frame as a real video does (the bundle's default), instead
    of pinning T; the runtime then caps the bank at the bundle's max memory and the baseline grows without bound."""
    if backend == BASELINE:
        return ReferenceEngine.from_bundle(bundle, device or "cpu", natural_memory)
    return RuntimeEngine(bundle, backend, device, mem_every=None if natural_memory else NEVER)


def settle_memory(engine: Engine, state, memory: int, frames, limit: int = 3) -> None:
    """Bring a session to exactly ``memory`` frames for its next step: permanent frames via ``fill``, then untimed
    steps until the temporary slot exists (T >= 2) or is dropped (T = 1)."""
    permanent = max(1, memory - 1)
    have = engine.permanent_frames(state)
    if have > permanent:
        raise UserInputError(f"internal: a session with {have} permanent frames cannot be brought down to T={memory}")
    if permanent > have:
        engine.fill(state, [next(frames) for _ in range(permanent - have)])
    for _ in range(limit):
        if memory == 1:
            engine.drop_temporary(state)
        if engine.memory_frames(state) == memory:
            return
        engine.step(state, next(frames))
    raise UserInputError(f"internal: {engine.name} could not hold the memory at T={memory} "
                         f"(it holds {engine.memory_frames(state)})")


def timed_step(engine: Engine, state, frame: np.ndarray, memory: int) -> tuple[float, dict[str, float]]:
    """One step with the memory held at ``memory``: (end-to-end wall seconds, the engine's stage seconds). The
    device is synchronised before both clock reads."""
    if engine.memory_frames(state) != memory:
        raise UserInputError(f"internal: {engine.name} would read {engine.memory_frames(state)} memory frames, "
                             f"not {memory}")
    synchronize(engine.device)
    start = time.perf_counter()
    stages = engine.step(state, frame)
    synchronize(engine.device)
    elapsed = time.perf_counter() - start
    if memory == 1:
        engine.drop_temporary(state)
    return elapsed, stages
