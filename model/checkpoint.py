"""Checkpoints: STM's released layout (``STM_weights.pth``) and the project's own format.

STM's file is a plain state dict saved from ``nn.DataParallel(STM())``: 558 keys under ``module.``, module names
``Encoder_M``/``Encoder_Q``/``KV_M_r4``/``KV_Q_r4``/``Decoder`` and ``Key``/``Value`` inside the embeddings; BN
``num_batches_tracked`` may be absent. KMN adds no parameters, so it loads into the ``paper`` config as is.

The project's format is a safetensors file whose metadata holds the model config: loading it never runs pickled
code. ``.pth``/``.pt`` files are read with ``torch.load(weights_only=True)`` for the same reason.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from kmnrt.errors import CheckpointError, UserInputError
from kmnrt.model.config import CONFIGS, MAX_SIDE, ModelConfig, ReadConfig
from kmnrt.model.kmn import KMN, build_model

FORMAT = "kmnrt-checkpoint-v1"

# STM name -> ours, applied to the first component after "module." and to the KeyValue convs.
STM_MODULES = {
    "Encoder_M": "memory_encoder",
    "Encoder_Q": "query_encoder",
    "KV_M_r4": "memory_kv",
    "KV_Q_r4": "query_kv",
    "Decoder": "decoder",
}
_STM_KV = re.compile(r"^(memory_kv|query_kv)\.(Key|Value)\.")


def is_stm_layout(state: dict[str, Tensor]) -> bool:
    names = {key.removeprefix("module.").split(".", 1)[0] for key in state}
    return bool(names & set(STM_MODULES))


def from_stm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """STM's key names -> this project's (``module.`` stripped, module and Key/Value renamed)."""
    converted = {}
    for key, value in state.items():
        head, _, rest = key.removeprefix("module.").partition(".")
        name = f"{STM_MODULES.get(head, head)}.{rest}"
        name = _STM_KV.sub(lambda m: f"{m.group(1)}.{m.group(2).lower()}.", name)
        converted[name] = value
    return converted


def to_stm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """This project's key names -> STM's released layout (with ``module.``); the inverse of :func:`from_stm`."""
    ours_to_stm = {v: k for k, v in STM_MODULES.items()}
    converted = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in ("memory_kv", "query_kv"):
            rest = rest.replace("key.", "Key.", 1) if rest.startswith("key.") else rest.replace("value.", "Value.", 1)
        converted[f"module.{ours_to_stm.get(head, head)}.{rest}"] = value
    return converted


def _short_list(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" … and {len(items) - limit} more" if len(items) > limit else "")


def fitting_configs(state: dict[str, Tensor]) -> list[str]:
    """Names of the built-in configs whose parameter shapes this (converted) state dict matches (BatchNorm's
    ``num_batches_tracked`` may be missing, but is a scalar where present)."""
    if any(k.endswith("num_batches_tracked") and v.dim() for k, v in state.items()):
        return []
    fits = []
    for name, config in CONFIGS.items():
        expected = {k: v.shape for k, v in KMN(config).state_dict().items() if not k.endswith("num_batches_tracked")}
        given = {k: v.shape for k, v in state.items() if not k.endswith("num_batches_tracked")}
        if expected == given:
            fits.append(name)
    return fits


def load_state_into(model: nn.Module, state: dict[str, Tensor], source: str = "checkpoint") -> None:
    """Strictly load ``state`` into ``model``; BN ``num_batches_tracked`` may be missing. A mismatch raises one
    :class:`CheckpointError` listing missing keys, unexpected keys and shape conflicts."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    conflicts = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                 for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or conflicts:
        lines = [f"{source} does not fit the {getattr(model, 'config', None) and model.config.name!s} model:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_short_list(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_short_list(unexpected)}")
        if conflicts:
            lines.append(f"  shape conflicts ({len(conflicts)}) checkpoint vs model: {_short_list(conflicts, 4)}")
        fits = fitting_configs(state)
        lines.append(f"  it fits --config {fits[0]}" if fits else "  it fits none of the built-in configs "
                     f"({', '.join(CONFIGS)}); is it a KMN/STM checkpoint?")
        raise CheckpointError("\n".join(lines))
    with torch.no_grad():
        for key, tensor in state.items():
            expected[key].copy_(tensor)


