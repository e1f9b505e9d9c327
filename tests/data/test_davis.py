from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kmnrt.data import Sequence, find_sequences, open_sequence_frames, read_annotation, write_label_png
from kmnrt.errors import UserInputError

SHARED_NAMES = ["davis2016_blackswan", "davis2016_bmx-trees", "davis2016_kite-surf", "davis2016_motocross-jump"]


def _touch_frames(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    for index in range(count):
        Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(folder / f"{index:05d}.jpg")


def _touch_masks(folder: Path, count: int) -> None:
    for index in range(count):
        write_label_png(folder / f"{index:05d}.png", np.full((4, 6), index % 3, np.uint8))


def test_folder_of_single_sequence_folders(shared_vos) -> None:
    sequences = find_sequences(shared_vos)
    assert [sequence.name for sequence in sequences] == SHARED_NAMES
    counts = {sequence.name: (len(sequence.frame_names), len(sequence.annotation_names)) for sequence in sequences}
    assert counts == {
        "davis2016_blackswan": (50, 50),
        "davis2016_bmx-trees": (80, 80),
        "davis2016_kite-surf": (50, 50),
        "davis2016_motocross-jump": (40, 40),
    }
    bmx = sequences[1]
    assert bmx.frames_dir == shared_vos / "davis2016_bmx-trees" / "JPEGImages"
    assert bmx.annotations_dir == shared_vos / "davis2016_bmx-trees" / "Annotations"
    assert bmx.annotation_names[:3] == ("00000", "00001", "00002")


def test_single_sequence_folder(shared_vos) -> None:
    (sequence,) = find_sequences(shared_vos / "davis2016_blackswan")
    assert sequence.name == "davis2016_blackswan"
    labels = read_annotation(sequence, "00010")
    assert labels.shape == (480, 854) and set(np.unique(labels).tolist()) == {0, 1}
    frames = open_sequence_frames(sequence, max_frames=2)
    assert frames.names == ["00000", "00001"] and frames.size == (480, 854)


def test_annotations_folder_of_one_sequence(shared_vos) -> None:
    (sequence,) = find_sequences(shared_vos / "davis2016_kite-surf" / "Annotations")
    assert sequence.name == "davis2016_kite-surf"
    assert sequence.frames_dir is None and len(sequence.annotation_names) == 50


def test_davis_tree_with_resolution_folders(tmp_path) -> None:
    for name in ("dogs-jump", "bike-packing"):
        _touch_frames(tmp_path / "JPEGImages" / "480p" / name, 4)
        _touch_masks(tmp_path / "Annotations" / "480p" / name, 4)
    _touch_frames(tmp_path / "JPEGImages" / "480p" / "test-only", 2)  # frames without annotations
    sequences = find_sequences(tmp_path)
    assert [sequence.name for sequence in sequences] == ["bike-packing", "dogs-jump", "test-only"]
    assert sequences[0].annotations_dir == tmp_path / "Annotations" / "480p" / "bike-packing"
    assert sequences[0].frame_names == ("00000", "00001", "00002", "00003")
    assert sequences[2].annotations_dir is None and sequences[2].annotation_names == ()
    assert read_annotation(sequences[0], "00002").tolist() == np.full((4, 6), 2).tolist()
    with pytest.raises(UserInputError, match=r"not Full-Resolution"):
        find_sequences(tmp_path, resolution="Full-Resolution")


def test_davis_tree_without_resolution_folders(tmp_path) -> None:
    _touch_masks(tmp_path / "Annotations" / "cows", 3)
    (sequence,) = find_sequences(tmp_path)
    assert sequence == Sequence("cows", None, tmp_path / "Annotations" / "cows", (), ("00000", "00001", "00002"))


def test_plain_folder_of_png_folders(tmp_path) -> None:
    _touch_masks(tmp_path / "seq10", 3)
    _touch_masks(tmp_path / "seq2", 3)
    (tmp_path / "unrelated").mkdir()
    sequences = find_sequences(tmp_path)
    assert [sequence.name for sequence in sequences] == ["seq2", "seq10"]
    assert sequences[0].frames_dir is None and sequences[0].annotations_dir == tmp_path / "seq2"
    (alone,) = find_sequences(tmp_path / "seq2")  # one folder of PNGs is one sequence
    assert alone.name == "seq2" and len(alone.annotation_names) == 3


def test_selecting_sequences_by_name(shared_vos) -> None:
    chosen = find_sequences(shared_vos, ["davis2016_kite-surf", "davis2016_blackswan"])
    assert [sequence.name for sequence in chosen] == ["davis2016_kite-surf", "davis2016_blackswan"]
    with pytest.raises(UserInputError, match=r"blackswan not found in .*available: davis2016_blackswan"):
        find_sequences(shared_vos, ["blackswan"])
    assert [sequence.name for sequence in find_sequences(shared_vos, "davis2016_blackswan")] == [
        "davis2016_blackswan"]  # one name as a str, not its letters


def test_bad_roots_are_errors(tmp_path) -> None:
    with pytest.raises(UserInputError, match=r"missing does not exist"):
        find_sequences(tmp_path / "missing")
    with pytest.raises(UserInputError, match=r"no sequences found in"):
        find_sequences(tmp_path)
    sequence = Sequence("x", None, None)
    with pytest.raises(UserInputError, match=r"sequence x has no frame folder"):
        open_sequence_frames(sequence)
    with pytest.raises(UserInputError, match=r"sequence x has no annotation for frame 00000"):
        read_annotation(sequence, "00000")
