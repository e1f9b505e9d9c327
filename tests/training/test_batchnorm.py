"""BatchNorm recalibration and ``--train-batchnorm-until``: population statistics, then frozen, resumable."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from kmnrt.errors import UserInputError
from kmnrt.model.checkpoint import load_state_into, read_checkpoint
from kmnrt.model.config import get_config
from kmnrt.model.kmn import build_model
from kmnrt.training.batchnorm import recalibrate_batchnorm
from kmnrt.training.config import HideAndSeekConfig, OptimConfig
from kmnrt.training.loop import build_dataset, train
from kmnrt.training.step import batchnorm_layers, set_train_mode


def _statistics(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var"))}


def test_recalibration_sets_population_statistics_and_leaves_weights_alone(small_config):
    model = build_model(get_config("tiny"), seed=3)
    set_train_mode(model, freeze_batchnorm=False)
    clips = [build_dataset(small_config)[i] for i in range(3)]
    statistics = _statistics(model.state_dict())
    weights = {k: v.clone() for k, v in model.state_dict().items() if k not in statistics}
    recalibrate_batchnorm(model, clips, torch.device("cpu"))

    # The query encoder's first BatchNorm is fed conv1 of every frame after the first of each clip: its running
    # statistics must be the mean and (biased) variance over all those pixels together, not a per-frame average.
    with torch.no_grad():
        encoder = model.query_encoder
        features = torch.cat([encoder.conv1(encoder.normalise(clip.frames[t:t + 1]))
                              for clip in clips for t in range(1, clip.frames.shape[0])])
    pixels = features.transpose(0, 1).flatten(1).double()
    bn1 = model.query_encoder.bn1
    torch.testing.assert_close(bn1.running_mean.double(), pixels.mean(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn1.running_var.double(), pixels.var(1, unbiased=False), rtol=1e-4, atol=1e-6)
    per_frame = features.var(dim=(2, 3), unbiased=False).mean(0)
    assert (bn1.running_var > per_frame * 1.01).any()  # the spread between frames is in it
    # every layer changed from the identity, the weights did not, and the layers are back as they were
    assert all(not torch.equal(layer.running_var, torch.ones_like(layer.running_var))
               for layer in batchnorm_layers(model))
    for key, value in weights.items():
        assert torch.equal(model.state_dict()[key], value), key
    assert all(layer.training and layer.momentum == 0.1 for layer in batchnorm_layers(model))


def test_train_batchnorm_until_trains_statistics_then_freezes_them_and_resumes_exactly(small_config, tmp_path):
    # constant lr and a fixed Hide-and-Seek ramp: a 3-iteration run is then the first half of the 6-iteration one
    whole = dataclasses.replace(small_config, out=tmp_path / "whole", iterations=6, batchnorm_until=3,
                                optim=OptimConfig(lr=2e-3, poly_power=None),
                                hide_and_seek=HideAndSeekConfig(grid=4, ramp_iterations=3))
    full = train(whole, progress=False)
    first_half = dataclasses.replace(whole, out=tmp_path / "split", iterations=3, batchnorm_until=None,
                                     freeze_batchnorm=False)
    train(first_half, progress=False)
    assert "BatchNorm statistics recalibrated" in (tmp_path / "whole" / "train.log").read_text()

    # before the switch the statistics move with every step (per-frame statistics, momentum 0.1) ...
    before = build_model(get_config("tiny"))
    load_state_into(before, read_checkpoint(tmp_path / "split" / "model.safetensors")[0], source="first half")
    fresh = _statistics(build_model(get_config("tiny")).state_dict())
    assert all(not torch.equal(before.state_dict()[k], fresh[k]) for k in fresh)
    # ... at it they are recalibrated on the clips of the iterations that follow, and then never move again
    dataset = build_dataset(whole)
    recalibrate_batchnorm(before, (dataset[i] for i in range(3 * whole.batch, len(dataset))), torch.device("cpu"))
    final, _ = read_checkpoint(full.checkpoint)
    for key, value in _statistics(before.state_dict()).items():
        assert torch.equal(final[key], value), key

    # a run stopped at the switch (its last checkpoint written before recalibrating) and resumed ends identically
    resumed = train(dataclasses.replace(whole, out=tmp_path / "split", resume=tmp_path / "split" / "train_state.pt"),
                    progress=False)
    assert resumed.losses == full.losses
    state, _ = read_checkpoint(resumed.checkpoint)
    for key in final:
        assert torch.equal(state[key], final[key]), key


@pytest.mark.parametrize("changes, message", [
    ({"batchnorm_until": 0}, "--train-batchnorm-until must be an iteration"),
    ({"batchnorm_until": 4}, "--train-batchnorm-until must be an iteration"),
    ({"batchnorm_until": 2, "freeze_batchnorm": False}, "exclude each other"),
    ({"model": "small-in", "batchnorm_until": 2}, "--config small-in normalises each image by its own"),
    ({"model": "small-in", "freeze_batchnorm": False}, "InstanceNorm\\): drop the option"),
])
def test_train_batchnorm_until_rejects_what_cannot_work(small_config, changes, message):
    with pytest.raises(UserInputError, match=message):
        dataclasses.replace(small_config, **changes)


def test_tying_the_trunks_copies_weights_but_keeps_each_encoders_statistics():
    from kmnrt.training.loop import tie_memory_to_query

    model = build_model(get_config("tiny"), seed=5)
    with torch.no_grad():
        for layer in batchnorm_layers(model.memory_encoder):
            layer.running_mean.fill_(0.5)
    tie_memory_to_query(model)
    assert torch.equal(model.memory_encoder.conv1.weight, model.query_encoder.conv1.weight)
    assert torch.equal(model.memory_kv.key.weight, model.query_kv.key.weight)
    assert all(torch.all(layer.running_mean == 0.5) for layer in batchnorm_layers(model.memory_encoder))