def _unreadable(path: Path, exc: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in terms of what the user can do about it."""
    with path.open("rb") as file:
        head = file.read(2)
    if head[:2] != b"PK" and head[:1] != b"\x80":  # torch.save writes a zip archive (old versions a pickle)
        return (f"checkpoint {path} is neither a PyTorch checkpoint (a file torch.save wrote) nor a .safetensors "
                f"file")
    blocked = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if blocked:
        return (f"checkpoint {path} holds a Python object ({blocked.group(1)}) besides tensors; kmnrt does not "
                f"unpickle objects, since that can run code. Save the model's state dict alone "
                f"(torch.save(model.state_dict(), 'weights.pth')) and pass that file")
    return f"checkpoint {path} could not be read (a damaged or truncated file?): {str(exc).splitlines()[0]}"


def _check_file(path: Path) -> None:
    if path.is_dir():
        hint = " (a bundle's weights are its weights.safetensors)" if (path / "weights.safetensors").is_file() else ""
        raise CheckpointError(f"checkpoint {path} is a folder; give the checkpoint file{hint}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")


def _safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    _check_file(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {exc}") from None


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], ModelConfig | None]:
    """Read a checkpoint file -> (state dict in this project's names, its config if the file records one)."""
    path = Path(path)
    _check_file(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        metadata = _safetensors_metadata(path)
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {exc}") from None
        config = ModelConfig.from_dict(json.loads(metadata["config"])) if "config" in metadata else None
        return (from_stm(state) if is_stm_layout(state) else state), config
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign or corrupt files
        raise CheckpointError(_unreadable(path, exc)) from None
    config = None
    if isinstance(raw, dict) and "model" in raw and isinstance(raw["model"], dict):
        config = ModelConfig.from_dict(raw["config"]) if isinstance(raw.get("config"), dict) else None
        raw = raw["model"]
    elif isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors")
    return (from_stm(raw) if is_stm_layout(raw) else raw), config


def _recorded(checkpoint: str | os.PathLike, key: str) -> str | None:
    """A metadata entry of a kmnrt safetensors checkpoint; None for other formats or when it is absent."""
    if Path(checkpoint).suffix != ".safetensors":
        return None
    return _safetensors_metadata(Path(checkpoint)).get(key)


def recommended_read(checkpoint: str | os.PathLike) -> ReadConfig | None:
    """The memory read a kmnrt checkpoint recommends for its weights (metadata ``read``, written by the recipe that
    measured it, e.g. the embedded default model's sigma), or None if it records none."""
    recorded = _recorded(checkpoint, "read")
    if recorded is None:
        return None
    try:
        read = json.loads(recorded)
        return ReadConfig(read["kind"], float(read["sigma"]))
    except (KeyError, TypeError, ValueError, UserInputError) as exc:
        raise CheckpointError(f"checkpoint {checkpoint} records an invalid read {recorded!r}: {exc}") from None


def choose_read(kind: str | None, sigma: float | None, checkpoint: str | os.PathLike | None) -> ReadConfig:
    """The read to run: what the user set, else what the checkpoint recommends, else :class:`ReadConfig`'s
    defaults (KMN, the paper's sigma 7). ``kind`` and ``sigma`` are resolved independently."""
    fallback = (recommended_read(checkpoint) if checkpoint is not None else None) or ReadConfig()
    return ReadConfig(kind or fallback.kind, fallback.sigma if sigma is None else sigma)  # type: ignore[arg-type]


def recommended_short_side(checkpoint: str | os.PathLike) -> int | None:
    """The short side (pixels) a kmnrt checkpoint recommends tracking at (metadata ``short_side``, written by the
    recipe that trained its weights at that scale and chose the side on validation videos), or None: track frames
    at their own size."""
    recorded = _recorded(checkpoint, "short_side")
    if recorded is None:
        return None
    if not recorded.isdigit() or int(recorded) < 16:
        raise CheckpointError(f"checkpoint {checkpoint} records an invalid short side {recorded!r}")
    return int(recorded)


def choose_short_side(given: int | None, checkpoint: str | os.PathLike | None) -> int | None:
    """The short side to track at: what the user set (0 = the frames' own size), else the checkpoint's."""
    if given is not None:
        if given != 0 and not 16 <= given <= MAX_SIDE:
            raise UserInputError(f"--short-side must be 0 (the frames' own size) or between 16 and "
                                 f"{MAX_SIDE} pixels, got {given}")
        return given or None
    return recommended_short_side(checkpoint) if checkpoint is not None else None


def load_model(config: ModelConfig, checkpoint: str | os.PathLike | None = None,
               read: ReadConfig | None = None) -> KMN:
    """A KMN of ``config`` in eval mode, with the checkpoint's weights (or seeded random ones without one), reading
    with ``read``, else the read the checkpoint recommends (as ``kmnrt track`` does), else the paper's."""
    model = build_model(config, choose_read(None, None, checkpoint) if read is None else read)
    if checkpoint is not None:
        state, stored_config = read_checkpoint(checkpoint)
        if stored_config is not None and stored_config != config:
            raise CheckpointError(f"checkpoint {checkpoint} was saved for config '{stored_config.name}', not "
                                  f"'{config.name}': pass --config {stored_config.name}")
        load_state_into(model, state, source=f"checkpoint {checkpoint}")
    return model


def save_checkpoint(model: KMN, path: str | os.PathLike, recommended: ReadConfig | None = None,
                    short_side: int | None = None, state: dict[str, Tensor] | None = None) -> Path:
    """Write the project's format (safetensors + config metadata) atomically; ``recommended`` records the read
    these weights were measured to work best with (see :func:`recommended_read`), ``short_side`` the short side
    to track at (:func:`recommended_short_side`); ``state``: weights to write instead of the model's own (e.g.
    averaged ones), under the model's config."""
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in (state or model.state_dict()).items()}
    metadata = {"format": FORMAT, "config": json.dumps(model.config.to_dict())}
    if recommended is not None:
        metadata["read"] = json.dumps({"kind": recommended.kind, "sigma": recommended.sigma})
    if short_side is not None:
        metadata["short_side"] = str(int(short_side))
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        # save() to bytes, not save_file(): that one creates the file readable by its owner only (mode 0600)
        tmp.write_bytes(save(state, metadata=metadata))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
