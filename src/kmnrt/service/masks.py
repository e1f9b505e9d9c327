"""Image and mask codecs of the wire: frames (JPEG/PNG) in, index masks in and out as ``png``, ``rle`` or ``raw``.

- ``png``: an indexed PNG whose pixel values are the object ids, with the DAVIS palette (the evaluation format).
- ``rle``: COCO compressed RLE per object (column-major runs starting with a 0-run, LEB128-like 5-bit chunks
  offset by 48, runs after the second delta-coded against the run two back), the convention of pycocotools and
  the SAM 2 demo, written here so no compiled dependency is needed.
- ``raw``: the [H, W] uint8 index mask, row-major, zlib-compressed (level 1).
Binary payloads travel base64-encoded in JSON.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
import zlib

import numpy as np

from kmnrt.errors import UserInputError
from kmnrt.service.errors import ServiceError, bad_input

IMAGE_FORMATS = ("JPEG", "PNG")


def decode_frame(data: bytes, max_pixels: int, where: str) -> np.ndarray:
    """JPEG/PNG bytes -> [H, W, 3] uint8 RGB; the pixel count is checked from the header before decoding."""
    from PIL import Image

    image = _open_image(data, where, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
        # np.array (not asarray): a writable array, so the device worker does not copy the frame again
        return np.array(image if image.mode == "RGB" else image.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
        raise bad_input(f"{where}: the {image.format} data is damaged ({exc}); send a complete JPEG or PNG file",
                        "corrupt_image") from exc


def decode_mask_png(data: bytes, max_pixels: int, where: str) -> np.ndarray:
    """A PNG of object ids -> [H, W] uint8 ids to track, read as every kmnrt command reads a mask file
    (:func:`kmnrt.data.palette.labels_from_image`: palette indices, grayscale values with a 0/255 mask as object
    1, DAVIS colours), DAVIS's void 255 beside other ids left out (:func:`kmnrt.data.palette.without_void`)."""
    from kmnrt.data.palette import labels_from_image, without_void

    image = _open_image(data, where, max_pixels)
    if image.format != "PNG":
        raise bad_input(f"{where}: a mask must be a PNG (indexed, grayscale or in DAVIS colours) whose pixel values "
                        f"are the object ids, got a {image.format}", "invalid_mask")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise bad_input(f"{where}: the PNG data is damaged ({exc})", "corrupt_image") from exc
    try:
        return without_void(labels_from_image(image, where))[0]
    except UserInputError as exc:
        raise bad_input(str(exc), "invalid_mask") from None


