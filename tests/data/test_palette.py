from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kmnrt.data import DAVIS_PALETTE, colorize_labels, read_label_png, read_masks, read_tracking_mask, write_label_png
from kmnrt.data.palette import without_void
from kmnrt.errors import KmnrtWarning, UserInputError


def test_palette_is_the_pascal_voc_colour_map() -> None:
    assert DAVIS_PALETTE.shape == (256, 3) and DAVIS_PALETTE.dtype == np.uint8
    assert DAVIS_PALETTE[:5].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]
    assert DAVIS_PALETTE[8].tolist() == [64, 0, 0]
    assert DAVIS_PALETTE[9].tolist() == [192, 0, 0]
    assert DAVIS_PALETTE[255].tolist() == [224, 224, 192]
    assert len({tuple(colour) for colour in DAVIS_PALETTE.tolist()}) == 256
    assert not DAVIS_PALETTE.flags.writeable


def test_palette_matches_a_real_davis_2017_annotation(shared_vos) -> None:
    path = shared_vos / "davis2016_bmx-trees" / "Annotations_davis2017_first_frame" / "00000.png"
    with Image.open(path) as image:
        assert image.mode == "P"
        file_palette = np.array(image.getpalette()[: 3 * 3]).reshape(3, 3)
    assert (file_palette == DAVIS_PALETTE[:3]).all()
    labels = read_label_png(path)
    assert np.bincount(labels.ravel()).tolist() == [480 * 854 - 6466 - 7971, 6466, 7971]


def test_round_trip_keeps_raw_indices_in_a_palette_png(tmp_path) -> None:
    labels = np.arange(12 * 20, dtype=np.uint16).reshape(12, 20) % 7
    labels[0, 0] = 255
    path = tmp_path / "nested" / "deeper" / "00000.png"
    write_label_png(path, labels)
    with Image.open(path) as image:
        assert image.mode == "P"
        assert (np.asarray(image) == labels).all()
        rgb = np.asarray(image.convert("RGB"))
    assert rgb[labels == 1][0].tolist() == [128, 0, 0]
    assert rgb[labels == 2][0].tolist() == [0, 128, 0]
    back = read_label_png(path)
    assert back.dtype == np.uint8 and (back == labels).all()
    assert sorted(p.name for p in path.parent.iterdir()) == ["00000.png"]  # no temporary file left


def test_write_overwrites_atomically_and_rejects_bad_labels(tmp_path) -> None:
    path = tmp_path / "mask.png"
    write_label_png(path, np.ones((4, 4), np.uint8))
    write_label_png(path, np.full((4, 4), 3, np.uint8))
    assert (read_label_png(path) == 3).all()
    with pytest.raises(ValueError):
        write_label_png(path, np.full((4, 4), 300, np.int32))
    with pytest.raises(ValueError):
        write_label_png(path, np.zeros((4, 4, 3), np.uint8))
    assert (read_label_png(path) == 3).all()
    assert [p.name for p in tmp_path.iterdir()] == ["mask.png"]


def test_davis_2016_masks_read_as_object_1(shared_vos, tmp_path) -> None:
    labels = read_label_png(shared_vos / "davis2016_blackswan" / "Annotations" / "00000.png")
    assert labels.shape == (480, 854)
    assert set(np.unique(labels).tolist()) == {0, 1}
    binary = np.zeros((6, 6), np.uint8)
    binary[2:4, 2:4] = 255
    Image.fromarray(binary, mode="L").save(tmp_path / "binary.png")
    assert (read_label_png(tmp_path / "binary.png") == (binary == 255)).all()


def test_255_beside_other_ids_is_void_whatever_the_png_mode(tmp_path) -> None:
    """Read as stored (the evaluation counts it as background); a tracker leaves it out, with a warning, for a
    grayscale PNG as for a palette one."""
    values = np.array([[0, 1, 2], [255, 2, 1]], np.uint8)
    Image.fromarray(values, mode="L").save(tmp_path / "gray.png")
    write_label_png(tmp_path / "palette.png", values)
    for name in ("gray.png", "palette.png"):
        assert read_label_png(tmp_path / name).tolist() == values.tolist()
        with pytest.warns(KmnrtWarning, match=rf"{name}: its 1 pixels of value 255, DAVIS's void label, are not "
                          "tracked as an object"):
            assert read_tracking_mask(tmp_path / name).tolist() == [[0, 1, 2], [0, 2, 1]]
    assert without_void(np.array([[0, 255]], np.uint8))[0].tolist() == [[0, 255]]  # 255 alone is the object


