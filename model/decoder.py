"""STM's decoder (convFM, ResMM, RF3, RF2, pred2, x4 bilinear) and soft aggregation across objects.

Parameter names are STM's. Skip features (r3, r2) are shared by all objects of a frame, so the skip branch of each
refinement module (convFS + ResFS) runs once at batch 1 and broadcasts: the same values STM computes on N copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PROBABILITY_CLAMP = 1e-7  # STM/RGMP soft aggregation clamps probabilities to [eps, 1 - eps] before the logit


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


def soft_aggregate(foreground: Tensor) -> Tensor:
    """Per-object foreground probabilities [N, H, W] -> probabilities [N+1, H, W], background first, summing to 1.

    Background = prod(1 - p_i); every channel is clamped and turned into a logit, then softmax across channels
    (RGMP/STM). Written with cat, not slice assignment, so the exported graph has no Scatter ops.
    """
    background = torch.prod(1.0 - foreground, dim=0, keepdim=True)
    probs = torch.cat([background, foreground], dim=0).clamp(PROBABILITY_CLAMP, 1.0 - PROBABILITY_CLAMP)
    logits = torch.log(probs / (1.0 - probs))
    return torch.softmax(logits, dim=0)
