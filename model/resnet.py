"""A torchvision-compatible ResNet trunk (stem + layer1..layer3), written here because there is no CPU torchvision.

Parameter names follow torchvision exactly (``conv1``, ``bn1``, ``layerK.I.conv1`` …, ``downsample.0/1``) so that
STM's checkpoint, which stores torchvision ResNet-50 layers under ``res2..res4``, loads without renaming inside
the blocks. The stride sits on the 3x3 conv (torchvision >= 0.3, "ResNet v1.5"); there is no dilation.
"""

from __future__ import annotations

from torch import Tensor, nn

from kmnrt.model.config import BackboneConfig


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def norm_layer(channels: int, norm: str = "batch") -> nn.Module:
    """BatchNorm (torchvision's, running statistics) or InstanceNorm with the same affine parameters ``weight`` and
    ``bias``: each image normalised by its own statistics, in training and inference alike, no running buffers."""
    return nn.InstanceNorm2d(channels, affine=True) if norm == "instance" else nn.BatchNorm2d(channels)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 norm: str = "batch"):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes, norm)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes, norm)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 norm: str = "batch"):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = norm_layer(planes, norm)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = norm_layer(planes, norm)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion, norm)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def make_layer(block: type[BasicBlock] | type[Bottleneck], inplanes: int, planes: int, blocks: int,
               stride: int, norm: str = "batch") -> nn.Sequential:
    """torchvision's ``_make_layer``: a 1x1 conv + norm shortcut on the first block when the shape changes."""
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(conv1x1(inplanes, planes * block.expansion, stride),
                                   norm_layer(planes * block.expansion, norm))
    layers = [block(inplanes, planes, stride, downsample, norm)]
    layers += [block(planes * block.expansion, planes, norm=norm) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def make_stages(config: BackboneConfig) -> tuple[nn.Sequential, nn.Sequential, nn.Sequential]:
    """layer1 (stride 1 after the stem's /4), layer2 (/8) and layer3 (/16) of a torchvision ResNet."""
    block = Bottleneck if config.block == "bottleneck" else BasicBlock
    inplanes = config.stem_width
    stages = []
    for planes, blocks, stride in zip(config.widths, config.blocks, (1, 2, 2)):
        stages.append(make_layer(block, inplanes, planes, blocks, stride, config.norm))
        inplanes = planes * block.expansion
    return stages[0], stages[1], stages[2]


def init_weights(module: nn.Module) -> None:
    """torchvision's initialisation: Kaiming-normal convs (fan_out), unit BN; zero-init nothing."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