def _open_image(data: bytes, where: str, max_pixels: int):
    """Open (not decode) a JPEG or PNG and check its size from the header against ``max_pixels``."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise bad_input(f"{where}: the image is empty", "corrupt_image")
    too_large = f"more than the server's limit of {max_pixels} pixels; downscale the frames"
    try:
        with warnings.catch_warnings():  # Pillow's own bomb limit, 89 Mpx, warns on stderr: the check below is ours
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # over twice Pillow's limit: refused before the size can be read
        raise ServiceError(413, "frame_too_large", f"{where}: its header claims {too_large}") from None
    except UnidentifiedImageError:
        raise bad_input(f"{where}: not a JPEG or PNG image ({len(data)} bytes of something else)",
                        "corrupt_image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise bad_input(f"{where}: not a readable JPEG or PNG image ({exc})", "corrupt_image") from exc
    if image.format not in IMAGE_FORMATS:
        raise bad_input(f"{where}: {image.format} images are not accepted; send JPEG or PNG", "corrupt_image")
    width, height = image.size
    if width * height > max_pixels:
        raise ServiceError(413, "frame_too_large", f"{where}: {width}x{height} is {width * height} pixels, "
                           f"{too_large}")
    return image


# --- answers ----------------------------------------------------------------------------------------------------

def encode_labels(labels: np.ndarray, object_ids: list[int], mask_format: str) -> dict:
    """An [H, W] uint8 index mask as the JSON ``mask`` object of an answer (see ``schemas.MaskPayload``)."""
    height, width = labels.shape
    if mask_format == "png":
        return {"format": "png", "size": [height, width], "data": _b64(encode_png(labels))}
    if mask_format == "raw":
        return {"format": "raw", "size": [height, width], "data": _b64(zlib.compress(labels.tobytes(), 1))}
    if mask_format == "rle":
        return {"format": "rle", "size": [height, width],
                "objects": [{"id": int(i), "counts": rle_encode(labels == i)} for i in object_ids]}
    raise ValueError(f"unknown mask format {mask_format!r}")


def decode_labels(payload: dict) -> np.ndarray:
    """The inverse of :func:`encode_labels` (clients and tests)."""
    height, width = (int(v) for v in payload["size"])
    if payload["format"] == "png":
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(base64.b64decode(payload["data"]))), dtype=np.uint8)
    if payload["format"] == "raw":
        raw = zlib.decompress(base64.b64decode(payload["data"]))
        return np.frombuffer(raw, dtype=np.uint8).reshape(height, width).copy()
    if payload["format"] == "rle":
        return rle_objects_to_labels(payload["objects"], (height, width), "mask")
    raise ValueError(f"unknown mask format {payload['format']!r}")


def encode_png(labels: np.ndarray) -> bytes:
    from PIL import Image

    from kmnrt.data.palette import DAVIS_PALETTE

    image = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8))
    image.putpalette(DAVIS_PALETTE.tobytes())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_input(f"{where}: not valid base64 ({exc})") from exc


# --- COCO compressed RLE ----------------------------------------------------------------------------------------

def rle_encode(binary: np.ndarray) -> str:
    """[H, W] bool -> COCO compressed RLE ``counts`` string (column-major, first run counts zeros)."""
    flat = np.asarray(binary, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs.insert(0, 0)
    chars = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: negative deltas end at -1
            more = (x != -1) if c & 0x10 else (x != 0)
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
    return "".join(chars)


def rle_decode(counts: str, size: tuple[int, int], where: str) -> np.ndarray:
    """COCO compressed RLE ``counts`` -> [H, W] bool; malformed strings or run totals raise a 400."""
    runs: list[int] = []
    position = 0
    while position < len(counts):
        x = shift = 0
        more = True
        while more:
            if position >= len(counts):
                raise bad_input(f"{where}: RLE counts end in the middle of a number", "invalid_mask")
            c = ord(counts[position]) - 48
            if not 0 <= c < 64:
                raise bad_input(f"{where}: RLE counts hold an invalid character {counts[position]!r}",
                                "invalid_mask")
            x |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            position += 1
            shift += 5
            if shift > 64:  # no run of a real mask needs more; also bounds the work on hostile input
                raise bad_input(f"{where}: an RLE number is longer than 64 bits", "invalid_mask")
            if not more and c & 0x10:
                x |= -1 << shift
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    height, width = size
    if any(r < 0 for r in runs) or sum(runs) != height * width:
        raise bad_input(f"{where}: RLE runs cover {sum(runs)} pixels, the mask has {height}x{width} = "
                        f"{height * width} (runs must be non-negative)", "invalid_mask")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape((width, height)).T


def rle_objects_to_labels(objects: list[dict], size: tuple[int, int], where: str) -> np.ndarray:
    """Per-object RLE ``[{"id", "counts"}]`` -> [H, W] uint8 index mask (a later object wins where they overlap)."""
    labels = np.zeros(size, dtype=np.uint8)
    for entry in objects:
        object_id = int(entry["id"])
        if not 1 <= object_id <= 255:
            raise bad_input(f"{where}: object id {object_id} must lie in 1..255", "invalid_mask")
        labels[rle_decode(entry["counts"], size, f"{where}, object {object_id}")] = object_id
    return labels
