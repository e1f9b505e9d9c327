"""The training loop end to end: files written, resume continues identically, the CLI, user errors."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from kmnrt.cli import main as kmnrt_main
from kmnrt.errors import KmnrtWarning, UserInputError
from kmnrt.model.checkpoint import load_model, read_checkpoint
from kmnrt.model.config import get_config
from kmnrt.model.kmn import build_model
from kmnrt.training.config import HideAndSeekConfig, OptimConfig, preset
from kmnrt.training.loop import hard_pixel_fraction, learning_rate, train


def _schedule_free(config):
    """Constant lr and a fixed Hide-and-Seek ramp: a 2-iteration run is then the first half of a 4-iteration one."""
    return dataclasses.replace(config, optim=OptimConfig(lr=2e-3, poly_power=None),
                               hide_and_seek=HideAndSeekConfig(grid=4, ramp_iterations=3))


def test_a_run_writes_weights_state_log_and_curve(small_config):
    small_config = dataclasses.replace(small_config, log_every=2)
    result = train(small_config, progress=False)
    out = small_config.out
    assert result.iterations == 4 and len(result.losses) == 4 and all(loss > 0 for loss in result.losses)
    for name in ("model.safetensors", "train_state.pt", "train_config.json", "losses.csv", "loss_curve.png",
                 "train.log"):
        assert (out / name).is_file(), name
    assert json.loads((out / "train_config.json").read_text())["size"] == 64
    assert len((out / "losses.csv").read_text().splitlines()) == 1 + 4
    log = (out / "train.log").read_text().splitlines()
    assert log[0].startswith("# tiny pretrain") and log[0].endswith("; data: procedural images")
    assert [line.split()[2] for line in log[1:]] == ["2", "4"]
    state, stored = read_checkpoint(result.checkpoint)
    assert stored == get_config("tiny")
    model = load_model(get_config("tiny"), result.checkpoint)
    fresh = load_model(get_config("tiny"))
    assert not torch.equal(model.decoder.pred2.weight, fresh.decoder.pred2.weight)  # it trained


def test_tensorboard_events_hold_what_train_log_says(small_config, tmp_path):
    """--tensorboard: the loss, lr and pace of every train.log line as scalars TensorBoard itself reads back; a
    resumed run adds its own event file, and the steps go on from its checkpoint: what an interrupted run logged
    past it is replaced, not shown twice."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from torch.utils.tensorboard import SummaryWriter

    config = dataclasses.replace(small_config, log_every=1, tensorboard=True, iterations=2)
    train(config, progress=False)
    state = config.out / "train_state.pt"
    # what a run interrupted after logging iteration 3 but before its next checkpoint leaves behind
    with (config.out / "train.log").open("a") as log:
        log.write("12:00:00 it 3 loss 99.0000 lr 1.00e-03 0.10 s/it\n")
    with SummaryWriter(str(config.out / "tensorboard")) as stale:
        stale.add_scalar("train/loss", 99.0, 3)
    train(dataclasses.replace(config, iterations=4, resume=state), progress=False)  # redoes 3 and 4
    events = EventAccumulator(str(config.out / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"train/loss", "train/lr", "train/seconds_per_iteration"}
    logged = [line.split() for line in (config.out / "train.log").read_text().splitlines() if " it " in line]
    assert [event.step for event in events.Scalars("train/loss")] == [int(line[2]) for line in logged] == [1, 2, 3, 4]
    assert [f"{event.value:.4f}" for event in events.Scalars("train/loss")] == [line[4] for line in logged]
    assert [f"{event.value:.2e}" for event in events.Scalars("train/lr")] == [line[6] for line in logged]
    assert len(list((config.out / "tensorboard").glob("events.out.tfevents.*"))) == 3
    assert "99.0" not in (config.out / "train.log").read_text()  # the interrupted run's line, done again, is gone


def test_tensorboard_missing_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "torch.utils.tensorboard", None)  # as if not installed
    assert kmnrt_main(["train", "--config", "tiny", "--iterations", "1", "--size", "64", "--tensorboard", "--out",
                       str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --tensorboard needs the tensorboard package: pip install tensorboard")
    assert "Traceback" not in error and not (tmp_path / "run").exists()  # asked before anything is written


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_resume_continues_exactly_like_an_uninterrupted_run(small_config, tmp_path, channels_last):
    whole = _schedule_free(dataclasses.replace(small_config, out=tmp_path / "whole", log_every=1,
                                               channels_last=channels_last, threads=1 if channels_last else None))
    full = train(whole, progress=False)
    first_half = dataclasses.replace(whole, out=tmp_path / "split", iterations=2)
    train(first_half, progress=False)
    resumed = train(dataclasses.replace(whole, out=tmp_path / "split", resume=tmp_path / "split" / "train_state.pt"),
                    progress=False)
    assert resumed.losses == full.losses  # same samples, same optimiser state, same numbers
    full_state, _ = read_checkpoint(full.checkpoint)
    resumed_state, _ = read_checkpoint(resumed.checkpoint)
    assert full_state.keys() == resumed_state.keys()
    for key in full_state:
        assert torch.equal(full_state[key], resumed_state[key]), key


def test_channels_last_trains_the_same_network_rounded_differently(small_config, tmp_path):
    runs = {layout: train(_schedule_free(dataclasses.replace(small_config, out=tmp_path / layout,
                                                              channels_last=layout == "nhwc", threads=1)),
                  progress=False)
            for layout in ("nchw", "nhwc")}
    first = [run.losses[0] for run in runs.values()]
    assert first[0] == pytest.approx(first[1], rel=1e-5)  # the first step's forward: one network, two memory orders
    weights = [read_checkpoint(run.checkpoint)[0] for run in runs.values()]
    assert all(tensor.is_contiguous() for tensor in weights[1].values())  # saved as any checkpoint is
    assert max(float((weights[0][k] - weights[1][k]).abs().max()) for k in weights[0]) < 0.05
    with pytest.raises(UserInputError, match="--channels-last on the CPU needs --threads 1"):
        dataclasses.replace(small_config, channels_last=True)  # more threads crashed oneDNN (docs/training.md)


def test_resume_refuses_a_finished_or_foreign_state(small_config, tmp_path):
    train(small_config, progress=False)
    state = small_config.out / "train_state.pt"
    with pytest.raises(UserInputError, match="already reached iteration 4"):
        train(dataclasses.replace(small_config, resume=state), progress=False)
    main_run = preset("tiny", "main", tmp_path / "m", data=tmp_path, iterations=8, resume=state)
    with pytest.raises(UserInputError, match="--stage pretrain"):
        train(main_run, progress=False)
    (tmp_path / "junk.pt").write_bytes(b"not a state")
    with pytest.raises(UserInputError, match="junk.pt is damaged or not a kmnrt training state; give the "
                       "train_state.pt of an earlier run"):
        train(dataclasses.replace(small_config, iterations=8, resume=tmp_path / "junk.pt"), progress=False)
    torch.save({"code": print}, tmp_path / "pickled.pt")  # weights_only refuses it; torch's advice must not show
    with pytest.raises(UserInputError) as raised:
        train(dataclasses.replace(small_config, iterations=8, resume=tmp_path / "pickled.pt"), progress=False)
    assert "weights_only" not in str(raised.value) and "damaged or not a kmnrt training state" in str(raised.value)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(UserInputError, match="empty.pt is empty"):
        train(dataclasses.replace(small_config, iterations=8, resume=tmp_path / "empty.pt"), progress=False)


def test_poly_learning_rate_decays_to_zero():
    config = preset("tiny", "pretrain", "unused", iterations=100, lr=1e-3)
    assert learning_rate(config, 0) == pytest.approx(1e-3)
    assert learning_rate(config, 50) == pytest.approx(1e-3 * 0.5 ** 0.9)
    assert learning_rate(config, 99) < 2e-5
    constant = dataclasses.replace(config, optim=OptimConfig(lr=1e-3, poly_power=None))
    assert learning_rate(constant, 99) == 1e-3


def test_warmup_ramps_the_learning_rate_up_then_hands_over_to_the_schedule():
    config = preset("tiny", "pretrain", "unused", iterations=100, lr=1e-3)
    warm = dataclasses.replace(config, optim=dataclasses.replace(config.optim, warmup=10))
    assert [learning_rate(warm, i) for i in (0, 4, 9)] == pytest.approx(
        [learning_rate(config, i) * f for i, f in ((0, 0.1), (4, 0.5), (9, 1.0))])
    assert [learning_rate(warm, i) for i in (10, 50, 99)] == [learning_rate(config, i) for i in (10, 50, 99)]


def test_hard_pixel_ramp_goes_from_every_pixel_to_the_fraction():
    config = preset("tiny", "main", "unused", iterations=100)
    fixed = dataclasses.replace(config, optim=dataclasses.replace(config.optim, hard_pixel_fraction=0.25))
    assert [hard_pixel_fraction(fixed, i) for i in (0, 50, 99)] == [0.25] * 3
    ramped = dataclasses.replace(fixed, optim=dataclasses.replace(fixed.optim, hard_pixel_ramp=(10, 40)))
    assert [hard_pixel_fraction(ramped, i) for i in (0, 10, 25, 40, 99)] == pytest.approx([1, 1, 0.625, 0.25, 0.25])
    with pytest.raises(UserInputError, match="--hard-pixels-ramp must be two iterations START,END"):
        dataclasses.replace(fixed, optim=dataclasses.replace(fixed.optim, hard_pixel_ramp=(40, 10)))


def test_the_loop_trains_with_the_ramped_fraction(small_config, tmp_path):
    plain = _schedule_free(dataclasses.replace(small_config, out=tmp_path / "plain", iterations=2))
    ramp = dataclasses.replace(plain.optim, hard_pixel_fraction=0.25, hard_pixel_ramp=(0, 1))
    ramped = train(dataclasses.replace(plain, out=tmp_path / "ramped", optim=ramp), progress=False)
    reference = train(plain, progress=False)
    # iteration 0 averages every pixel in both runs, so both take the same step; iteration 1 of the ramped run
    # averages only the hardest quarter of the same pixels, which weigh more than their mean
    assert ramped.losses[0] == reference.losses[0]
    assert ramped.losses[1] > reference.losses[1]


def test_warmup_shrinks_adams_first_step(small_config):
    """Adam's first step moves every weight by about lr whatever the gradient's size: the warm-up's point."""
    start = build_model(get_config(small_config.model), seed=small_config.seed).state_dict()  # the run's own
    steps = {}
    for warmup in (0, 4):
        config = dataclasses.replace(_schedule_free(small_config), iterations=1, out=small_config.out / str(warmup),
                                     optim=OptimConfig(lr=2e-3, poly_power=None, warmup=warmup))
        trained, _ = read_checkpoint(train(config, progress=False).checkpoint)
        steps[warmup] = max(float((trained[name] - start[name]).abs().max()) for name in start)
    assert steps[0] == pytest.approx(2e-3, rel=0.05)
    assert steps[4] == pytest.approx(2e-3 / 4, rel=0.05)


def test_cli_pretrain_then_main_on_generated_videos(tmp_path, capsys):
    videos = tmp_path / "videos"
    assert kmnrt_main(["generate-data", "--out", str(videos), "--videos", "2", "--frames", "6", "--height", "64",
                       "--width", "96", "--seed", "3"]) == 0
    common = ["--config", "tiny", "--size", "64", "--batch", "2", "--iterations", "2", "--threads", "1"]
    assert kmnrt_main(["train", "--stage", "pretrain", *common, "--hide-grid", "4", "--warmup", "3", "--out",
                       str(tmp_path / "pre")]) == 0
    assert kmnrt_main(["train", "--stage", "main", *common, "--data", str(videos), "--clip-frames", "5", "--init",
                       str(tmp_path / "pre" / "model.safetensors"), "--out", str(tmp_path / "main")]) == 0
    printed = capsys.readouterr()
    assert printed.out.strip().splitlines()[-1] == str(tmp_path / "main" / "model.safetensors")
    assert "trained iterations 0 to 2" in printed.err
    assert f"training on 2 videos, 12 annotated frames in {videos}" in printed.err  # what a run reads, said
    assert (tmp_path / "main" / "train.log").read_text().startswith("# tiny main")
    assert f"; data: 2 videos, 12 annotated frames in {videos}\n" in (tmp_path / "main" / "train.log").read_text()
    stored = json.loads((tmp_path / "main" / "train_config.json").read_text())
    assert stored["stage"] == "main" and stored["init"] == str(tmp_path / "pre" / "model.safetensors")
    assert stored["clip_frames"] == 5 and stored["optim"]["warmup"] == 0
    pretrain = json.loads((tmp_path / "pre" / "train_config.json").read_text())
    assert pretrain["hide_and_seek"]["grid"] == 4 and pretrain["optim"]["warmup"] == 3
    # a second run into the same folder neither starts over silently nor needs more than --resume or --force
    weights = (tmp_path / "pre" / "model.safetensors").read_bytes()
    again = ["train", "--stage", "pretrain", *common, "--hide-grid", "4", "--out", str(tmp_path / "pre")]
    assert kmnrt_main(again) == 2
    assert f"--resume {tmp_path / 'pre' / 'train_state.pt'}" in capsys.readouterr().err
    assert (tmp_path / "pre" / "model.safetensors").read_bytes() == weights
    # a new run where one failed before its first checkpoint (no state to resume) starts its own log
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "train.log").write_text("# tiny pretrain: a run that failed\n")
    assert kmnrt_main(["train", "--stage", "pretrain", *common, "--out", str(tmp_path / "fresh")]) == 0
    assert "failed" not in (tmp_path / "fresh" / "train.log").read_text()
    # --force with a typo in --init: refused, and the run it was to replace is still there
    assert kmnrt_main([*again, "--force", "--init", str(tmp_path / "typo.safetensors")]) == 2
    assert "typo.safetensors does not exist" in capsys.readouterr().err
    assert (tmp_path / "pre" / "model.safetensors").read_bytes() == weights
    assert (tmp_path / "pre" / "train_state.pt").is_file()
    assert kmnrt_main([*again, "--force", "--seed", "1"]) == 0
    assert (tmp_path / "pre" / "model.safetensors").read_bytes() != weights
    # --force starts over: the earlier run's log is gone, not continued below the new header
    assert (tmp_path / "pre" / "train.log").read_text().count("# tiny pretrain") == 1
    # --resume into another run's folder would overwrite it: refused like a new run; a run's folder names its state
    assert kmnrt_main([*again, "--resume", str(tmp_path / "main"), "--iterations", "3"]) == 2
    assert "already holds another training run" in capsys.readouterr().err
    assert kmnrt_main(["train", "--stage", "main", *common[:-4], "--iterations", "3", "--threads", "1", "--data",
                       str(videos), "--clip-frames", "5", "--resume", str(tmp_path / "main"), "--out",
                       str(tmp_path / "main")]) == 0
    printed = capsys.readouterr().err
    assert "trained iterations 2 to 3" in printed and "iterations 3 (the run: 2)" in printed
    assert "data " not in printed
    # the same run resumed on other videos goes on, and says so (the same folder spelled otherwise is no change)
    other = shutil.copytree(videos, tmp_path / "other-videos")
    resume = ["train", "--stage", "main", *common[:-4], "--threads", "1", "--clip-frames", "5", "--resume",
              str(tmp_path / "main"), "--out", str(tmp_path / "main")]
    assert kmnrt_main([*resume, "--iterations", "4", "--data", str(other)]) == 0
    printed = capsys.readouterr().err
    assert f"iterations 4 (the run: 3), data {other} (the run: {videos}); it goes on with them" in printed
    assert kmnrt_main([*resume, "--iterations", "5", "--data", f"{other}/../other-videos"]) == 0
    assert "data " not in capsys.readouterr().err


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(tmp_path, capsys):
    """NaN from a far too large step: the run stops at once with the iteration, instead of overwriting the last
    good checkpoint with NaN weights and ending as if it had succeeded; a resume warns of changed options."""
    out = tmp_path / "run"
    common = ["train", "--config", "tiny", "--size", "64", "--batch", "2", "--threads", "1", "--hide-grid", "4",
              "--checkpoint-every", "1", "--out", str(out)]
    assert kmnrt_main([*common, "--iterations", "1"]) == 0
    good = (out / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert kmnrt_main([*common, "--iterations", "6", "--lr", "1e5", "--constant-lr", "--read-loss", "1",
                       "--resume", str(out)]) == 2
    printed = capsys.readouterr().err
    assert re.search(r"warning: --resume continues with options that differ from the run's .*: iterations 6 "
                     r"\(the run: 1\), optim.lr 100000.0 \(the run: 0.001\)", printed), printed
    error = printed.strip().splitlines()[-1]
    assert re.match(r"error: the loss became nan at iteration \d: training diverged \(the last checkpoint, "
                    r"iteration \d, is kept: continue with --resume .*\); lower --lr", error), error
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert (out / "model.safetensors").read_bytes() == good or state["iteration"] > 1
    for bad in ("-1", "0", "nan"):
        assert kmnrt_main([*common, "--iterations", "2", "--grad-clip", bad, "--force"]) == 2
        assert "--grad-clip must be a positive gradient norm" in capsys.readouterr().err


def test_cli_trains_past_damaged_frames_and_says_which(tmp_path, capsys):
    videos = tmp_path / "videos"
    assert kmnrt_main(["generate-data", "--out", str(videos), "--videos", "2", "--frames", "4", "--height", "64",
                       "--width", "96", "--seed", "3"]) == 0
    damaged = videos / "JPEGImages" / "synthetic-0000"
    for frame in damaged.iterdir():
        frame.write_bytes(frame.read_bytes()[:100])  # cut short, as by an interrupted copy
    capsys.readouterr()
    assert kmnrt_main(["train", "--stage", "main", "--config", "tiny", "--size", "64", "--batch", "2", "--iterations",
                       "4", "--threads", "1", "--data", str(videos), "--out", str(tmp_path / "run")]) == 0
    error = capsys.readouterr().err
    assert f"warning: training goes on without this file: cannot decode image {damaged}" in error
    assert "trained iterations 0 to 4" in error and "Traceback" not in error


@pytest.mark.parametrize("argv, message", [
    (["--stage", "main"], "--stage main trains on videos"),
    (["--size", "50"], "multiple of 16"),
    (["--hide-grid", "-2"], "Hide-and-Seek"),
    (["--threads", "0"], "--threads"),
    (["--hard-pixels", "0"], "--hard-pixels"),
    (["--warmup", "-1"], "--warmup"),
    (["--clip-frames", "1"], "--clip-frames"),
    (["--seed", "-1"], "--seed"),
    (["--train-batchnorm-until", "1"], "--train-batchnorm-until must be an iteration"),
    (["--hard-pixels-ramp", "5"], "--hard-pixels-ramp 5: give two iterations START,END"),
    (["--hard-pixels-ramp", "0,5"], "--hard-pixels-ramp must be two iterations START,END with 0 <= START < END <= 1"),
    (["--data", "/nonexistent/kmnrt"], "is not a folder"),
    (["--max-skip", "10"], "--max-skip sets the max_skip curriculum of --stage main, not of this --stage pretrain"),
    (["--short-side", "200"], "--short-side sets the resizing of video frames of --stage main"),
    (["--size", "64", "--hide-grid", "100"], "--hide-grid 100 cuts a 64-pixel crop into cells under one pixel; use "
                                             "at most 64 (one cell per key cell: 4)"),
])
def test_cli_user_errors_are_one_line(tmp_path, capsys, argv, message):
    assert kmnrt_main(["train", "--iterations", "1", "--out", str(tmp_path / "run"), *argv]) != 0
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and "Traceback" not in error


def test_cli_refuses_options_of_the_other_stage_and_says_which(tmp_path, capsys):
    """An option that shapes the other stage's clips would be recorded in train_config.json and change nothing."""
    from kmnrt.training.videos import VideoConfig, write_video_dataset

    videos = write_video_dataset(tmp_path / "videos", videos=1, seed=3, config=VideoConfig(64, 96, frames=4),
                                 progress=False)
    cases = [
        (["--stage", "main", "--data", str(videos), "--hide-grid", "8"],
         "--hide-grid sets Hide-and-Seek of --stage pretrain, not of this --stage main run: drop --hide-grid"),
        # every misplaced option at once, and 0 is a value given too (it is not checked as a value first)
        (["--stage", "main", "--data", str(videos), "--no-hide-and-seek", "--motion-fraction", "0", "--hide-grid",
          "0"], "--hide-grid sets Hide-and-Seek; --no-hide-and-seek sets Hide-and-Seek; --motion-fraction sets the "
         "procedural images of --stage pretrain, not of this --stage main run: drop --hide-grid --no-hide-and-seek "
         "--motion-fraction"),
        (["--max-skip", "0", "--skip-every", "0"], "drop --max-skip --skip-every"),
        (["--stage", "pretrain", "--data", str(videos), "--motion-fraction", "0.2"],
         "--motion-fraction sets the procedural images, and --data gives images of your own"),
        (["--stage", "pretrain", "--no-hide-and-seek", "--hide-grid", "14"],
         "--hide-grid 14 sets Hide-and-Seek's grid, and --no-hide-and-seek turns Hide-and-Seek off"),
        (["--stage", "main", "--data", str(videos), "--init", str(videos), "--tied-init", "--calibrated-init"],
         "--tied-init and --calibrated-init shape a random initialisation, and --init gives the weights to start "
         "from: drop --tied-init --calibrated-init"),
    ]
    for argv, message in cases:
        assert kmnrt_main(["train", "--iterations", "2", "--out", str(tmp_path / "run"), *argv]) != 0
        error = capsys.readouterr().err
        assert error.startswith("error: ") and message in error and "Traceback" not in error
    assert not (tmp_path / "run").exists()


def test_cli_pretraining_on_a_video_tree_says_to_use_the_main_stage(tmp_path, capsys):
    from kmnrt.training.videos import VideoConfig, write_video_dataset

    videos = write_video_dataset(tmp_path / "videos", videos=1, seed=3, config=VideoConfig(64, 96, frames=4),
                                 progress=False)
    argv = ["train", "--stage", "pretrain", "--data", str(videos), "--iterations", "2", "--out", str(tmp_path / "r")]
    assert kmnrt_main(argv) != 0
    error = capsys.readouterr().err
    assert "holds folders, as a video tree does" in error and "--stage main" in error and "Traceback" not in error


def test_a_resume_on_other_data_is_named_whatever_the_working_folder(tmp_path, monkeypatch):
    """The run records its data's full path; procedural images (no --data) are named as such."""
    from kmnrt.training.config import preset
    from kmnrt.training.resume import resolved, warn_of_changed_options

    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path)
    recorded = tmp_path / "train_config.json"
    run = preset("tiny", "pretrain", tmp_path / "run")
    recorded.write_text(json.dumps(dataclasses.replace(run, data=resolved(Path("a"))).to_dict()))
    monkeypatch.chdir(tmp_path / "a")  # "." is the run's folder a, spelled otherwise from here
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_of_changed_options(dataclasses.replace(run, data=Path(".")), recorded)
    with pytest.warns(KmnrtWarning, match=r"data procedural images \(the run: .*/a\)"):
        warn_of_changed_options(run, recorded)
    recorded.write_text(json.dumps(run.to_dict()))
    with pytest.warns(KmnrtWarning, match=r"data a \(the run: procedural images\)"):
        warn_of_changed_options(dataclasses.replace(run, data=Path("a")), recorded)
