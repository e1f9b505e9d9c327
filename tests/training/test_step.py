from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from kmnrt.model.config import get_config
from kmnrt.model.kmn import build_model
from kmnrt.model.memory_read import kmn_read, stm_read
from kmnrt.training.clips import Clip
from kmnrt.training.config import OptimConfig
from kmnrt.training.datasets import StaticClips
from kmnrt.training.step import clip_loss, forget_in_memory, set_train_mode, train_step

CPU = torch.device("cpu")


@pytest.fixture
def model():
    return build_model(get_config("tiny"), seed=0)


def _memory(seed: int = 0, t: int = 2, n: int = 2, h: int = 6, w: int = 7):
    generator = torch.Generator().manual_seed(seed)
    config = get_config("tiny")
    key = torch.randn(t, n, config.key_dim, h, w, generator=generator) * 3
    value = torch.randn(t, n, config.value_dim, h, w, generator=generator)
    query = torch.randn(1, config.key_dim, h, w, generator=generator) * 3
    return key, value, query


def test_training_mode_reads_with_stm_and_eval_mode_with_the_kernel(model):
    key, value, query = _memory()
    set_train_mode(model)
    assert model.read.training
    assert torch.equal(model.read_memory(key, value, query), stm_read(key, value, query))
    model.eval()
    kernel = model.read_memory(key, value, query)
    torch.testing.assert_close(kernel, kmn_read(key, value, query, model.read_config.sigma))
    assert (kernel - stm_read(key, value, query)).abs().max() > 1e-3  # the kernel changes the read here


def test_batchnorm_statistics_stay_frozen(small_config, model):
    clip = StaticClips(small_config)[0]
    bn = model.query_encoder.bn1
    before = bn.running_mean.clone()
    set_train_mode(model, freeze_batchnorm=True)
    assert not bn.training and model.decoder.training
    clip_loss(model, clip, CPU)
    assert torch.equal(bn.running_mean, before)
    set_train_mode(model, freeze_batchnorm=False)
    clip_loss(model, clip, CPU)
    assert not torch.equal(bn.running_mean, before)


