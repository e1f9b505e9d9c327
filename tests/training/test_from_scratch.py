"""Training from random weights: finite gradients through the soft aggregation, the tied memory/query trunks, the
calibrated initialisation and the auxiliary loss on the memory read (docs/default-model.md explains why each
exists)."""

from __future__ import annotations

import math

import pytest
import torch

from kmnrt.model.config import get_config
from kmnrt.model.decoder import soft_aggregate
from kmnrt.model.kmn import build_model
from kmnrt.training.config import OptimConfig
from kmnrt.training.datasets import StaticClips
from kmnrt.training.loop import calibrate_init, shared_parameters, tie_memory_to_query
from kmnrt.training.step import clip_loss, read_mask_loss, set_train_mode, train_step

CPU = torch.device("cpu")


def test_the_soft_aggregation_training_backpropagates_through_has_finite_gradients():
    """Saturated pixels (an object certain, or all absent) must not put NaNs into the weights."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 9, 11, generator=generator) * 8
    logits[0, 1, 0, 0], logits[:, 0, 1, 1], logits[:, 1, 2, 2] = 60.0, 90.0, -90.0  # saturated corners
    logits.requires_grad_(True)
    probs = soft_aggregate(logits[:, 1] - logits[:, 0])
    torch.testing.assert_close(probs.sum(dim=0), torch.ones(9, 11))
    torch.log(probs[1:]).sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_tied_training_keeps_the_memory_trunk_and_key_head_equal_to_the_query_side(small_config):
    model = build_model(get_config("tiny"), seed=0)
    tie_memory_to_query(model)
    pairs = shared_parameters(model)
    assert len(pairs) > 10 and all(torch.equal(q, m) for q, m in pairs)
    set_train_mode(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    clips = [StaticClips(small_config)[i] for i in range(2)]
    before = model.query_kv.key.weight.detach().clone()
    for _ in range(2):
        train_step(model, optimizer, clips, CPU, OptimConfig(grad_clip=1.0, read_loss_weight=1.0), tied=pairs)
    assert not torch.equal(model.query_kv.key.weight, before)  # they learn ...
    assert all(torch.equal(q, m) for q, m in pairs)  # ... and stay one set of weights


def test_calibrated_init_gives_attention_logits_of_unit_spread():
    model = build_model(get_config("small"), seed=0)
    pred2 = model.decoder.pred2.weight.detach().clone()
    calibrate_init(model, size=128, seed=0)
    torch.testing.assert_close(model.decoder.pred2.weight, pred2 * 0.1)
    from kmnrt.training.config import SyntheticConfig
    import numpy as np
    from kmnrt.training.synthetic import random_scene, render

    image, _ = render(random_scene(np.random.default_rng([0, 12345]), (128, 128), SyntheticConfig()), (128, 128))
    frame = torch.from_numpy(image).permute(2, 0, 1).float().div(255.0)[None]
    with torch.no_grad():
        key = model.encode_query(frame).key.flatten(1)
        logits = key.t() @ key / math.sqrt(key.shape[0])
    assert logits.std().item() == pytest.approx(1.0, rel=1e-3)


def test_read_mask_loss_rewards_attention_that_carries_the_masks():
    h, w = 4, 5
    masks = torch.zeros(1, 1, 1, h, w)
    masks[0, 0, 0, 1:3, 2:4] = 1.0
    target = masks[0]
    eye = torch.eye(h * w).view(h * w, h, w)  # position-coded keys: each cell matches only itself
    sharp = read_mask_loss(eye[None, None] * 30, masks, eye[None] * 30, target)
    flat = read_mask_loss(torch.zeros(1, 1, h * w, h, w), masks, torch.zeros(1, h * w, h, w), target)
    assert sharp.item() < 1e-3 < flat.item()


def test_read_loss_adds_a_gradient_path_to_the_keys(small_config):
    model = build_model(get_config("tiny"), seed=0)
    set_train_mode(model)
    clip = StaticClips(small_config)[1]
    plain = clip_loss(model, clip, CPU)
    with_read = clip_loss(model, clip, CPU, OptimConfig(read_loss_weight=1.0))
    assert with_read[0].item() > plain[0].item() and with_read[1].item() > plain[1].item()
    (with_read[0] + with_read[1]).backward()
    assert model.memory_kv.key.weight.grad.abs().sum() > 0 and model.query_kv.key.weight.grad.abs().sum() > 0
