"""The embedded default model: present, small, loadable, usable by the reference tracker."""

from __future__ import annotations

import torch

from kmnrt.model.checkpoint import (load_model, read_checkpoint, recommended_read, recommended_short_side,
                                   save_checkpoint)
from kmnrt.model.config import ReadConfig, get_config
from kmnrt.model.embedded import default_checkpoint
from kmnrt.training.default_model import HELDOUT_SEED, MODEL
from kmnrt.training.scoring import track_and_score
from kmnrt.training.videos import VideoConfig, write_video_dataset

MAX_BYTES = 20 * 1024 * 1024


def test_default_checkpoint_is_embedded_small_and_loads():
    path = default_checkpoint(MODEL)
    assert path is not None and path.is_file(), "run `make default-model` to train and install it"
    assert path.stat().st_size <= MAX_BYTES
    _, stored = read_checkpoint(path)
    assert stored == get_config(MODEL)
    assert recommended_read(path) is not None, "the recipe records the sigma it chose on validation videos"
    assert recommended_short_side(path) is not None, "and the short side it chose to track at"
    assert default_checkpoint("paper") is None


def test_install_writes_the_weights_with_the_chosen_read_and_scale(tmp_path):
    from kmnrt.model.kmn import build_model
    from kmnrt.training.default_model import install

    model = build_model(get_config("tiny"), seed=3)
    trained = save_checkpoint(model, tmp_path / "main" / "model.safetensors")
    install(trained, tmp_path / "weights" / "tiny.safetensors", "tiny", sigma=2.0, short_side=288)
    assert recommended_read(tmp_path / "weights" / "tiny.safetensors") == ReadConfig("kmn", 2.0)
    assert recommended_short_side(tmp_path / "weights" / "tiny.safetensors") == 288
    installed, _ = read_checkpoint(tmp_path / "weights" / "tiny.safetensors")
    assert all(torch.equal(installed[k], v) for k, v in model.state_dict().items())


def test_default_model_runs_the_reference_tracker_on_a_generated_video(tmp_path):
    # The embedded weights go through the tracker and the scorer like any checkpoint, and they track: 0.967 on this
    # 6-frame generated video (random weights score near 0; docs/default-model.md has the held-out figures).
    data = write_video_dataset(tmp_path / "videos", videos=1, seed=HELDOUT_SEED + 101,
                               config=VideoConfig(frames=6), progress=False)
    model = load_model(get_config(MODEL), default_checkpoint(MODEL))
    result = track_and_score(model, data, tmp_path / "predictions", progress=False)
    assert 0.9 <= result.global_scores.j_and_f_mean <= 1.0
    assert len(list((tmp_path / "predictions" / "synthetic-0000").glob("*.png"))) == 6


def test_recipe_trains_from_scratch_with_tied_trunks_calibrated_init_and_the_read_loss(tmp_path):
    from kmnrt.training.default_model import GRAD_CLIP, PRETRAIN_WARMUP, READ_LOSS, Recipe, stage_configs

    pretrain, main = stage_configs(Recipe(), tmp_path)
    assert pretrain is None and main.init is None and main.model == MODEL
    assert main.tied_training and main.calibrated_init
    assert main.optim.read_loss_weight == READ_LOSS > 0 and main.optim.grad_clip == GRAD_CLIP
    pretrain, main = stage_configs(Recipe(pretrain_iterations=10), tmp_path, seed=7)
    assert pretrain is not None and pretrain.calibrated_init and pretrain.seed == main.seed == 7
    assert main.init == tmp_path / "pretrain" / "model.safetensors"
    assert pretrain.optim.warmup == PRETRAIN_WARMUP > 0 and main.optim.warmup == 0


def test_recipe_refuses_to_install_over_another_configs_weights(tmp_path):
    import pytest

    from kmnrt.errors import UserInputError
    from kmnrt.model.embedded import EMBEDDED, WEIGHTS_DIR
    from kmnrt.training.default_model import check_install_target

    other = next(name for name in EMBEDDED if name != MODEL)
    with pytest.raises(UserInputError, match=EMBEDDED[MODEL]):
        check_install_target(WEIGHTS_DIR / EMBEDDED[other], MODEL)
    check_install_target(WEIGHTS_DIR / EMBEDDED[MODEL], MODEL)
    check_install_target(tmp_path / "elsewhere.safetensors", MODEL)


