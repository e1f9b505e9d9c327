"""Tail weight averaging: the mean of the right iterations' weights, the last weights untouched, resume."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from kmnrt.cli import main as kmnrt_main
from kmnrt.errors import UserInputError
from kmnrt.model.checkpoint import read_checkpoint
from kmnrt.training.averaging import WeightAverage
from kmnrt.training.config import HideAndSeekConfig, OptimConfig, WeightAverageConfig
from kmnrt.training.loop import train


def _constant_lr(config, **changes):
    """Constant lr and a fixed Hide-and-Seek ramp: an n-iteration run is then the first n iterations of a longer
    one, so the weights after iteration n can be had from a run of n iterations."""
    return dataclasses.replace(config, optim=OptimConfig(lr=2e-3, poly_power=None),
                               hide_and_seek=HideAndSeekConfig(grid=4, ramp_iterations=3), **changes)


def _weights(path):
    return read_checkpoint(path)[0]


def test_the_averaged_weights_are_the_mean_of_the_chosen_iterations(small_config, tmp_path):
    base = _constant_lr(small_config, iterations=5, checkpoint_every=1)
    averaged = train(dataclasses.replace(base, out=tmp_path / "avg", average=WeightAverageConfig(start=1, every=2)),
                     progress=False)
    plain = train(dataclasses.replace(base, out=tmp_path / "plain"), progress=False)
    # the last weights are those of the same run without averaging
    for key, value in _weights(plain.checkpoint).items():
        assert torch.equal(_weights(averaged.checkpoint)[key], value), key
    # iterations 1, 3 and 5, each from a run of that length, summed in float64 in order
    snapshots = [_weights(train(dataclasses.replace(base, out=tmp_path / f"n{n}", iterations=n),
                                progress=False).checkpoint) for n in (1, 3, 5)]
    mean = _weights(averaged.averaged)
    assert averaged.averaged.name == "model_averaged.safetensors"
    moved = 0
    for key, value in mean.items():
        if value.is_floating_point():
            expected = sum(s[key].to(torch.float64) for s in snapshots) / 3
            assert torch.equal(value, expected.to(value.dtype)), key
            moved += not torch.equal(value, snapshots[-1][key])
        else:
            assert torch.equal(value, snapshots[-1][key]), key
    assert moved > 0  # the mean differs from the last weights: it averaged something


def test_without_averaging_there_is_no_averaged_file(small_config):
    result = train(small_config, progress=False)
    assert result.averaged is None and not (small_config.out / "model_averaged.safetensors").exists()


def test_a_resumed_run_averages_like_an_uninterrupted_one(small_config, tmp_path):
    whole = _constant_lr(small_config, out=tmp_path / "whole", average=WeightAverageConfig(start=1, every=1))
    full = train(whole, progress=False)
    train(dataclasses.replace(whole, out=tmp_path / "split", iterations=2), progress=False)
    resumed = train(dataclasses.replace(whole, out=tmp_path / "split", resume=tmp_path / "split" / "train_state.pt"),
                    progress=False)
    for key, value in _weights(full.averaged).items():
        assert torch.equal(_weights(resumed.averaged)[key], value), key


def test_resume_refuses_other_averaging(small_config, tmp_path):
    train(dataclasses.replace(small_config, iterations=2), progress=False)  # no averaging, 2 iterations done
    state = small_config.out / "train_state.pt"
    with pytest.raises(UserInputError, match="did not average"):
        train(dataclasses.replace(small_config, resume=state, average=WeightAverageConfig(start=2)), progress=False)
    averaging = dataclasses.replace(small_config, out=tmp_path / "a", iterations=2,
                                    average=WeightAverageConfig(start=1, every=1))
    train(averaging, progress=False)
    with pytest.raises(UserInputError, match="--average-from 1 --average-every 1"):
        train(dataclasses.replace(averaging, iterations=4, resume=tmp_path / "a" / "train_state.pt",
                                  average=WeightAverageConfig(start=1, every=2)), progress=False)


def test_which_iterations_are_averaged():
    chosen = WeightAverage(WeightAverageConfig(start=10, every=5))
    assert [done for done in range(1, 30) if chosen.wants(done)] == [10, 15, 20, 25]
    assert not any(WeightAverage(WeightAverageConfig()).wants(done) for done in range(1, 30))
    with pytest.raises(ValueError, match="no weights"):
        chosen.mean(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("argv, message", [
    (["--average-from", "0"], "--average-from must be an iteration of the stage, 1 to 3"),
    (["--average-from", "4"], "--average-from"),
    (["--average-from", "1", "--average-every", "0"], "--average-every"),
])
def test_cli_averaging_errors_are_one_line(tmp_path, capsys, argv, message):
    assert kmnrt_main(["train", "--iterations", "3", "--out", str(tmp_path / "run"), *argv]) != 0
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and "Traceback" not in error


def test_cli_prints_both_weights_files(tmp_path, capsys):
    out = tmp_path / "run"
    assert kmnrt_main(["train", "--config", "tiny", "--size", "64", "--batch", "2", "--iterations", "2",
                       "--hide-grid", "4", "--threads", "1", "--average-from", "1", "--out", str(out)]) == 0
    assert capsys.readouterr().out.split() == [str(out / "model.safetensors"), str(out / "model_averaged.safetensors")]


def test_generate_data_has_no_training_options(capsys):
    with pytest.raises(SystemExit):
        kmnrt_main(["generate-data", "--help"])
    help_text = capsys.readouterr().out
    assert "--average" not in help_text and "--dice-loss" not in help_text and "--memory-forget" not in help_text
