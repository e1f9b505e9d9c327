"""The options a run is given that differ from those in an earlier run's ``train_config.json``: a resume is
warned of them, and the default-model recipe refuses to reuse a finished stage trained with others."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from kmnrt.errors import KmnrtWarning
from kmnrt.training.config import TrainConfig

# where or how a run goes, not what it trains: free to differ on a resume (the data is compared as a folder)
_OPERATIONAL = {"out", "resume", "init", "seed", "device", "threads", "workers", "log_every", "checkpoint_every",
                "tensorboard", "data"}


def warn_of_changed_options(config: TrainConfig, recorded: Path) -> None:
    """A resume continues with the options it is given: say which differ from the run's own (a forgotten
    --iterations turns a short run into the preset's thousands, with the lr schedule stretched to them)."""
    changed = changed_options(config, recorded)
    if changed:
        warnings.warn(f"--resume continues with options that differ from the run's ({recorded}): "
                      f"{', '.join(changed)}; it goes on with them (the lr schedule follows --iterations), so give "
                      f"the run's own unless the change is meant", KmnrtWarning, stacklevel=2)


def changed_options(config: TrainConfig, recorded: Path) -> list[str]:
    """The options of ``config`` that change what is trained and differ from a run's ``train_config.json``, each
    as "name new (the run: old)"; none when there is no record to compare with."""
    try:
        before = _flat(json.loads(recorded.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return []  # no record (a state file moved on its own): nothing to compare with
    now = _flat(config.to_dict())
    changed = [f"{key} {now[key]} (the run: {before[key]})" for key in now
               if key in before and before[key] != now[key] and key.split(".")[0] not in _OPERATIONAL]
    if resolved(now.get("data")) != resolved(before.get("data")):  # another folder, not another spelling of it
        changed.append(f"data {_data_name(now.get('data'))} (the run: {_data_name(before.get('data'))})")
    return changed


def resolved(path: str | Path | None) -> Path | None:
    """The full path (train_config.json records the data's, so that a resume from another folder compares it)."""
    return None if path is None else Path(path).resolve()


def _data_name(path: str | None) -> str:
    return "procedural images" if path is None else str(path)


def _flat(options: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in options.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat
