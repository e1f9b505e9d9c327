"""Label PNGs: the DAVIS palette, and reading/writing per-pixel object ids.

A label map is an ``[H, W]`` uint8 array of object ids: 0 = background, k = object k. On disk it is an
indexed ("P") PNG whose pixel values are the ids themselves; the palette only colours them for display,
so the official DAVIS tools (which read the raw indices) see exactly the ids we wrote.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from kmnrt.data.atomic import atomic_output
from kmnrt.errors import KmnrtWarning, UserInputError, a_few

DAVIS_VOID = 255
"""Ground-truth value DAVIS uses for void pixels ("don't care"); the semi-supervised protocol counts them
as background."""


def _pascal_voc_colormap() -> np.ndarray:
    """The 256-colour PASCAL VOC colour map: index bits are dealt out in turn to red, green and blue.

    Bit 0 of the index goes to the top bit of red, bit 1 to the top bit of green, bit 2 to the top bit
    of blue, bit 3 to the second bit of red, and so on. Every index gets a different colour.
    """
    colormap = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        code = index
        red = green = blue = 0
        for bit in range(7, -1, -1):
            red |= (code & 1) << bit
            green |= ((code >> 1) & 1) << bit
            blue |= ((code >> 2) & 1) << bit
            code >>= 3
        colormap[index] = (red, green, blue)
    colormap.setflags(write=False)
    return colormap


DAVIS_PALETTE: np.ndarray = _pascal_voc_colormap()
"""``[256, 3]`` uint8, read-only: colour of each label id in DAVIS annotation PNGs (1 = (128, 0, 0))."""

# Colours packed as 0xRRGGBB, sorted, to map RGB masks back to ids with one searchsorted call.
_PACKED_PALETTE = (DAVIS_PALETTE.astype(np.int32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.int32))
_PACKED_ORDER = np.argsort(_PACKED_PALETTE)
_PACKED_SORTED = _PACKED_PALETTE[_PACKED_ORDER]


def colorize_labels(labels: np.ndarray) -> np.ndarray:
    """``[H, W]`` uint8 ids → ``[H, W, 3]`` uint8 RGB in DAVIS colours (for overlays and previews)."""
    return DAVIS_PALETTE[np.asarray(labels, dtype=np.uint8)]


def write_label_png(path: str | os.PathLike[str], labels: np.ndarray) -> None:
    """Write ``labels`` (``[H, W]``, ids 0..255) as an indexed PNG with the DAVIS palette, atomically.

    The raw ids are stored as the pixel values. Parent folders are created.

    Raises:
        ValueError: ``labels`` is not a 2-D integer array with values in 0..255 (a programming error).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D [H, W] array of object ids, got shape {labels.shape}")
    if labels.dtype != np.uint8:
        if labels.dtype != bool and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must hold integer object ids, got dtype {labels.dtype}")
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise ValueError("labels must lie in 0..255 to fit an indexed PNG")
        labels = labels.astype(np.uint8)
    image = Image.fromarray(np.ascontiguousarray(labels))  # mode "L" holding the raw ids
    image.putpalette(DAVIS_PALETTE.tobytes())  # turns it into mode "P" without touching the values
    with atomic_output(path) as tmp:
        image.save(tmp, format="PNG")


