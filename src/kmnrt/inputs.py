"""Checking and converting what users pass in: frames (any common layout) and index masks."""

from __future__ import annotations

import numbers
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

from kmnrt.errors import UserInputError
from kmnrt.framing import mask_size_mismatch


def frame_as_rgb(frame: np.ndarray | Tensor, where: str) -> np.ndarray | Tensor:
    """An HWC uint8 frame as [H, W, 3] RGB: grayscale ([H, W] or [H, W, 1]) is repeated, RGBA loses its alpha.

    numpy arrays and torch tensors (any device) are accepted and kept as they are otherwise (no copy for RGB).
    """
    if not isinstance(frame, (np.ndarray, Tensor)):
        frame = np.asarray(frame)
    dtype_ok = frame.dtype == (torch.uint8 if isinstance(frame, Tensor) else np.uint8)
    if not dtype_ok:
        floating = frame.is_floating_point() if isinstance(frame, Tensor) else np.issubdtype(frame.dtype, np.floating)
        hint = ("(frame * 255).round().astype(np.uint8) for floats in [0, 1]" if floating else
                "frame.astype(np.uint8) for whole numbers in 0..255")
        raise UserInputError(f"{where}: frames must be uint8 RGB (0..255), got dtype {frame.dtype}; convert it, "
                             f"e.g. {hint}")
    if frame.ndim == 2:
        frame = frame[..., None]
    if frame.ndim != 3 or frame.shape[2] not in (1, 3, 4):
        raise UserInputError(f"{where}: a frame must be an [H, W, 3] RGB image (or [H, W] grayscale, [H, W, 4] "
                             f"RGBA), got shape {tuple(frame.shape)}")
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise UserInputError(f"{where}: the frame is empty ({tuple(frame.shape)})")
    if frame.shape[2] == 1:
        return frame.expand(-1, -1, 3) if isinstance(frame, Tensor) else np.repeat(frame, 3, axis=2)
    return frame[..., :3]


def check_mask(mask: np.ndarray | Tensor, frame_size: tuple[int, int], where: str) -> np.ndarray:
    """A user's index mask as [H, W] uint8 ids, checked against the frame's size."""
    if isinstance(mask, Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise UserInputError(f"{where}: a mask must be a 2-D index image [H, W] of object ids, got shape "
                             f"{mask.shape}")
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    if not np.issubdtype(mask.dtype, np.integer):
        raise UserInputError(f"{where}: a mask must hold integer object ids, got dtype {mask.dtype}")
    if mask.shape != tuple(frame_size):
        raise UserInputError(mask_size_mismatch(where, mask.shape, frame_size))
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise UserInputError(f"{where}: object ids must lie in 1..255 (0 = background), the mask holds "
                             f"{int(mask.min())}..{int(mask.max())}")
    return mask.astype(np.uint8, copy=False)


def mask_ids(mask: np.ndarray) -> list[int]:
    """The object ids present in an index mask, ascending (0 = background is not an object)."""
    return [int(i) for i in np.unique(mask) if i != 0]


def whole_number(value: object, name: str, least: int) -> int:
    """``value`` as an int of at least ``least``; floats (2.5, and 5.0 too), strings and bools are refused, so a
    mistake is named rather than rounded or compared with ints somewhere later."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)) or value < least:
        raise UserInputError(f"{name} must be a whole number of at least {least}, got {value!r}")
    return int(value)


def choose_new_ids(mask: np.ndarray, tracked: list[int], object_ids: Iterable[int] | int | None,
                   where: str) -> list[int]:
    """The ids of ``mask`` that become new objects: all untracked ids in it, or the given ``object_ids`` (each must
    be in the mask; one id may be given as an int). Ids already tracked are ignored, as in the reference tracker."""
    present = mask_ids(mask)
    if object_ids is not None:
        several = isinstance(object_ids, Iterable) and not isinstance(object_ids, (str, bytes))
        given = list(object_ids) if several else [object_ids]
        if not given:
            raise UserInputError(f"{where}: object_ids is empty; pass None to track every object of the mask")
        wanted = [whole_number(i, f"{where}: each of object_ids", 1) for i in given]
        if len(set(wanted)) != len(wanted):
            raise UserInputError(f"{where}: object_ids must be distinct, got {wanted}")
        missing = [i for i in wanted if i not in present]
        if missing:
            raise UserInputError(f"{where}: object id(s) {missing} do not occur in the mask (it holds {present})")
        present = wanted
    return [i for i in present if i not in tracked]
