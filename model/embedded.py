"""Weights that ship inside the package, trained by this project on generated data: ``make default-model``
(:mod:`kmnrt.training.default_model`); the model card is docs/default-model.md."""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
EMBEDDED = {"tiny": "tiny_synthetic.safetensors", "small": "small_synthetic.safetensors"}


def default_checkpoint(config_name: str) -> Path | None:
    """The embedded checkpoint of a config, or None if the config has none (or it is not installed)."""
    name = EMBEDDED.get(config_name)
    path = WEIGHTS_DIR / name if name else None
    return path if path is not None and path.is_file() else None