def test_loss_reaches_every_stage_of_the_network(small_config, model):
    set_train_mode(model)
    loss_b, loss_c = clip_loss(model, StaticClips(small_config)[1], CPU)  # one loss per frame after the first
    assert loss_b.item() > 0 and loss_c.item() > 0
    (loss_b + loss_c).backward()
    for name in ("memory_encoder.conv1_m.weight", "memory_encoder.conv1_o.weight", "memory_kv.key.weight",
                 "query_kv.key.weight", "query_encoder.conv1.weight", "decoder.pred2.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_loss_is_the_nll_of_a_perfect_and_a_wrong_prediction():
    from kmnrt.training.step import aggregated_nll

    labels = torch.tensor([[0, 1], [2, 0]])
    perfect = torch.nn.functional.one_hot(labels, 3).permute(2, 0, 1).float()
    assert aggregated_nll(perfect, labels).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.full((3, 2, 2), 1 / 3)
    assert aggregated_nll(uniform, labels).item() == pytest.approx(np.log(3), rel=1e-5)


def test_bootstrapped_loss_averages_the_hardest_pixels():
    from kmnrt.training.step import aggregated_nll

    labels = torch.tensor([[1, 0, 0, 0]])
    probs = torch.tensor([[[0.5, 0.9, 0.99, 0.999]], [[0.5, 0.1, 0.01, 0.001]]])
    per_pixel = -torch.log(torch.tensor([0.5, 0.9, 0.99, 0.999]))
    assert aggregated_nll(probs, labels).item() == pytest.approx(per_pixel.mean().item(), rel=1e-5)
    assert aggregated_nll(probs, labels, hard_fraction=0.5).item() == pytest.approx(
        per_pixel[:2].mean().item(), rel=1e-5)


def test_dice_loss_weighs_every_object_alike_and_charges_the_part_lost():
    from kmnrt.training.step import dice_loss

    labels = torch.zeros(8, 8, dtype=torch.long)
    labels[1:7, 1:7], labels[7, 7] = 1, 2  # a 36-pixel object and a 1-pixel one
    perfect = torch.nn.functional.one_hot(labels, 3).permute(2, 0, 1).float()
    assert dice_loss(perfect, labels).item() == pytest.approx(0.0, abs=1e-6)
    missed_small = perfect.clone()
    missed_small[[0, 2], 7, 7] = torch.tensor([1.0, 0.0])  # one pixel of 64 wrong: half of the Dice loss
    assert dice_loss(missed_small, labels).item() == pytest.approx((1 - 1 / 2) / 2)
    half_big = perfect.clone()
    half_big[[0, 1], 1:7, 1:4] = torch.tensor([1.0, 0.0])[:, None, None]  # half the large object dropped
    assert dice_loss(half_big, labels).item() == pytest.approx((1 - (2 * 18 + 1) / (18 + 36 + 1)) / 2)


def test_dice_weight_adds_the_dice_loss_of_each_frame(small_config, model):
    """From a barely trained network the masks are far from the objects: each frame's loss grows by up to half
    (the weight times a Dice loss of at most 1)."""
    set_train_mode(model)
    clip = StaticClips(small_config)[1]
    plain = clip_loss(model, clip, CPU)
    with_dice = clip_loss(model, clip, CPU, OptimConfig(dice_loss_weight=0.5))
    assert len(plain) == len(with_dice) == 2
    for plain_loss, dice_added in zip(plain, with_dice):
        assert 0 < (dice_added - plain_loss).item() <= 0.5


def test_train_sigma_reads_with_the_kernel_in_training(small_config, model):
    """--train-sigma: the training read is KMN's (a wide kernel barely changes the loss, a tight one does) and the
    keys still get gradient through the softmax the Gaussian shapes."""
    set_train_mode(model)
    clip = StaticClips(small_config)[1]
    plain = torch.stack(clip_loss(model, clip, CPU))
    wide = torch.stack(clip_loss(model, clip, CPU, OptimConfig(train_sigma=1e4)))
    tight = clip_loss(model, clip, CPU, OptimConfig(train_sigma=0.5))
    torch.testing.assert_close(wide, plain, rtol=1e-4, atol=1e-6)
    assert (torch.stack(tight) - plain).abs().max() > 1e-4
    sum(tight).backward()
    for name in ("memory_kv.key.weight", "query_kv.key.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_a_few_steps_on_a_fixed_batch_lower_the_loss(small_config, model):
    clips = [StaticClips(small_config)[i] for i in range(2)]
    set_train_mode(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = [train_step(model, optimizer, clips, CPU) for _ in range(25)]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3]), losses


@pytest.mark.parametrize("read_loss_weight", [0.0, 1.0])
def test_a_longer_clip_continues_the_three_frame_step(small_config, model, read_loss_weight):
    """Frame t depends only on frames 0..t: the first two losses of a 5-frame clip are those of its first three
    frames, and every later frame adds its own loss."""
    set_train_mode(model)
    long_clip = StaticClips(dataclasses.replace(small_config, clip_frames=5))[3]
    short_clip = Clip(long_clip.frames[:3], long_clip.labels[:3], long_clip.num_objects)
    long_losses = clip_loss(model, long_clip, CPU, OptimConfig(read_loss_weight=read_loss_weight))
    short_losses = clip_loss(model, short_clip, CPU, OptimConfig(read_loss_weight=read_loss_weight))
    assert len(long_losses) == 4 and len(short_losses) == 2
    for long, short in zip(long_losses, short_losses):
        assert torch.equal(long, short)
    assert all(loss.item() > 0 for loss in long_losses)


def test_forgetting_moves_object_probability_to_background_in_memory_only(small_config, model):
    """The loss of the frame whose prediction is memorised is unchanged; the next frame reads a memory where the
    forgotten pixels are background, so its loss changes; nothing forgotten changes nothing."""
    probs = torch.softmax(torch.randn(3, 5, 6, generator=torch.Generator().manual_seed(0)), 0)
    forget = torch.zeros(5, 6, dtype=torch.bool)
    forget[1:4, 2:5] = True
    moved = forget_in_memory(probs, forget)
    assert torch.allclose(moved.sum(0), torch.ones(5, 6))
    assert (moved[1:, forget] == 0).all() and torch.equal(moved[:, ~forget], probs[:, ~forget])

    set_train_mode(model)
    clip = StaticClips(small_config)[3]
    objects = clip.labels > 0
    nothing = Clip(clip.frames, clip.labels, clip.num_objects, torch.zeros_like(objects))
    everything = Clip(clip.frames, clip.labels, clip.num_objects, objects & (torch.arange(3) == 1)[:, None, None])
    plain, unchanged, forgetting = (clip_loss(model, c, CPU) for c in (clip, nothing, everything))
    assert torch.equal(plain[0], unchanged[0]) and torch.equal(plain[1], unchanged[1])
    assert torch.equal(plain[0], forgetting[0]) and not torch.allclose(plain[1], forgetting[1])