def test_rgb_masks_map_back_through_the_palette(tmp_path) -> None:
    labels = np.array([[0, 1], [2, 3]], np.uint8)
    Image.fromarray(colorize_labels(labels)).save(tmp_path / "rgb.png")
    assert read_label_png(tmp_path / "rgb.png").tolist() == labels.tolist()
    rgba = np.dstack([colorize_labels(labels), np.full((2, 2), 255, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert read_label_png(tmp_path / "rgba.png").tolist() == labels.tolist()

    foreign = colorize_labels(labels)
    foreign[1, 1] = (12, 200, 7)
    Image.fromarray(foreign).save(tmp_path / "foreign.png")
    with pytest.raises(UserInputError, match=r"foreign\.png.*\(12, 200, 7\).*not in the DAVIS palette"):
        read_label_png(tmp_path / "foreign.png")


def test_missing_or_damaged_mask_names_the_file(tmp_path) -> None:
    with pytest.raises(UserInputError, match=r"absent\.png does not exist"):
        read_label_png(tmp_path / "absent.png")
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(UserInputError, match=r"cannot read mask .*broken\.png"):
        read_label_png(tmp_path / "broken.png")


def test_a_jpeg_mask_is_refused_rather_than_read_as_dozens_of_objects(tmp_path) -> None:
    labels = np.zeros((32, 48), np.uint8)
    labels[8:24, 10:30] = 1
    Image.fromarray(labels * 255).save(tmp_path / "mask.jpg", quality=75)  # edges now hold values 1..254
    with pytest.raises(UserInputError, match=r"mask .*mask\.jpg is a JPEG: .* save masks as PNG"):
        read_label_png(tmp_path / "mask.jpg")


def test_tracking_masks_treat_255_beside_other_ids_as_void(tmp_path) -> None:
    """A palette mask keeps 255 as read; the trackers' masks drop it as DAVIS's void, with a warning, unless it is
    the only object (then it is the object, as DAVIS 2016's binary masks are)."""
    labels = np.zeros((20, 30), np.uint8)
    labels[2:8, 2:8], labels[10:18, 5:25] = 1, 255
    write_label_png(tmp_path / "void.png", labels)
    assert read_label_png(tmp_path / "void.png").max() == 255
    with pytest.warns(KmnrtWarning, match=r"void\.png: its 160 pixels of value 255, DAVIS's void label"):
        first, later = read_masks(tmp_path / "void.png", ["00000"])
    assert set(np.unique(first)) == {0, 1} and later == {}
    write_label_png(tmp_path / "only.png", np.where(labels == 1, 0, labels))
    assert set(np.unique(read_masks(tmp_path / "only.png", ["00000"])[0])) == {0, 255}


def test_a_mask_folder_refuses_masks_named_like_no_frame_read(tmp_path) -> None:
    labels = np.zeros((20, 30), np.uint8)
    labels[2:8, 2:8] = 1
    masks = tmp_path / "masks"
    for name in ("00000", "00002", "00009"):  # 00009: after the last frame read (--max-frames), left alone
        write_label_png(masks / f"{name}.png", labels)
    frames = ["00000", "00001", "00002", "00003"]
    first, later = read_masks(masks, frames, cut=True)
    assert sorted(later) == [2]
    # the whole video read: 00009 belongs to no frame (a typo, such as 000030 for 00003, sorts after the last)
    with pytest.raises(UserInputError, match=r"1 mask\(s\) named like no frame \(00009\.png\); name each mask "
                       r"like its frame \(the frames are 00000 to 00003\)"):
        read_masks(masks, frames)
    write_label_png(masks / "0001.png", labels)  # a typo for 00001: inside the frames read, cut or not
    with pytest.raises(UserInputError, match=r"1 mask\(s\) named like no frame \(0001\.png\); name each mask like"):
        read_masks(masks, frames, cut=True)
    (masks / "0001.png").unlink()
    Image.fromarray(labels).save(masks / "00003.jpg")  # would be skipped with its objects
    with pytest.raises(UserInputError, match=r"mask folder .*masks holds 00003\.jpg, not PNG: masks must be PNGs"):
        read_masks(masks, frames, cut=True)
