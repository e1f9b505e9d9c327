"""The deployment runtime: a device-resident memory bank and per-frame engine calls behind a session API.

``from kmnrt.runtime import Tracker`` (imported lazily so ``import kmnrt.runtime.X`` stays light).
"""

from __future__ import annotations

from kmnrt.lazy import lazy_exports

_EXPORTS = {"Tracker": "kmnrt.runtime.tracker", "SessionState": "kmnrt.runtime.state",
            "StepResult": "kmnrt.runtime.state"}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
