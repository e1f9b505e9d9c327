"""``kmnrt run`` and ``kmnrt eval --bundle`` end to end on real frames, and their error messages."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from kmnrt.cli import main
from kmnrt.data import read_label_png, write_label_png

FRAMES = 8


@pytest.fixture()
def video_folder(tmp_path, bmx_small):
    """Frames of bmx-trees as PNGs plus the two-object first mask."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for index, frame in enumerate(bmx_small.frames[:FRAMES]):
        cv2.imwrite(str(frames / f"{index:05d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    write_label_png(tmp_path / "mask.png", np.where(bmx_small.first_mask == 2, 7, bmx_small.first_mask))
    return frames, tmp_path / "mask.png"


def run(*args: str) -> int:
    return main(["run", *map(str, args)])


def test_run_writes_masks_overlay_and_timings(tiny_bundle, video_folder, tmp_path, capsys):
    frames, mask = video_folder
    out, overlay = tmp_path / "out", tmp_path / "overlay.mp4"
    assert run("--bundle", tiny_bundle, "--input", frames, "--mask", mask, "--out", out, "--overlay", overlay,
               "--backend", "onnxruntime") == 0
    pngs = sorted(out.glob("*.png"))
    assert [p.stem for p in pngs] == [f"{i:05d}" for i in range(FRAMES)]
    labels = read_label_png(pngs[-1])
    assert labels.shape == (60, 106) and set(np.unique(labels)) <= {0, 1, 7}
    capture = cv2.VideoCapture(str(overlay))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
    capture.release()
    captured = capsys.readouterr()
    for stage in ("query encode", "memory read", "decode", "memorize", "total per frame", "fps"):
        assert stage in captured.out
    assert "backend onnxruntime" in captured.err


def test_a_mask_folder_adds_the_objects_of_later_masks_as_the_session_api_does(tiny_bundle, video_folder, tmp_path):
    from kmnrt.runtime.tracker import Tracker

    frames, mask = video_folder
    first = read_label_png(mask)
    masks = tmp_path / "masks"
    masks.mkdir()
    write_label_png(masks / "00000.png", np.where(first == 7, 0, first))  # object 7 first appears in frame 3
    write_label_png(masks / "00003.png", first)
    out = tmp_path / "out"
    assert run("--bundle", tiny_bundle, "--input", frames, "--mask", masks, "--out", out,
               "--backend", "onnxruntime") == 0
    written = [read_label_png(out / f"{i:05d}.png") for i in range(FRAMES)]
    assert all(7 not in np.unique(labels) for labels in written[:3])
    assert np.array_equal(written[3] == 7, first == 7)  # the given pixels of the new object
    with Tracker.from_bundle(tiny_bundle, backend="onnxruntime") as tracker:
        state = tracker.start(cv2.imread(str(frames / "00000.png"))[..., ::-1], read_label_png(masks / "00000.png"))
        for index in range(1, FRAMES):
            frame = cv2.imread(str(frames / f"{index:05d}.png"))[..., ::-1]
            result = (tracker.add_objects(state, frame, first) if index == 3 else tracker.step(state, frame))
            assert np.array_equal(result.mask, written[index]), index


def test_run_on_a_video_file_of_another_size(tiny_bundle, bmx_small, tmp_path):
    """A 120x212 mp4 with a 64x112 bundle: masks come back at the video's size."""
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (212, 120))
    for frame in bmx_small.frames[:6]:
        writer.write(cv2.cvtColor(cv2.resize(frame, (212, 120)), cv2.COLOR_RGB2BGR))
    writer.release()
    mask = tmp_path / "mask.png"
    write_label_png(mask, cv2.resize(bmx_small.first_mask, (212, 120), interpolation=cv2.INTER_NEAREST))
    assert run("--bundle", tiny_bundle, "--input", video, "--mask", mask, "--out", tmp_path / "out",
               "--max-frames", 4) == 0
    masks = sorted((tmp_path / "out").glob("*.png"))
    assert len(masks) == 4 and read_label_png(masks[-1]).shape == (120, 212)


def test_run_warns_when_a_video_holds_more_frames_than_it_declares(tiny_bundle, bmx_small, tmp_path, capsys,
                                                                   under_declared_video):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (106, 60))
    for frame in bmx_small.frames[:6]:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    under_declared_video(video, 4)
    mask = tmp_path / "mask.png"
    write_label_png(mask, bmx_small.first_mask)
    assert run("--bundle", tiny_bundle, "--input", video, "--mask", mask, "--out", tmp_path / "out") == 0
    assert len(list((tmp_path / "out").glob("*.png"))) == 4
    assert f"warning: video {video} holds more frames than the 4 it declares" in capsys.readouterr().err


