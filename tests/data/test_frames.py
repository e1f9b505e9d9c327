from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from kmnrt.data import ImageFolderSource, VideoFileSource, natural_sort_key, open_frames, read_image
from kmnrt.errors import KmnrtWarning, UserInputError

RED = (255, 0, 0)


def _solid(height: int, width: int, rgb: tuple[int, int, int]) -> np.ndarray:
    frame = np.zeros((height, width, 3), np.uint8)
    frame[:] = rgb
    return frame


def _write_video(path: Path, frames: list[np.ndarray], fourcc: str) -> None:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (width, height))
    assert writer.isOpened(), f"this OpenCV build cannot write {fourcc}"
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def _ramp_frames(count: int) -> list[np.ndarray]:
    return [_solid(48, 64, (20 * index, 100, 250 - 20 * index)) for index in range(count)]


def test_read_image_returns_rgb(tmp_path) -> None:
    Image.fromarray(_solid(5, 7, RED)).save(tmp_path / "red.png")
    frame = read_image(tmp_path / "red.png")
    assert frame.shape == (5, 7, 3) and frame.dtype == np.uint8
    assert frame[0, 0].tolist() == [255, 0, 0]


def test_read_real_davis_jpeg(shared_vos) -> None:
    frame = read_image(shared_vos / "davis2016_blackswan" / "JPEGImages" / "00000.jpg")
    assert frame.shape == (480, 854, 3)
    with Image.open(shared_vos / "davis2016_blackswan" / "JPEGImages" / "00000.jpg") as image:
        reference = np.asarray(image.convert("RGB")).astype(int)
    # Two JPEG decoders may differ by a level or two, never by a channel swap.
    assert np.abs(frame.astype(int) - reference).mean() < 1.0