def test_recipe_main_stage_is_the_documented_kmnrt_train_command(tmp_path):
    import argparse

    from kmnrt.training.cli import config_from_args, register
    from kmnrt.training.default_model import (
        BATCH,
        BATCHNORM_UNTIL,
        CHANNELS_LAST,
        CROP,
        MAIN_ITERATIONS,
        MEMORY_FORGET,
        SEEDS,
        SHORT_SIDE,
        Recipe,
        stage_configs,
    )

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    (tmp_path / "videos-train").mkdir()
    command = ["train", "--config", MODEL, "--stage", "main", "--size", str(CROP), "--short-side", str(SHORT_SIDE),
               "--batch", str(BATCH), "--iterations", str(MAIN_ITERATIONS), "--lr", "1e-3", "--grad-clip", "1",
               "--tied-training", "--calibrated-init",
               "--read-loss", "1", "--hard-pixels", "0.25", "--memory-forget", str(MEMORY_FORGET),
               "--data", str(tmp_path / "videos-train"), "--threads", "1", "--channels-last",
               "--checkpoint-every", "100", "--log-every", "25", "--seed", "2", "--out", str(tmp_path / "main")]
    assert 2 in SEEDS
    assert (CROP, SHORT_SIDE, BATCH, BATCHNORM_UNTIL, CHANNELS_LAST) == (224, 224, 2, 5000, True)  # the card's
    documented = [*command, "--train-batchnorm-until", str(BATCHNORM_UNTIL)]
    _, main = stage_configs(Recipe(), tmp_path, seed=2)
    assert config_from_args(parser.parse_args(documented)) == main
    # and a recipe option passes through as the same kmnrt train option (0: frozen, train's default)
    _, main = stage_configs(Recipe(batchnorm_until=None), tmp_path, seed=2)
    assert config_from_args(parser.parse_args(command)) == main
    _, main = stage_configs(Recipe(crop=160, short_side=216, batch=4), tmp_path, seed=2)
    assert config_from_args(parser.parse_args([*documented, "--size", "160", "--short-side", "216", "--batch", "4"])) \
        == main
    _, main = stage_configs(Recipe(channels_last=False), tmp_path, seed=2)
    assert config_from_args(parser.parse_args([arg for arg in documented if arg != "--channels-last"])) == main


def test_recipe_tracks_at_the_multiples_of_16_in_the_training_scale_range():
    from kmnrt.training.default_model import track_short_sides

    assert track_short_sides(224) == (224, 240, 256, 272, 288)  # training saw short sides 224-291
    assert track_short_sides(216) == (224, 240, 256, 272)  # 216-280
    assert track_short_sides(288) == (288, 304, 320, 336, 352, 368)
    assert track_short_sides(None) == (None,)  # trained at the crop's scale: frames at their own size


def _tiny_video_folders(root):
    config = VideoConfig(height=64, width=96, frames=5)
    for name, seed in (("videos-train", 11), ("videos-validation", 12), ("videos-heldout", 13)):
        write_video_dataset(root / name, videos=1, seed=seed, config=config, progress=False)
    return root


def test_recipe_trains_seeds_side_by_side_and_keeps_the_best_on_validation(tmp_path):
    """Two seeds in two spawned processes: the weights are those of the same seed trained alone in this
    process, to the bit; the kept seed is the one with the best validation J&F; every seed is recorded."""
    import json

    from safetensors.torch import load_file

    from kmnrt.training.default_model import Recipe, main, train_and_choose

    videos = _tiny_video_folders(tmp_path / "videos")
    argv = ["--out", str(tmp_path / "side-by-side"), "--videos", str(videos), "--config", "tiny", "--size", "64",
            "--short-side", "0", "--iterations", "3", "--train-batchnorm-until", "2", "--seeds", "4", "5",
            "--parallel", "2"]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "side-by-side" / "summary.json").read_text())
    assert set(summary["seeds"]) == {"4", "5"}
    best = max(summary["seeds"], key=lambda seed: summary["seeds"][seed]["validation"])
    assert summary["seed"] == int(best) and summary["validation"] == summary["seeds"][best]["validation"]
    assert summary["seeds"][best]["heldout"] == round(summary["heldout"]["J&F-Mean"], 4)
    assert all(len(seed["validation_by_side_and_sigma"]) == 4 for seed in summary["seeds"].values())  # 4 sigmas

    (tmp_path / "alone").mkdir()
    for name in ("videos-train", "videos-validation"):
        (tmp_path / "alone" / name).symlink_to(videos / name)
    alone = train_and_choose(Recipe("tiny", 64, None, 3, 0, batchnorm_until=2), tmp_path / "alone", seed=5)
    together = load_file(tmp_path / "side-by-side" / "seed-5" / "main" / "model.safetensors")
    assert all(torch.equal(tensor, together[name]) for name, tensor in load_file(alone.checkpoint).items())
    assert round(alone.validation, 4) == summary["seeds"]["5"]["validation"]