def test_a_corrupt_frame_is_named_and_earlier_masks_stay(tiny_bundle, video_folder, tmp_path, capsys):
    frames, mask = video_folder
    (frames / "00003.png").write_bytes(b"\x89PNG broken")
    out, overlay = tmp_path / "out", tmp_path / "overlay.mp4"
    assert run("--bundle", tiny_bundle, "--input", frames, "--mask", mask, "--out", out, "--overlay", overlay) == 2
    err = capsys.readouterr().err
    assert "error: frame 3 of" in err and "00003.png" in err and "Traceback" not in err
    assert f"the 3 masks before it are in {out} and the overlay {overlay} shows those frames" in err
    assert sorted(p.stem for p in out.glob("*.png")) == ["00000", "00001", "00002"]


def test_a_shorter_run_into_the_same_folder_warns_of_the_earlier_masks(tiny_bundle, video_folder, tmp_path,
                                                                      capsys):
    frames, mask = video_folder
    out = tmp_path / "out"
    assert run("--bundle", tiny_bundle, "--input", frames, "--mask", mask, "--out", out) == 0
    assert "warning" not in capsys.readouterr().err
    assert run("--bundle", tiny_bundle, "--input", frames, "--mask", mask, "--out", out, "--max-frames", 5) == 0
    assert (f"warning: {out} also holds 3 mask(s) this run did not write (00005.png, 00006.png, 00007.png), from "
            f"an earlier run") in capsys.readouterr().err


def test_a_bad_bundle_leaves_no_output_folder(video_folder, tmp_path, capsys):
    frames, mask = video_folder
    assert run("--bundle", tmp_path / "no-bundle", "--input", frames, "--mask", mask, "--out", tmp_path / "out") == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("problem,message", [
    ("empty", "has no object"),
    ("size", "mask size 50x40 differs from the frame size 106x60"),
    ("objects", "5 objects exceed the maximum of 4 objects"),
    ("backend", "unknown backend 'fast'"),
    ("out", "is a file; give a folder"),
])
def test_run_errors_are_one_line(tiny_bundle, video_folder, tmp_path, capsys, problem, message):
    frames, mask = video_folder
    labels = read_label_png(mask).copy()
    backend = "auto"
    if problem == "empty":
        labels = np.zeros_like(labels)
    elif problem == "size":
        labels = np.ones((40, 50), np.uint8)
    elif problem == "objects":
        for k, row in enumerate(range(0, 15, 5)):
            labels[row:row + 3, :3] = 20 + k
    elif problem == "backend":
        backend = "fast"
    else:
        (tmp_path / "out").write_text("a file where the masks should go")
    write_label_png(mask, labels)
    assert run("--bundle", tiny_bundle, "--input", frames, "--mask", mask, "--out", tmp_path / "out",
               "--backend", backend) == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err


def test_run_refuses_to_write_over_its_own_input(tiny_bundle, video_folder, bmx_small, tmp_path, capsys):
    """--out on the frames or the masks, a first mask where a frame's mask would go, --overlay on the video:
    each is refused before anything is written, and the input stays as it was."""
    frames, mask = video_folder
    masks = tmp_path / "masks"
    masks.mkdir()
    (masks / "00000.png").write_bytes(mask.read_bytes())
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (106, 60))
    for frame in bmx_small.frames[:3]:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    before = {path: path.read_bytes() for path in [*frames.iterdir(), *masks.iterdir(), video]}
    cases = [
        (["--input", frames, "--mask", mask, "--out", frames], f"--out {frames} is the --input folder"),
        (["--input", frames, "--mask", masks, "--out", masks], f"--out {masks} is the --mask folder"),
        (["--input", frames, "--mask", masks / "00000.png", "--out", masks],
         f"--out {masks} holds --mask 00000.png, which the masks would overwrite"),
        (["--input", video, "--mask", mask, "--out", tmp_path / "out", "--overlay", video],
         f"--overlay {video} is the --input video"),
    ]
    for argv, message in cases:
        assert run("--bundle", tiny_bundle, *argv) == 2
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1].startswith(f"error: {message}"), err
    assert {path: path.read_bytes() for path in before} == before
    assert sorted(path.name for path in masks.iterdir()) == ["00000.png"] and not (tmp_path / "out").exists()


