"""Wire codecs: COCO RLE against pycocotools, mask formats round trip, image decoding refuses bad data."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from kmnrt.service.errors import ServiceError
from kmnrt.service.masks import decode_frame, decode_labels, decode_mask_png, encode_labels, rle_decode, rle_encode


def _random_masks(count: int):
    rng = np.random.default_rng(0)
    for case in range(count):
        height, width = (int(v) for v in rng.integers(1, 50, 2))
        mask = rng.random((height, width)) < rng.random()
        if case % 5 == 0:
            mask[:] = case % 10 == 0  # all background / all object
        yield mask


def test_rle_matches_pycocotools():
    coco = pytest.importorskip("pycocotools.mask")
    for mask in _random_masks(120):
        expected = coco.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
        assert rle_encode(mask) == expected
        assert np.array_equal(rle_decode(expected, mask.shape, "m"), mask)


def test_rle_round_trip_large_runs():
    mask = np.zeros((480, 854), bool)
    mask[100:300, 200:700] = True
    assert np.array_equal(rle_decode(rle_encode(mask), mask.shape, "m"), mask)


@pytest.mark.parametrize("counts", ["", "0", "\x7f", "1" * 40, "o" * 20 + "1"])
def test_rle_decode_refuses_malformed(counts):
    with pytest.raises(ServiceError) as raised:
        rle_decode(counts, (4, 5), "m")
    assert raised.value.status == 400 and raised.value.code == "invalid_mask"


@pytest.mark.parametrize("fmt", ["png", "rle", "raw"])
def test_label_formats_round_trip(fmt):
    rng = np.random.default_rng(1)
    labels = rng.choice(np.array([0, 1, 4, 9], np.uint8), size=(37, 53))
    payload = encode_labels(labels, [1, 4, 9], fmt)
    assert payload["size"] == [37, 53]
    assert np.array_equal(decode_labels(payload), labels)


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_decode_frame_png_is_exact_and_jpeg_decodes():
    frame = np.random.default_rng(2).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    assert np.array_equal(decode_frame(_png(frame), 10**6, "f"), frame)
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=95)
    decoded = decode_frame(buffer.getvalue(), 10**6, "f")
    assert decoded.shape == (20, 30, 3) and decoded.dtype == np.uint8


def test_decode_frame_refuses_bad_data():
    frame = np.zeros((20, 30, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    cases = {b"": "corrupt_image", b"not an image": "corrupt_image", jpeg[: len(jpeg) // 2]: "corrupt_image"}
    for data, code in cases.items():
        with pytest.raises(ServiceError) as raised:
            decode_frame(data, 10**6, "frame 3")
        assert (raised.value.status, raised.value.code) == (400, code)
        assert "frame 3" in raised.value.message
    with pytest.raises(ServiceError) as raised:
        decode_frame(jpeg, 599, "f")  # 600 pixels
    assert (raised.value.status, raised.value.code) == (413, "frame_too_large")


@pytest.mark.parametrize("side", [10_000, 20_000])  # 100 Mpx: Pillow warns; 400 Mpx: Pillow refuses to open
def test_a_header_that_claims_a_huge_image_is_413_for_frames_and_masks(side, recwarn):
    """Only the header is read: a few hundred bytes claiming side x side pixels, Pillow's decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\0" * (side + 1))) + chunk(b"IEND", b""))
    for decode in (decode_frame, decode_mask_png):
        with pytest.raises(ServiceError) as raised:
            decode(png, 10**7, "frame 1")
        assert (raised.value.status, raised.value.code) == (413, "frame_too_large")
        assert raised.value.message.startswith("frame 1: ") and "limit of 10000000 pixels" in raised.value.message
    assert not recwarn.list  # nothing printed past the JSON logs


def test_decode_mask_png_reads_ids_as_the_commands_read_mask_files():
    """The same rules as kmnrt run's masks: DAVIS's 0/255 masks are object 1, void 255 beside other ids is not
    an object, DAVIS colours map back to ids; other colours and JPEGs are refused."""
    from kmnrt.data import colorize_labels
    from kmnrt.service.masks import encode_png

    labels = np.array([[0, 1], [2, 200]], np.uint8)
    assert np.array_equal(decode_mask_png(_png(labels, "L"), 100, "m"), labels)
    binary = np.array([[0, 255], [255, 0]], np.uint8)
    assert decode_mask_png(_png(binary, "L"), 100, "m").tolist() == [[0, 1], [1, 0]]
    void = np.array([[3, 255], [7, 0]], np.uint8)
    for png in (_png(void, "L"), encode_png(void)):  # grayscale, palette
        assert decode_mask_png(png, 100, "m").tolist() == [[3, 0], [7, 0]]
    assert np.array_equal(decode_mask_png(_png(colorize_labels(labels)), 100, "m"), labels)
    with pytest.raises(ServiceError) as raised:
        decode_mask_png(_png(np.full((2, 2, 3), 7, np.uint8)), 100, "m")
    assert raised.value.code == "invalid_mask" and "not in the DAVIS palette" in raised.value.message
