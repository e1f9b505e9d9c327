"""The trunks' normalisation: torchvision's BatchNorm (STM's layout) or InstanceNorm (``small-in``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from kmnrt.errors import CheckpointError, UserInputError
from kmnrt.model.checkpoint import load_model, read_checkpoint, save_checkpoint
from kmnrt.model.config import ModelConfig, get_config
from kmnrt.model.kmn import build_model


def test_instance_norm_keeps_batchnorms_parameter_names_and_drops_its_running_statistics():
    batch_model, instance_model = build_model(get_config("small"), seed=0), build_model(get_config("small-in"), seed=0)
    batch, instance = batch_model.state_dict(), instance_model.state_dict()
    statistics = {k for k in batch if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert statistics and set(instance) == set(batch) - statistics
    assert all(instance[k].shape == batch[k].shape for k in instance)
    batchnorms = [m for m in batch_model.modules() if isinstance(m, nn.BatchNorm2d)]
    norms = [m for m in instance_model.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert not [m for m in instance_model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == len(batchnorms) == 18 and all(m.affine and not m.track_running_stats for m in norms)


def test_instance_norm_normalises_each_image_by_itself_in_training_and_inference():
    """Unlike BatchNorm, a frame's features depend neither on the mode nor on the other frames of its batch, and a
    change of contrast of the normalised frame (the first convolution has no bias) changes nothing."""
    model = build_model(get_config("small-in"), seed=1)
    frames = torch.rand((3, 3, 64, 96), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        alone = model.encode_query(frames[:1]).key
        model.train()
        in_batch = model.encode_query(frames).key[:1]
        model.eval()
        mean = model.query_encoder.mean
        contrast = model.encode_query(mean + 0.5 * (frames[:1] - mean)).key
    torch.testing.assert_close(in_batch, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(contrast, alone, rtol=1e-3, atol=1e-3)
    batch = build_model(get_config("small"), seed=1).train()
    with torch.no_grad():
        assert not torch.allclose(batch.encode_query(frames).key[:1], batch.eval().encode_query(frames[:1]).key)


def test_checkpoints_record_the_normalisation_and_older_ones_read_as_batchnorm(tmp_path):
    path = save_checkpoint(build_model(get_config("small-in"), seed=2), tmp_path / "in.safetensors")
    _, config = read_checkpoint(path)
    assert config == get_config("small-in") and config.backbone.norm == "instance"
    with pytest.raises(CheckpointError, match="--config small-in"):
        load_model(get_config("small"), path)
    # metadata written before the field existed has no "norm": it is BatchNorm, as those models were
    recorded = get_config("small").to_dict()
    del recorded["backbone"]["norm"]
    assert ModelConfig.from_dict(recorded) == get_config("small")
    assert dataclasses.replace(get_config("small-in"), name="small") != get_config("small")
    recorded["backbone"]["norm"] = "group"
    with pytest.raises(UserInputError, match="unknown normalisation 'group'"):
        ModelConfig.from_dict(recorded)
