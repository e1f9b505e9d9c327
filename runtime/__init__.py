"""The deployment runtime: a device-resident memory bank and per-frame engine calls behind a session API.

``from kmnrt.runtime import Tracker`` (imported lazily so ``import kmnrt.runtime.X`` stays light).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Tracker", "SessionState", "StepResult"]


def __getattr__(name: str) -> Any:
    if name == "Tracker":
        from kmnrt.runtime.tracker import Tracker

        return Tracker
    if name in ("SessionState", "StepResult"):
        from kmnrt.runtime import state

        return getattr(state, name)
    raise AttributeError(f"module 'kmnrt.runtime' has no attribute {name!r}")
