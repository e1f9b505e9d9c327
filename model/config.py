"""Typed model configurations: ``paper`` (STM/KMN sizes), ``lite`` (ResNet-18), ``small``,
``small-in`` and ``medium`` (trainable from scratch on a CPU; ``small`` is the embedded default model) and ``tiny``
(tests)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from kmnrt.errors import UserInputError

# The largest network input side, per side: above any video format in use (4K is 2160x3840); a typo beyond it
# would ask for hundreds of GB.
MAX_SIDE = 8192

ReadKind = Literal["kmn", "stm"]


@dataclass(frozen=True)
class BackboneConfig:
    """A torchvision-style ResNet trunk up to layer3 (stride 16).

    ``block`` is ``"bottleneck"`` (ResNet-50 family, expansion 4) or ``"basic"`` (ResNet-18 family, expansion 1);
    ``blocks`` counts the residual blocks in layer1..layer3; ``widths`` are the planes of layer1..layer3.
    ``norm`` is ``"batch"`` (torchvision's BatchNorm, as STM) or ``"instance"`` (each image normalised by its own
    statistics: for trunks trained from random weights, where frozen BatchNorm normalises nothing).
    """

    block: Literal["basic", "bottleneck"]
    blocks: tuple[int, int, int]
    stem_width: int
    widths: tuple[int, int, int]
    norm: Literal["batch", "instance"] = "batch"

    def __post_init__(self) -> None:
        if self.norm not in ("batch", "instance"):
            raise UserInputError(f"unknown normalisation {self.norm!r}: choose 'batch' or 'instance'")

    @property
    def expansion(self) -> int:
        return 4 if self.block == "bottleneck" else 1

    @property
    def channels(self) -> tuple[int, int, int]:
        """Output channels of layer1 (r2, stride 4), layer2 (r3, stride 8) and layer3 (r4, stride 16)."""
        return tuple(w * self.expansion for w in self.widths)  # type: ignore[return-value]


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of one KMN network. The read (kmn/stm, sigma) is an inference option, see :class:`ReadConfig`."""

    name: str
    backbone: BackboneConfig
    key_dim: int
    value_dim: int
    decoder_dim: int

    @property
    def r4_channels(self) -> int:
        return self.backbone.channels[2]

    @property
    def r3_channels(self) -> int:
        return self.backbone.channels[1]

    @property
    def r2_channels(self) -> int:
        return self.backbone.channels[0]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        try:
            backbone = dict(data["backbone"])
            for key in ("blocks", "widths"):
                backbone[key] = tuple(backbone[key])
            return cls(
                name=str(data["name"]),
                backbone=BackboneConfig(**backbone),
                key_dim=int(data["key_dim"]),
                value_dim=int(data["value_dim"]),
                decoder_dim=int(data["decoder_dim"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserInputError(f"invalid model config {data!r}: {exc}") from exc


@dataclass(frozen=True)
class ReadConfig:
    """How the memory is read at inference. ``kmn``: kernelized read with a 2-D Gaussian of ``sigma`` feature
    cells around each memory position's best query match; ``stm``: plain space-time memory read."""

    kind: ReadKind = "kmn"
    sigma: float = 7.0

    def __post_init__(self) -> None:
        if self.kind not in ("kmn", "stm"):
            raise UserInputError(f"unknown memory read {self.kind!r}: choose 'kmn' or 'stm'")
        if not 0 < self.sigma < math.inf:  # nan and inf too: inf would be written to manifests as bare Infinity
            raise UserInputError(f"sigma (--sigma) must be a positive number of key-grid cells, got {self.sigma}")


CONFIGS: dict[str, ModelConfig] = {
    # STM / KMN: two ResNet-50 trunks, key 128, value 512, decoder 256 (38.9 M parameters).
    "paper": ModelConfig(
        name="paper",
        backbone=BackboneConfig("bottleneck", (3, 4, 6), 64, (64, 128, 256)),
        key_dim=128,
        value_dim=512,
        decoder_dim=256,
    ),
    # ResNet-18 trunks with halved embeddings and decoder: the default deployment model.
    "lite": ModelConfig(
        name="lite",
        backbone=BackboneConfig("basic", (2, 2, 2), 64, (64, 128, 256)),
        key_dim=64,
        value_dim=256,
        decoder_dim=128,
    ),
    # About 90 k parameters with the same structure: fast tests.
    "tiny": ModelConfig(
        name="tiny",
        backbone=BackboneConfig("basic", (1, 1, 1), 8, (8, 16, 32)),
        key_dim=8,
        value_dim=16,
        decoder_dim=16,
    ),
    # About 415 k parameters: the embedded default model's size, trainable from scratch on a CPU in an hour
    # (docs/default-model.md); twice tiny's widths, four times its key and value.
    "small": ModelConfig(
        name="small",
        backbone=BackboneConfig("basic", (1, 1, 1), 16, (16, 32, 64)),
        key_dim=32,
        value_dim=64,
        decoder_dim=32,
    ),
    # small with InstanceNorm trunks: from random weights nothing else normalises them (frozen BatchNorm is an
    # identity; trained BatchNorm statistics differ between a training batch and one tracked frame).
    "small-in": ModelConfig(
        name="small-in",
        backbone=BackboneConfig("basic", (1, 1, 1), 16, (16, 32, 64), norm="instance"),
        key_dim=32,
        value_dim=64,
        decoder_dim=32,
    ),
    # About 1.6 M parameters: twice small's widths; measured against small for the default model
    # (docs/default-model.md).
    "medium": ModelConfig(
        name="medium",
        backbone=BackboneConfig("basic", (1, 1, 1), 32, (32, 64, 128)),
        key_dim=64,
        value_dim=128,
        decoder_dim=64,
    ),
}

# The config whose weights ship with the package (model/embedded.py), so `kmnrt track` and `kmnrt export` with
# no --config track with a trained model instead of random weights.
DEFAULT_CONFIG = "small"


def get_config(name: str) -> ModelConfig:
    """The named configuration; an unknown name is a user error listing the known ones."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise UserInputError(f"unknown model config {name!r}: choose one of {', '.join(CONFIGS)}") from None
