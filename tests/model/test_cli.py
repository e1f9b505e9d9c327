"""`kmnrt track` end to end on real frames, and its answers to bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kmnrt.cli import main
from kmnrt.model.checkpoint import save_checkpoint
from kmnrt.model.config import get_config
from kmnrt.model.kmn import build_model


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of an image, the file closed again (Image.open reads lazily and keeps it open)."""
    with Image.open(path) as image:
        return image.size


@pytest.fixture()
def tiny_checkpoint(tmp_path):
    return save_checkpoint(build_model(get_config("tiny"), seed=0), tmp_path / "tiny.safetensors")


def run(capsys, *args):
    code = main(["track", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_track_writes_palette_pngs_named_like_the_frames(tmp_path, capsys, shared_vos, tiny_checkpoint):
    seq = shared_vos / "davis2016_bmx-trees"
    out = tmp_path / "pred"
    first_mask = seq / "Annotations_davis2017_first_frame" / "00000.png"
    code, stdout, err = run(capsys, "--config", "tiny", "--checkpoint", tiny_checkpoint,
                            "--input", seq / "JPEGImages", "--mask", first_mask, "--out", out, "--max-frames", 4)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "00002.png", "00003.png"]
    with Image.open(out / "00000.png") as first:
        assert first.mode == "P" and first.size == (854, 480)
        assert first.getpalette()[3:9] == [128, 0, 0, 0, 128, 0]  # DAVIS colours of ids 1 and 2
        first_labels = np.asarray(first)
    given = np.asarray(Image.open(seq / "Annotations_davis2017_first_frame" / "00000.png"))
    assert np.array_equal(first_labels, given)
    assert set(np.unique(np.asarray(Image.open(out / "00003.png")))) <= {0, 1, 2}
    assert "2 object(s) [1, 2] over 4 frames" in stdout


def test_track_reads_a_video_file(tmp_path, capsys, tiny_checkpoint, under_declared_video):
    import cv2

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (80, 48))
    for t in range(5):
        frame = np.full((48, 80, 3), 40, np.uint8)
        cv2.circle(frame, (20 + 5 * t, 24), 8, (0, 200, 255), -1)
        writer.write(frame)
    writer.release()
    mask = np.zeros((48, 80), np.uint8)
    mask[16:33, 12:29] = 1
    Image.fromarray(mask).save(tmp_path / "mask.png")
    code, stdout, err = run(capsys, "--config", "tiny", "--checkpoint", tiny_checkpoint, "--input", video,
                            "--mask", tmp_path / "mask.png", "--out", tmp_path / "pred")
    assert code == 0, err
    assert len(list((tmp_path / "pred").glob("*.png"))) == 5
    assert png_size(tmp_path / "pred" / "00004.png") == (80, 48)
    assert "own size" in stdout

    scaled = save_checkpoint(build_model(get_config("tiny"), seed=0), tmp_path / "scaled.safetensors", short_side=96)
    code, stdout, err = run(capsys, "--config", "tiny", "--checkpoint", scaled, "--input", video,
                            "--mask", tmp_path / "mask.png", "--out", tmp_path / "scaled")
    assert code == 0, err
    assert "short side 96" in stdout  # the checkpoint's training scale is the default
    assert png_size(tmp_path / "scaled" / "00004.png") == (80, 48)  # masks come back at the frames' size

    under_declared_video(video, 3)
    code, stdout, err = run(capsys, "--config", "tiny", "--checkpoint", tiny_checkpoint, "--input", video,
                            "--mask", tmp_path / "mask.png", "--out", tmp_path / "declared")
    assert code == 0, err
    assert len(list((tmp_path / "declared").glob("*.png"))) == 3
    assert f"warning: video {video} holds more frames than the 3 it declares" in err
    assert "UserWarning" not in err and "warnings.warn" not in err  # one line, not Python's default format


def test_random_weights_come_with_a_warning(tmp_path, capsys, shared_vos):
    seq = shared_vos / "davis2016_blackswan"
    code, _, err = run(capsys, "--config", "lite", "--input", seq / "JPEGImages",
                       "--mask", seq / "Annotations" / "00000.png", "--out", tmp_path / "pred", "--max-frames", 1)
    assert code == 0 and "random weights" in err