def test_recipe_reuses_a_finished_stage_only_when_trained_with_the_same_options(tmp_path, capsys):
    import pytest

    from kmnrt.errors import UserInputError
    from kmnrt.training.default_model import main

    argv = ["--out", str(tmp_path / "out"), "--videos", str(_tiny_video_folders(tmp_path / "videos")), "--config",
            "tiny", "--size", "64", "--short-side", "0", "--iterations", "3", "--train-batchnorm-until", "0",
            "--seeds", "4", "--parallel", "1"]
    assert main(argv) == 0
    weights = tmp_path / "out" / "seed-4" / "main" / "model.safetensors"
    trained = weights.read_bytes()
    assert main(argv) == 0
    assert "main: complete (3 iterations), skipped" in capsys.readouterr().err
    with pytest.raises(UserInputError, match="seed-4/main holds a finished main stage trained with other options: "
                       "channels_last False \\(the run: True\\); give the recipe another --out"):
        main([*argv, "--no-channels-last"])
    assert weights.read_bytes() == trained


def test_recipe_refuses_zero_parallel_runs(tmp_path):
    import pytest

    from kmnrt.errors import UserInputError
    from kmnrt.training.default_model import main

    with pytest.raises(UserInputError, match="--parallel"):
        main(["--out", str(tmp_path / "out"), "--parallel", "0"])


def test_recipe_reports_a_missing_video_folder_without_a_traceback(tmp_path):
    import subprocess
    import sys

    (tmp_path / "videos").mkdir()
    run = subprocess.run([sys.executable, "-m", "kmnrt.training.default_model", "--out", str(tmp_path / "out"),
                          "--videos", str(tmp_path / "videos")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.startswith("error: --videos") and "kmnrt generate-data" in run.stderr
    assert "Traceback" not in run.stderr


def test_recipe_checks_its_training_options_before_generating_any_video(tmp_path):
    import pytest

    from kmnrt.errors import UserInputError
    from kmnrt.training.default_model import main

    with pytest.raises(UserInputError, match="--train-batchnorm-until"):
        main(["--out", str(tmp_path / "out"), "--train-batchnorm-until", "-1"])
    with pytest.raises(UserInputError, match="--pretrain-iterations must be 0 \\(no pre-training\\) or more"):
        main(["--out", str(tmp_path / "out"), "--pretrain-iterations", "-1"])
    with pytest.raises(UserInputError, match=f"--install {tmp_path} is a folder; give a file name"):
        main(["--out", str(tmp_path / "out"), "--install", str(tmp_path)])
    with pytest.raises(UserInputError, match="--threads 2: the recipe trains with --channels-last, which on the CPU "
                       "needs --threads 1 .*; add --no-channels-last"):
        main(["--out", str(tmp_path / "out"), "--threads", "2"])
    with pytest.raises(SystemExit, match="2"):  # argparse: "argument --out: an empty path", not the current folder
        main(["--out", ""])
    assert not (tmp_path / "out").exists()


def test_recipe_links_the_given_videos_and_follows_a_new_videos_folder(tmp_path):
    """Every set is checked before anything is linked; a later run with another --videos uses those, not the
    earlier run's links; videos the recipe generated in --out itself are not replaced by links."""
    import pytest

    from kmnrt.errors import UserInputError
    from kmnrt.training.default_model import link_videos

    sets = (("videos-train", 1, 1), ("videos-validation", 1, 3), ("videos-heldout", 1, 2))
    first, second, out = tmp_path / "first", tmp_path / "second", tmp_path / "out"
    for root in (first, second):
        for name, _, _ in sets:
            (root / name).mkdir(parents=True)
    (second / "videos-heldout").rmdir()
    out.mkdir()
    with pytest.raises(UserInputError, match="has no videos-heldout/"):
        link_videos(second, out, sets)
    assert not list(out.iterdir())  # nothing linked before the check
    link_videos(first, out, sets)
    (second / "videos-heldout").mkdir()
    link_videos(second, out, sets)
    assert [(out / name).resolve() for name, _, _ in sets] == [(second / name).resolve() for name, _, _ in sets]
    (out / "videos-train").unlink()
    (out / "videos-train").mkdir()  # generated here by a run without --videos
    with pytest.raises(UserInputError, match="already holds its own videos-train/"):
        link_videos(first, out, sets)
