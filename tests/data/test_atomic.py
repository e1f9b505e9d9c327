"""Atomic outputs and output folders: nothing half-written, and a bad destination is a one-line error."""

from __future__ import annotations

import pytest

from kmnrt.data import atomic_output, output_folder
from kmnrt.errors import UserInputError


def test_atomic_output_replaces_only_on_success(tmp_path):
    target = tmp_path / "sub" / "result.json"
    with atomic_output(target) as tmp:
        tmp.write_text("first")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]


def test_output_folder_creates_parents_and_names_the_option_when_a_file_is_in_the_way(tmp_path):
    assert output_folder(tmp_path / "a" / "b").is_dir()
    assert output_folder(tmp_path / "a" / "b").is_dir()  # an existing folder is fine
    (tmp_path / "taken").write_text("x")
    with pytest.raises(UserInputError, match=r"--save-masks .*taken is a file"):
        output_folder(tmp_path / "taken", "--save-masks")
    with pytest.raises(UserInputError, match=r"--out .*cannot create the folder"):
        output_folder(tmp_path / "taken" / "inside")
