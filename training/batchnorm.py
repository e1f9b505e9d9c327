"""BatchNorm statistics for networks trained from random weights.

STM freezes BatchNorm: it fine-tunes ImageNet statistics, and the training step feeds one frame per forward
pass, whose own statistics would be noise. From random weights, frozen at identity, BatchNorm normalises
nothing, and the network trains much slower (docs/default-model.md). Training with per-frame statistics
(``--train-batchnorm``) fixes the speed but teaches the network to rely on each frame's own normalisation, which
inference, on running statistics, does not give it. ``--train-batchnorm-until N`` takes the speed and then pays
it back: per-frame statistics for the first N iterations, then :func:`recalibrate_batchnorm` sets every layer's
running statistics to the population statistics of the training clips, and the rest of the run trains with them
frozen, as inference uses them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

from kmnrt.training.clips import Clip
from kmnrt.training.config import OptimConfig
from kmnrt.training.step import batchnorm_layers, clip_loss

RECALIBRATION_CLIPS = 200  # 400 frames through each encoder


def recalibration_clips(dataset: Sequence[Clip], iteration: int, batch: int) -> Iterator[Clip]:
    """The clips the next iterations train on (from ``iteration``; the dataset is indexed by sample, so reading
    them here neither skips nor repeats anything for the loader): deterministic, and from the training
    distribution at this point of the max_skip curriculum."""
    first = iteration * batch
    return (dataset[index] for index in range(first, min(first + RECALIBRATION_CLIPS, len(dataset))))


class _InputMoments:
    """Per-channel count, sum and sum of squares (float64) of everything a BatchNorm layer is fed."""

    def __init__(self, channels: int):
        self.count = 0
        self.sum = torch.zeros(channels, dtype=torch.float64)
        self.squares = torch.zeros(channels, dtype=torch.float64)

    def __call__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].detach().double().transpose(0, 1).flatten(1)  # [C, N*H*W]
        self.count += x.shape[1]
        self.sum += x.sum(1).cpu()
        self.squares += x.square().sum(1).cpu()

    def mean_and_variance(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.sum / self.count
        return mean, (self.squares / self.count - mean.square()).clamp_min(0.0)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, clips: Iterable[Clip], device: torch.device,
                          optim: OptimConfig = OptimConfig()) -> int:
    """Run the training forward over ``clips`` with per-frame statistics (as the network was trained so far), set
    each BatchNorm layer's running mean and variance to the mean and variance of *all* the activations it saw:
    population statistics, which include the spread between frames that per-frame normalisation removed (an
    average of per-frame variances would not). The weights are untouched and every module is left in the mode
    it was in. Returns the number of clips used."""
    layers = batchnorm_layers(model)
    moments = [_InputMoments(layer.num_features) for layer in layers]
    hooks = [layer.register_forward_pre_hook(moment) for layer, moment in zip(layers, moments)]
    modes = [(module, module.training) for module in model.modules()]
    saved = [(layer.momentum, layer.num_batches_tracked.clone()) for layer in layers]
    try:
        model.train()  # the training forward: STM's read, not the kernel, as in the steps around it
        for layer in layers:
            layer.momentum = 0.0  # batch statistics in the forward, running buffers left alone
        used = 0
        for clip in clips:
            clip_loss(model, clip, device, optim)
            used += 1
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes:
            module.training = training
        for layer, (momentum, batches) in zip(layers, saved):
            layer.momentum = momentum
            layer.num_batches_tracked.copy_(batches)
    if used == 0:
        raise ValueError("recalibrate_batchnorm needs at least one clip")
    for layer, moment in zip(layers, moments):
        mean, variance = moment.mean_and_variance()
        layer.running_mean.copy_(mean.to(layer.running_mean))
        layer.running_var.copy_(variance.to(layer.running_var))
    return used