def test_eval_bundle_runs_and_scores(tiny_bundle, bmx_small, tmp_path, capsys):
    """``kmnrt eval --bundle B --dataset ROOT`` equals running, saving and scoring the saved masks."""
    root = tmp_path / "davis"
    for index, (frame, truth) in enumerate(zip(bmx_small.frames[:FRAMES], bmx_small.truth)):
        frame_path = root / "JPEGImages" / "480p" / "bmx" / f"{index:05d}.jpg"
        frame_path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(frame_path), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        write_label_png(root / "Annotations" / "480p" / "bmx" / f"{index:05d}.png", truth)
    saved = tmp_path / "saved"
    assert main(["eval", "--bundle", str(tiny_bundle), "--dataset", str(root), "--backend", "onnxruntime",
                 "--save-masks", str(saved), "--json", str(tmp_path / "a.json")]) == 0
    assert len(list((saved / "bmx").glob("*.png"))) == FRAMES
    assert main(["eval", str(root), str(saved), "--json", str(tmp_path / "b.json")]) == 0
    assert main(["eval", "--dataset", str(root), str(saved), "--json", str(tmp_path / "c.json")]) == 0
    first, second, third = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "abc")
    assert first == second == third
    assert "J&F-Mean" in capsys.readouterr().out
    assert main(["eval", "--bundle", str(tiny_bundle), "--dataset", str(root), str(saved)]) == 2
    assert "PRED_ROOT" in capsys.readouterr().err
    write_label_png(root / "Annotations" / "480p" / "bmx" / "00000.png", np.zeros_like(bmx_small.truth[0]))
    assert main(["eval", "--bundle", str(tiny_bundle), "--dataset", str(root)]) == 2
    assert "\nerror: sequence bmx: mask of frame 0 has no object" in capsys.readouterr().err
    truth = {path: path.read_bytes() for path in (root / "Annotations" / "480p" / "bmx").iterdir()}
    assert main(["eval", "--bundle", str(tiny_bundle), "--dataset", str(root), "--save-masks",
                 str(root / "Annotations" / "480p")]) == 2  # would have overwritten the ground truth, then scored 1
    assert "is the ground-truth (bmx) folder" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in truth} == truth


def test_a_failed_run_leaves_no_empty_folder_and_no_half_replaced_overlay(tiny_bundle, video_folder, tmp_path,
                                                                          capsys):
    """A mask refused at frame 0 leaves no --out folder; a run that ends part-way for another reason than an
    unreadable frame (here a later mask with more objects than the bundle holds) leaves an overlay already at
    --overlay as it was; a bad --overlay path is named before the bundle loads; a later mask of the wrong size is
    named when the masks are read, before any frame is written."""
    frames, mask = video_folder
    empty = tmp_path / "empty.png"
    write_label_png(empty, np.zeros((60, 106), np.uint8))
    assert run("--bundle", tiny_bundle, "--input", frames, "--mask", empty, "--out", tmp_path / "new" / "out",
               "--overlay", tmp_path / "videos" / "overlay.mp4") == 2
    assert "has no object" in capsys.readouterr().err and not (tmp_path / "new").exists()  # nor its new parent
    assert not (tmp_path / "videos").exists()  # nor the overlay's

    masks, crowded = tmp_path / "masks", read_label_png(mask).copy()
    masks.mkdir()
    write_label_png(masks / "00000.png", crowded)
    crowded[:2, :5] = [[11], [12]]
    crowded[10:12, :5] = [[13], [14]]
    write_label_png(masks / "00004.png", crowded)  # 2 + 4 objects > the bundle's 4
    overlay = tmp_path / "overlay.mp4"
    overlay.write_bytes(b"an earlier overlay")
    assert run("--bundle", tiny_bundle, "--input", frames, "--mask", masks, "--out", tmp_path / "out",
               "--overlay", overlay) == 2
    assert "frame 4: 6 objects exceed the maximum of 4" in capsys.readouterr().err
    assert overlay.read_bytes() == b"an earlier overlay" and not list(tmp_path.glob(".overlay*"))
    assert len(list((tmp_path / "out").glob("*.png"))) == 4  # the masks written stay

    (tmp_path / "afile").write_text("x")
    assert run("--bundle", tmp_path / "no-bundle", "--input", frames, "--mask", mask, "--out", tmp_path / "o2",
               "--overlay", tmp_path / "afile" / "x.mp4") == 2
    assert capsys.readouterr().err.strip() == (f"error: --overlay {tmp_path / 'afile' / 'x.mp4'}: {tmp_path / 'afile'} "
                                               f"is a file, not a folder; choose another path")

    write_label_png(masks / "00004.png", np.zeros((30, 50), np.uint8))
    assert run("--bundle", tiny_bundle, "--input", frames, "--mask", masks, "--out", tmp_path / "o3") == 2
    assert capsys.readouterr().err.strip() == (f"error: mask {masks / '00004.png'} is 50x30, but the first frame's "
                                               f"mask 00000.png is 106x60 (width x height); every mask must have its "
                                               f"frame's size")
    assert not (tmp_path / "o3").exists()