def bad_input_cases(tmp_path, shared_vos):
    seq = shared_vos / "davis2016_blackswan"
    mask = seq / "Annotations" / "00000.png"
    (tmp_path / "empty").mkdir()
    Image.fromarray(np.zeros((480, 854), np.uint8)).save(tmp_path / "blank.png")
    Image.fromarray(np.zeros((240, 427), np.uint8) + 1).save(tmp_path / "small.png")
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(seq / "JPEGImages" / "00000.jpg", broken / "00000.jpg")
    (broken / "00001.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    other = tmp_path / "paper.pth"
    torch.save({"module.Encoder_M.conv1.weight": torch.zeros(64, 3, 7, 7)}, other)
    frames = seq / "JPEGImages"
    (tmp_path / "pred").mkdir()  # the --out of every case: here also the frames of one
    for name in ("00000.jpg", "00001.jpg"):
        shutil.copy(frames / name, tmp_path / "pred" / name)
    return {
        "empty frame folder": (["--input", tmp_path / "empty", "--mask", mask], str(tmp_path / "empty")),
        "mask of another size": (["--input", frames, "--mask", tmp_path / "small.png"], "differs from the frame size"),
        "first mask without object": (["--input", frames, "--mask", tmp_path / "blank.png"], "no object"),
        "unreadable image": (["--input", broken, "--mask", mask], "00001.jpg: the file is empty, damaged or not an "
                             "image; replace it or remove it from the folder; the 1 masks before it are in"),
        "checkpoint of another architecture": (["--input", frames, "--mask", mask, "--checkpoint", other],
                                               "does not fit the tiny model"),
        "missing mask": (["--input", frames, "--mask", tmp_path / "nope.png"], "nope.png"),
        "tiny short side": (["--input", frames, "--mask", mask, "--short-side", 8], "--short-side must be 0"),
        "output over the input": (["--input", tmp_path / "pred", "--mask", mask], "is the --input folder"),
    }


@pytest.mark.parametrize("case", ["empty frame folder", "mask of another size", "first mask without object",
                                  "unreadable image", "checkpoint of another architecture", "missing mask",
                                  "tiny short side", "output over the input"])
def test_bad_input_gives_one_clear_error(tmp_path, capsys, shared_vos, tiny_checkpoint, case):
    args, expected = bad_input_cases(tmp_path, shared_vos)[case]
    if "--checkpoint" not in args:
        args = [*args, "--checkpoint", tiny_checkpoint]
    code, _, err = run(capsys, "--config", "tiny", *args, "--out", tmp_path / "pred", "--max-frames", 3)
    assert code == 2
    assert err.startswith("error: ") or "\nerror: " in err
    assert expected in err
    assert "Traceback" not in err


def test_with_no_options_the_embedded_model_tracks(tmp_path, capsys):
    # The default config is the one with shipped weights: no random-weights warning, the checkpoint's recommended
    # sigma and short side, and masks that follow the two moving objects of a generated video (mean IoU 0.95 with these
    # weights; the first mask left in place scores 0.48).
    from kmnrt.training.videos import VideoConfig, write_video_dataset

    data = write_video_dataset(tmp_path / "videos", videos=1, seed=12, config=VideoConfig(frames=8), progress=False)
    frames, masks = data / "JPEGImages" / "synthetic-0000", data / "Annotations" / "synthetic-0000"
    code, stdout, err = run(capsys, "--input", frames, "--mask", masks / "00000.png", "--out", tmp_path / "pred")
    assert code == 0, err
    assert "random weights" not in err
    assert "2 object(s) [1, 2]" in stdout and "small, kmn read, sigma 2, short side 272" in stdout

    def mean_iou(predictions: Path) -> float:
        ious = []
        for name in [f"{index:05d}.png" for index in range(1, 8)]:
            predicted, truth = np.asarray(Image.open(predictions / name)), np.asarray(Image.open(masks / name))
            ious += [((predicted == i) & (truth == i)).sum() / ((predicted == i) | (truth == i)).sum() for i in (1, 2)]
        return float(np.mean(ious))

    static = tmp_path / "static"
    static.mkdir()
    for index in range(1, 8):
        shutil.copy(masks / "00000.png", static / f"{index:05d}.png")
    assert mean_iou(tmp_path / "pred") > 0.9 and mean_iou(static) < 0.6