def test_exif_orientation_is_applied_unless_asked_not_to(tmp_path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # turned a quarter clockwise when shown
    Image.fromarray(_solid(20, 40, RED)).save(tmp_path / "photo.jpg", exif=exif.tobytes())
    assert read_image(tmp_path / "photo.jpg").shape == (40, 20, 3)
    assert read_image(tmp_path / "photo.jpg", orientation=False).shape == (20, 40, 3)


def test_grayscale_and_rgba_become_rgb(tmp_path) -> None:
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5) * 10
    Image.fromarray(gray).save(tmp_path / "gray.png")
    frame = read_image(tmp_path / "gray.png")
    assert frame.shape == (4, 5, 3)
    assert all((frame[..., channel] == gray).all() for channel in range(3))

    rgba = np.dstack([_solid(4, 5, (10, 20, 30)), np.full((4, 5), 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    frame = read_image(tmp_path / "rgba.png")
    assert frame.shape == (4, 5, 3)
    assert frame[2, 2].tolist() == [10, 20, 30]  # alpha dropped, colour kept


def test_unreadable_image_names_the_file(tmp_path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated garbage")
    with pytest.raises(UserInputError, match=r"broken\.jpg"):
        read_image(tmp_path / "broken.jpg")
    with pytest.raises(UserInputError, match=r"missing\.jpg does not exist"):
        read_image(tmp_path / "missing.jpg")


def test_folder_source_uses_natural_order(tmp_path) -> None:
    for index in (10, 2, 1):
        Image.fromarray(_solid(6, 8, (index, 0, 0))).save(tmp_path / f"f{index}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    source = open_frames(tmp_path)
    assert isinstance(source, ImageFolderSource)
    assert source.names == ["f1", "f2", "f10"]
    assert len(source) == 3 and source.size == (6, 8)
    assert [(name, int(frame[0, 0, 0])) for name, frame in source] == [("f1", 1), ("f2", 2), ("f10", 10)]
    assert open_frames(tmp_path, max_frames=2).names == ["f1", "f2"]
    assert open_frames(tmp_path, max_frames=2).cut and not open_frames(tmp_path, max_frames=3).cut
    assert not source.cut
    assert sorted(["a10", "a2", "a1b", "a1"], key=natural_sort_key) == ["a1", "a1b", "a2", "a10"]


def test_folder_of_real_davis_frames(shared_vos) -> None:
    source = open_frames(shared_vos / "davis2016_motocross-jump" / "JPEGImages", max_frames=3)
    assert source.names == ["00000", "00001", "00002"]
    frames = list(source)
    assert [frame.shape for _, frame in frames] == [(480, 854, 3)] * 3


def test_empty_or_imageless_folder_is_an_error(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserInputError, match=r"empty holds no images"):
        open_frames(empty)
    (empty / "JPEGImages").mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(UserInputError, match=r"did you mean .*JPEGImages"):
        open_frames(empty)
    with pytest.raises(UserInputError, match=r"does not exist"):
        open_frames(tmp_path / "nowhere")


def test_frame_of_another_size_names_the_file(tmp_path) -> None:
    Image.fromarray(_solid(6, 8, RED)).save(tmp_path / "00000.png")
    Image.fromarray(_solid(6, 9, RED)).save(tmp_path / "00001.png")
    source = open_frames(tmp_path)
    with pytest.raises(UserInputError, match=r"00001\.png is 9x6 .* first frame .* 8x6"):
        list(source)


def test_unreadable_frame_in_folder_names_the_file(tmp_path) -> None:
    Image.fromarray(_solid(6, 8, RED)).save(tmp_path / "00000.png")
    (tmp_path / "00001.jpg").write_bytes(b"garbage")
    iterator = iter(open_frames(tmp_path))
    assert next(iterator)[0] == "00000"
    with pytest.raises(UserInputError, match=r"00001\.jpg"):
        next(iterator)


def test_a_link_to_a_missing_frame_is_reported_not_dropped(tmp_path) -> None:
    """The video would otherwise be one frame shorter without a word, every later mask one frame off."""
    for index in (0, 2):
        Image.fromarray(_solid(6, 8, RED)).save(tmp_path / f"{index:05d}.png")
    (tmp_path / "00001.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "folder.png").mkdir()  # a folder is not a frame
    source = open_frames(tmp_path)
    assert source.names == ["00000", "00001", "00002"]
    with pytest.raises(UserInputError, match=r"image .*00001\.png does not exist"):
        list(source)


@pytest.mark.parametrize(("fourcc", "suffix"), [("MJPG", ".avi"), ("mp4v", ".mp4")])
def test_video_file_source(tmp_path, fourcc: str, suffix: str) -> None:
    path = tmp_path / f"clip{suffix}"
    expected = _ramp_frames(6)
    _write_video(path, expected, fourcc)
    source = open_frames(path)
    assert isinstance(source, VideoFileSource)
    assert source.names == [f"{index:05d}" for index in range(6)]
    assert source.size == (48, 64)
    frames = list(source)
    assert [name for name, _ in frames] == source.names
    for (_, frame), original in zip(frames, expected):
        assert frame.shape == (48, 64, 3)
        # Lossy codecs: colours land near the originals, and red/blue are not swapped.
        assert np.abs(frame.reshape(-1, 3).mean(axis=0) - original[0, 0]).max() < 12
    assert open_frames(path, max_frames=4).names == source.names[:4]
    assert open_frames(path, max_frames=4).cut and not open_frames(path, max_frames=6).cut and not source.cut


def test_video_that_does_not_open_is_an_error(tmp_path) -> None:
    path = tmp_path / "fake.mp4"
    path.write_bytes(b"\x00" * 2048)
    with pytest.raises(UserInputError, match=r"cannot open video .*fake\.mp4"):
        open_frames(path)


def test_damaged_video_frame_is_reported_after_the_good_ones(tmp_path) -> None:
    path = tmp_path / "clip.avi"
    _write_video(path, _ramp_frames(10), "MJPG")
    data = bytearray(path.read_bytes())
    # MJPG stores each frame as a JPEG; wipe the sixth one (index 5) but keep the file's structure.
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    assert len(starts) == 10
    data[starts[5] : starts[6]] = bytes(starts[6] - starts[5])
    path.write_bytes(bytes(data))

    source = open_frames(path)
    assert len(source) == 10
    yielded = []
    with pytest.raises(UserInputError, match=r"frame 5 of video .*clip\.avi could not be decoded"):
        for name, _ in source:
            yielded.append(name)
    assert yielded == ["00000", "00001", "00002", "00003", "00004"]


def test_video_with_more_frames_than_it_declares_warns_at_the_last_declared_one(tmp_path,
                                                                               under_declared_video) -> None:
    path = tmp_path / "clip.avi"
    _write_video(path, _ramp_frames(12), "MJPG")
    assert len(open_frames(path)) == 12
    under_declared_video(path, 7)

    source = open_frames(path)
    assert len(source) == 7
    frames = iter(source)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [next(frames)[0] for _ in range(6)] == source.names[:6]
    with pytest.warns(KmnrtWarning, match=r"clip\.avi holds more frames than the 7 it declares"):
        assert next(frames)[0] == "00006"  # the last: callers that count frames ask for no more
    whole = tmp_path / "whole.avi"
    _write_video(whole, _ramp_frames(4), "MJPG")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: cut short on purpose, or read to its end
        assert len(list(open_frames(path, max_frames=5))) == 5
        assert len(list(open_frames(whole))) == 4


def test_single_image_path_is_refused(tmp_path) -> None:
    Image.fromarray(_solid(4, 4, RED)).save(tmp_path / "one.png")
    with pytest.raises(UserInputError, match=r"single image"):
        open_frames(tmp_path / "one.png")


def test_an_annotations_folder_given_as_frames_is_refused_with_the_frames_named(shared_vos, tmp_path) -> None:
    """Masks given as frames would be tracked or timed as images without complaint."""
    sequence = shared_vos / "davis2016_blackswan"
    with pytest.raises(UserInputError, match="is an Annotations folder, the masks; give the frames instead") as info:
        open_frames(sequence / "Annotations")
    assert str(sequence / "JPEGImages") in str(info.value)
    nested = tmp_path / "DAVIS" / "Annotations" / "480p" / "bear"  # DAVIS 2017's layout, no JPEGImages beside it
    nested.mkdir(parents=True)
    with pytest.raises(UserInputError, match=r"JPEGImages/<sequence> in DAVIS"):
        open_frames(nested)
    assert len(open_frames(sequence / "JPEGImages")) == 50
    # one mask given as a frame: the hint names the frames, not the masks' folder
    with pytest.raises(UserInputError, match="is an Annotations folder") as info:
        open_frames(sequence / "Annotations" / "00000.png")
    assert str(sequence / "JPEGImages") in str(info.value)
    # a tree's root: the hint asks for a sequence's folder
    tree = tmp_path / "tree"
    (tree / "Annotations" / "seq").mkdir(parents=True)
    (tree / "JPEGImages" / "seq").mkdir(parents=True)
    with pytest.raises(UserInputError, match=r"give the frames instead \(a sequence's folder in .*JPEGImages\)"):
        open_frames(tree / "Annotations")
    # JPEG frames in a folder that happens to be called Annotations are frames
    frames = tmp_path / "backup" / "Annotations"
    frames.mkdir(parents=True)
    Image.new("RGB", (32, 24)).save(frames / "00000.jpg")
    assert len(open_frames(frames)) == 1
