"""`python -m kmnrt.training.scoring`: the reference tracker and the J&F of a checkpoint on DAVIS-style data."""

from __future__ import annotations

import json

import pytest

from kmnrt.errors import UserInputError
from kmnrt.training.scoring import main
from kmnrt.training.videos import VideoConfig, write_video_dataset


def test_scores_the_embedded_default_model_unless_told_otherwise(tmp_path, capsys):
    data = write_video_dataset(tmp_path / "videos", videos=1, seed=12, config=VideoConfig(frames=8), progress=False)
    assert main(["--data", str(data), "--out", str(tmp_path / "default")]) == 0
    assert "random weights" not in capsys.readouterr().err
    trained = json.loads((tmp_path / "default" / "scores.json").read_text())

    assert main(["--config", "lite", "--data", str(data), "--out", str(tmp_path / "random")]) == 0
    assert "scoring seeded random weights (seed 0)" in capsys.readouterr().err
    untrained = json.loads((tmp_path / "random" / "scores.json").read_text())
    assert (tmp_path / "default" / "synthetic-0000" / "00007.png").is_file()
    # the embedded weights track the two objects (0.98 when written); seeded random weights do not (0.03)
    assert trained["global"]["J&F-Mean"] > 0.9 and untrained["global"]["J&F-Mean"] < 0.2
    assert trained["sequences"] == ["synthetic-0000"] and len(trained["per_object"]) == 2


def test_a_bad_sequence_is_named(tmp_path):
    """Scoring a tree whose second sequence has a mask of another size than its frames names that sequence."""
    import cv2

    data = write_video_dataset(tmp_path / "videos", videos=2, seed=12, config=VideoConfig(frames=4), progress=False)
    mask = data / "Annotations" / "synthetic-0001" / "00000.png"
    small = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)[::2, ::2]
    cv2.imwrite(str(mask), small)
    with pytest.raises(UserInputError, match="^sequence synthetic-0001: first mask: mask size 128x72 differs"):
        main(["--config", "tiny", "--data", str(data), "--out", str(tmp_path / "scores")])


def test_an_out_inside_the_data_is_refused_before_anything_is_written(tmp_path):
    """--out DATA/Annotations would replace the ground truth with the predictions, which then score 1.0."""
    data = write_video_dataset(tmp_path / "videos", videos=1, seed=12, config=VideoConfig(frames=4), progress=False)
    truth = {path: path.read_bytes() for path in (data / "Annotations").rglob("*.png")}
    for out in (data / "Annotations", data):
        with pytest.raises(UserInputError, match=f"--out {out} lies inside --data {data}: the predicted masks would "
                           "overwrite its annotations"):
            main(["--config", "tiny", "--data", str(data), "--out", str(out)])
    assert {path: path.read_bytes() for path in (data / "Annotations").rglob("*.png")} == truth
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserInputError, match="is a file; give a folder"):
        main(["--config", "tiny", "--data", str(data), "--out", str(tmp_path / "file")])
    with pytest.raises(SystemExit, match="2"):  # Path("") is the current folder: argparse names --out instead
        main(["--config", "tiny", "--data", str(data), "--out", ""])
