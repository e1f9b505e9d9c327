"""The two encoders and the key/value embeddings (STM's ``Encoder_M``, ``Encoder_Q``, ``KeyValue``).

Frames enter as RGB in [0, 1], shape [B, 3, H, W] with H, W multiples of 16; each encoder normalises with the
ImageNet mean/std held as buffers (they are part of STM's state dict). Feature maps: r4 at 1/16, r3 at 1/8 and
r2 at 1/4 of the input.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kmnrt.model.config import ModelConfig
from kmnrt.model.resnet import make_stages, norm_layer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Trunk(nn.Module):
    """Shared layout of both encoders: normalisation buffers, stem BN, maxpool and res2..res4 (= layer1..3)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        backbone = config.backbone
        self.conv1 = nn.Conv2d(3, backbone.stem_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(backbone.stem_width, backbone.norm)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.res2, self.res3, self.res4 = make_stages(backbone)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def normalise(self, frame: Tensor) -> Tensor:
        return (frame - self.mean) / self.std


class MemoryEncoder(_Trunk):
    """Frame + one object's probability + the other objects' mask -> r4 per object.

    The first convolution is ``conv1(rgb) + conv1_m(own) + conv1_o(others)``. ``conv1`` runs once on the shared
    frame and broadcasts over the objects: the same sum as STM's per-object copy of the frame, N times cheaper.
    """

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        width = config.backbone.stem_width
        self.conv1_m = nn.Conv2d(1, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.conv1_o = nn.Conv2d(1, width, kernel_size=7, stride=2, padding=3, bias=False)

    def forward(self, frame: Tensor, own: Tensor, others: Tensor) -> Tensor:
        """frame [1, 3, H, W]; own, others [N, 1, H, W] -> r4 [N, C4, H/16, W/16]."""
        x = self.conv1(self.normalise(frame)) + self.conv1_m(own) + self.conv1_o(others)
        x = self.maxpool(self.relu(self.bn1(x)))
        return self.res4(self.res3(self.res2(x)))


class QueryEncoder(_Trunk):
    """Frame -> r4 (for the query key/value), r3 and r2 (decoder skips)."""

    def forward(self, frame: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """frame [B, 3, H, W] -> r4 [B, C4, H/16, W/16], r3 [B, C3, H/8, W/8], r2 [B, C2, H/4, W/4]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.normalise(frame)))))
        r2 = self.res2(x)
        r3 = self.res3(r2)
        r4 = self.res4(r3)
        return r4, r3, r2


class KeyValue(nn.Module):
    """Two 3x3 convolutions on r4: the key (matching) and the value (what is read)."""

    def __init__(self, in_channels: int, key_dim: int, value_dim: int):
        super().__init__()
        self.key = nn.Conv2d(in_channels, key_dim, kernel_size=3, padding=1)
        self.value = nn.Conv2d(in_channels, value_dim, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.key(x), self.value(x)


def object_masks(probs: Tensor) -> tuple[Tensor, Tensor]:
    """Per-object memory-encoder masks from soft probabilities with background first.

    probs [N+1, H, W] -> own [N, 1, H, W] (each object's probability) and others [N, 1, H, W]
    (the clamped sum of the other objects' probabilities, STM's ``o_mask``).
    """
    own = probs[1:].unsqueeze(1)
    others = (own.sum(dim=0, keepdim=True) - own).clamp(0.0, 1.0)
    return own, others
