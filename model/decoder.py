"""STM's decoder (convFM, ResMM, RF3, RF2, pred2, x4 bilinear) and soft aggregation across objects.

Parameter names are STM's. Skip features (r3, r2) are shared by all objects of a frame, so the skip branch of each
refinement module (convFS + ResFS) runs once at batch 1 and broadcasts: the same values STM computes on N copies.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PROBABILITY_CLAMP = 1e-7  # STM/RGMP soft aggregation clamps probabilities to [eps, 1 - eps] before the logit
LOGIT_CLAMP = math.log((1.0 - PROBABILITY_CLAMP) / PROBABILITY_CLAMP)  # the same clamp in logit space
LOG_BACKGROUND_CAP = math.log1p(-PROBABILITY_CLAMP)


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv2(relu(conv1(relu(x)))), 3x3 convs with bias."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class Refine(nn.Module):
    """Fuse a skip feature with the upsampled coarser decoder state: ResMM(ResFS(convFS(skip)) + up2(previous))."""

    def __init__(self, skip_channels: int, channels: int):
        super().__init__()
        self.convFS = nn.Conv2d(skip_channels, channels, kernel_size=3, padding=1)
        self.ResFS = ResBlock(channels)
        self.ResMM = ResBlock(channels)

    def forward(self, skip: Tensor, previous: Tensor) -> Tensor:
        """skip [1, Cs, 2h, 2w]; previous [N, C, h, w] -> [N, C, 2h, 2w]."""
        s = self.ResFS(self.convFS(skip))
        up = F.interpolate(previous, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.ResMM(s + up)


class Decoder(nn.Module):
    def __init__(self, in_channels: int, r3_channels: int, r2_channels: int, channels: int):
        super().__init__()
        self.convFM = nn.Conv2d(in_channels, channels, kernel_size=3, padding=1)
        self.ResMM = ResBlock(channels)
        self.RF3 = Refine(r3_channels, channels)
        self.RF2 = Refine(r2_channels, channels)
        self.pred2 = nn.Conv2d(channels, 2, kernel_size=3, padding=1)

    def forward(self, memory_out: Tensor, r3: Tensor, r2: Tensor) -> Tensor:
        """memory_out [N, 2Cv, h, w] (read ++ query value), r3 [1, C3, 2h, 2w], r2 [1, C2, 4h, 4w]
        -> two-class logits per object [N, 2, 16h, 16w]."""
        m4 = self.ResMM(self.convFM(memory_out))
        m3 = self.RF3(r3, m4)
        m2 = self.RF2(r2, m3)
        logits = self.pred2(F.relu(m2))
        return F.interpolate(logits, scale_factor=4.0, mode="bilinear", align_corners=False)


def soft_aggregate(object_logits: Tensor) -> Tensor:
    """Per-object foreground logits [N, H, W] -> probabilities [N+1, H, W], background first, summing to 1.

    STM/RGMP's soft aggregation: with p_i = sigmoid(l_i), background = prod(1 - p_i); every channel is clamped to
    [eps, 1 - eps], turned into a logit and softmaxed across channels. Computed in logit space, which is the same
    function: in probability space fp32 rounds p_i to 1.0 from l_i ~ 16.6 on, right at the clamp, so confident
    objects lose their ranking (the fp32 model was 0.13 away from its own fp64 result; here it is ~1e-6).
    Written with cat and elementwise ops only (no Scatter, Softplus or Expm1 in the exported graph).
    """
    log_background = -_softplus(object_logits).sum(dim=0, keepdim=True)       # log prod(1 - p_i)
    # logit(b) = log b - log(1 - b). Capping b at 1 - eps first, where the final clamp would cut it anyway, keeps
    # log(1 - b) finite: an infinite value there would make training's gradients NaN even behind the clamp.
    log_background = log_background.clamp(max=LOG_BACKGROUND_CAP)
    background_logit = log_background - torch.log(1.0 - torch.exp(log_background))
    logits = torch.cat([background_logit, object_logits], dim=0).clamp(-LOGIT_CLAMP, LOGIT_CLAMP)
    return torch.softmax(logits, dim=0)


def _softplus(x: Tensor) -> Tensor:
    """log(1 + e^x) without overflow for large x (ONNX's Softplus has no such guarantee)."""
    return F.relu(x) + torch.log(1.0 + torch.exp(-x.abs()))