def read_label_png(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a mask PNG as an ``[H, W]`` uint8 array of object ids (:func:`labels_from_image`).

    Raises:
        UserInputError: the file is missing, unreadable, not an image, or not a label mask.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            refuse_jpeg_mask(image, f"mask {path}")
            image.load()
            return labels_from_image(image, f"mask {path}")
    except FileNotFoundError:
        raise UserInputError(f"mask file {path} does not exist") from None
    except IsADirectoryError:
        raise UserInputError(f"mask path {path} is a folder, expected a PNG file") from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL reports damaged files with all three
        raise UserInputError(f"cannot read mask {path}: {exc}; it must be a PNG label mask") from exc


def refuse_jpeg_mask(image: Image.Image, where: str) -> None:
    if image.format in ("JPEG", "MPO"):
        raise UserInputError(f"{where} is a JPEG: its lossy compression turns the edges of objects into stray ids; "
                             "save masks as PNG (indexed or grayscale, values = object ids)")


def labels_from_image(image: Image.Image, where: str) -> np.ndarray:
    """A decoded mask image as ``[H, W]`` uint8 object ids (``where`` names it in errors). What every reader of
    masks (files, the service's uploads) shares:

    - Palette ("P"): the raw indices.
    - Grayscale ("L", 16-bit or 1-bit): the values; exactly {0, 255} or {255} is a DAVIS-2016 binary mask, whose
      object becomes 1.
    - RGB/RGBA: each colour mapped back through :data:`DAVIS_PALETTE` (alpha ignored); a colour outside the
      palette is an error.

    255 beside other ids stays 255: DAVIS's void label, which trackers leave out (:func:`without_void`) and the
    evaluation counts as background.
    """
    mode, pixels = image.mode, np.asarray(image)
    if mode == "P":
        return pixels.astype(np.uint8, copy=False)
    if mode in ("L", "LA", "1", "I", "I;16", "I;16B", "I;16L"):
        values = pixels[..., 0] if pixels.ndim == 3 else pixels
        if values.dtype != np.uint8:
            if values.size and (values.min() < 0 or values.max() > 255):
                raise UserInputError(f"{where} holds values outside 0..255 ({int(values.min())}..{int(values.max())})"
                                     "; object ids must fit 0..255")
            values = values.astype(np.uint8)
        return _grayscale_to_ids(values)
    if mode in ("RGB", "RGBA"):
        return _colours_to_ids(pixels[..., :3], where)
    raise UserInputError(f"{where} has image mode {mode!r}; expected an indexed (palette) or grayscale PNG of "
                         "object ids")


def read_masks(mask_path: Path, frame_names: list[str],
               cut: bool = False) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """The masks a command tracks from: -> (first mask, {frame index: later mask}), from one PNG (the first frame's)
    or a folder of PNGs named like the frames, where a later one adds the objects that first appear there.
    A PNG in the folder named like no frame is an error (a typo, such as 0005 for 00005, would drop its objects
    silently), except after the last frame read when ``cut`` (``--max-frames`` stopped before the end of the video);
    so is a mask in another image format (a JPEG would be skipped, with its objects)."""
    from kmnrt.data.frames import IMAGE_EXTENSIONS, natural_sort_key

    if mask_path.is_file():
        return read_tracking_mask(mask_path), {}
    if not mask_path.is_dir():
        raise UserInputError(f"mask {mask_path} does not exist")
    others = sorted(p.name for p in mask_path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS - {".png"})
    if others:
        raise UserInputError(f"mask folder {mask_path} holds {a_few(others, 3)}, not PNG: masks must be PNGs (a "
                             f"JPEG's compression turns the edges of objects into stray ids); convert or remove them")
    by_name = {p.stem: p for p in mask_path.iterdir() if p.suffix.lower() == ".png"}
    if frame_names[0] not in by_name:
        raise UserInputError(f"mask folder {mask_path} has no {frame_names[0]}.png for the first frame")
    last = natural_sort_key(frame_names[-1])
    unmatched = sorted((name for name in set(by_name) - set(frame_names) if not cut or natural_sort_key(name) < last),
                       key=natural_sort_key)
    if unmatched:
        listed = a_few((by_name[name].name for name in unmatched), 3)
        raise UserInputError(f"mask folder {mask_path}: {len(unmatched)} mask(s) named like no frame ({listed}); "
                             f"name each mask like its frame (the frames are {frame_names[0]} to {frame_names[-1]})")
    first = read_tracking_mask(by_name[frame_names[0]])
    later = {i: read_tracking_mask(by_name[n]) for i, n in enumerate(frame_names) if i > 0 and n in by_name}
    for index, mask in later.items():  # found now, not when tracking reaches that frame
        if mask.shape != first.shape:
            path = by_name[frame_names[index]]
            raise UserInputError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]}, but the first frame's mask "
                                 f"{by_name[frame_names[0]].name} is {first.shape[1]}x{first.shape[0]} (width x "
                                 f"height); every mask must have its frame's size")
    return first, later


def read_tracking_mask(path: Path) -> np.ndarray:
    """A mask PNG as the trackers take it (:func:`without_void`), with a warning when void pixels were left out."""
    mask, void = without_void(read_label_png(path))
    if void:
        warnings.warn(f"mask {path}: its {void} pixels of value 255, DAVIS's void label, are not tracked as an "
                      f"object", KmnrtWarning, stacklevel=3)
    return mask


def without_void(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The objects a tracker starts from: DAVIS's void value 255 beside other ids is not an object (the evaluation
    counts it as background), so it becomes background; 255 alone (with background only) is the object.
    -> (mask, the number of void pixels left out)."""
    void = mask == DAVIS_VOID
    count = int(void.sum())
    if not count or count + int((mask == 0).sum()) == mask.size:
        return mask, 0
    return np.where(void, 0, mask).astype(np.uint8), count


def _grayscale_to_ids(values: np.ndarray) -> np.ndarray:
    counts = np.bincount(values.ravel(), minlength=256)
    if counts[255] and not counts[1:255].any():
        # DAVIS 2016 stores its single object as 255.
        return (values == 255).astype(np.uint8)
    return values


def _colours_to_ids(rgb: np.ndarray, where: str) -> np.ndarray:
    packed = rgb.astype(np.int32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.int32)
    position = np.searchsorted(_PACKED_SORTED, packed).clip(max=255)
    known = _PACKED_SORTED[position] == packed
    if not known.all():
        y, x = np.argwhere(~known)[0]
        colour = tuple(int(c) for c in rgb[y, x])
        raise UserInputError(
            f"{where} is an RGB image with colour {colour} (at x={x}, y={y}) that is not in the DAVIS "
            "palette; save masks as indexed (palette) or grayscale PNGs whose values are the object ids"
        )
    return _PACKED_ORDER[position].astype(np.uint8)
