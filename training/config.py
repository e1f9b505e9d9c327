"""Typed training configuration: one :class:`TrainConfig` per run, built from a preset and explicit overrides.

Presets (:func:`preset`) hold the defaults per model size. ``paper`` follows the STM/KMN recipe (384x384 crops,
batch 4, Adam 1e-5, which assumes ImageNet- or STM-initialised trunks); ``lite`` and ``tiny`` train from random
initialisation here, so they use larger learning rates and smaller crops (CPU). Iteration counts are ours: the
KMN paper's are not known (docs/kmn-model.md §11).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kmnrt.errors import UserInputError
from kmnrt.model.config import CONFIGS

Stage = Literal["pretrain", "main"]
STAGES: tuple[str, ...] = ("pretrain", "main")


@dataclass(frozen=True)
class HideAndSeekConfig:
    """KMN's Hide-and-Seek: the frame is cut into ``grid`` x ``grid`` cells, each hidden with probability p, p
    ramping linearly from 0 to ``max_probability`` over ``ramp_iterations`` (None = the whole stage)."""

    enabled: bool = True
    grid: int = 24
    max_probability: float = 0.5
    ramp_iterations: int | None = None


@dataclass(frozen=True)
class AffineRange:
    """Random affine of the static-image clip synthesis (per frame) and of the motion clips (per object)."""

    rotation_deg: float = 20.0
    scale: tuple[float, float] = (0.85, 1.15)
    shear_deg: float = 10.0
    translate: float = 0.1  # fraction of the crop size
    colour_jitter: float = 0.1  # brightness/contrast/saturation amplitude; hue gets a third of it


@dataclass(frozen=True)
class SyntheticConfig:
    """Procedural images: a textured background, ``objects`` labelled shapes and up to ``max_distractors``
    unlabelled ones, all occluding each other. ``motion_fraction`` of the clips move every shape on its own
    (layered synthetic video); the others follow STM's static recipe (one image, three random affines)."""

    min_objects: int = 1
    max_objects: int = 3
    max_distractors: int = 2
    motion_fraction: float = 0.5


@dataclass(frozen=True)
class SkipCurriculum:
    """Main training's frame gaps: each gap is uniform in [0, max_skip]; max_skip starts at ``start`` and grows by
    ``step`` every ``every_iterations`` (None = spread the growth evenly over the stage) up to ``end``."""

    start: int = 0
    end: int = 25
    step: int = 5
    every_iterations: int | None = None


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-5
    poly_power: float | None = 0.9  # lr * (1 - it/total)^power; None = constant
    weight_decay: float = 0.0
    grad_clip: float | None = None  # max global gradient norm; None = no clipping
    hard_pixel_fraction: float = 1.0  # < 1: bootstrapped cross-entropy over the hardest pixels (STCN); 1 = paper
    hard_pixel_ramp: tuple[int, int] | None = None  # (a, b): all pixels until a, then linearly to the fraction at b
    read_loss_weight: float = 0.0  # > 0: auxiliary loss on the attention reading the pooled masks (step.py)
    dice_loss_weight: float = 0.0  # > 0: soft Dice loss per object added to the cross-entropy (step.py)
    train_sigma: float | None = None  # KMN's Gaussian in the training read too, with this sigma; None = off (paper)
    warmup: int = 0  # iterations of linear lr ramp-up from lr/warmup (training/loop.py: learning_rate)


@dataclass(frozen=True)
class WeightAverageConfig:
    """Tail weight averaging (training/averaging.py): the weights after iteration ``start`` and after every
    ``every``-th iteration from there are averaged into ``model_averaged.safetensors``; ``start`` None = off."""

    start: int | None = None
    every: int = 100


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs. ``data`` is a DAVIS-style tree (main) or an image folder (pretrain;
    None = the synthetic generator); ``init`` a checkpoint to start from; ``resume`` a training-state file."""

    model: str
    stage: Stage
    out: Path
    iterations: int
    batch: int
    size: int
    short_side: int | None = None  # main: frames resized to this short side (x a random zoom) before the crop
    clip_frames: int = 3  # frames per clip (STM: 3): the first is given, the others segmented in turn
    memory_forget: float = 0.0  # per object and memorised prediction: chance a block of it is forgotten (clips.py)
    seed: int = 0
    data: Path | None = None
    init: Path | None = None
    resume: Path | None = None
    device: str = "cpu"
    max_objects: int = 3
    freeze_batchnorm: bool = True
    batchnorm_until: int | None = None  # per-frame BatchNorm statistics until this iteration, then recalibrated
    tied_init: bool = False  # from random init: start the memory trunk and key head as copies of the query side's
    calibrated_init: bool = False  # from random init: key heads scaled to attention logits of std 1, last conv / 10
    tied_training: bool = False  # and keep them equal while training (gradients summed; implies tied_init)
    checkpoint_every: int = 500
    log_every: int = 50  # iterations between lines of train.log
    tensorboard: bool = False  # also write the logged values as TensorBoard events, to OUT/tensorboard
    workers: int = 0
    threads: int | None = None  # torch intra-op threads; None = PyTorch's default
    channels_last: bool = False  # convolutions in NHWC memory order: faster steps on a CPU, rounded differently
    amp: bool = True  # fp16 autocast on CUDA (ignored on the CPU)
    optim: OptimConfig = field(default_factory=OptimConfig)
    hide_and_seek: HideAndSeekConfig = field(default_factory=HideAndSeekConfig)
    augment: AffineRange = field(default_factory=AffineRange)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    skip: SkipCurriculum = field(default_factory=SkipCurriculum)
    average: WeightAverageConfig = field(default_factory=WeightAverageConfig)

    def __post_init__(self) -> None:
        if self.model not in CONFIGS:
            raise UserInputError(f"unknown model config {self.model!r}: choose one of {', '.join(CONFIGS)}")
        if self.stage not in STAGES:
            raise UserInputError(f"unknown stage {self.stage!r}: choose 'pretrain' or 'main'")
        for name in ("iterations", "batch", "checkpoint_every", "log_every", "max_objects"):
            if getattr(self, name) < 1:
                raise UserInputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.size < 32 or self.size % 16:
            raise UserInputError(f"--size must be a multiple of 16 and at least 32 (the network's stride is 16), "
                                 f"got {self.size}")
        if self.seed < 0:
            raise UserInputError(f"--seed must be 0 or more, got {self.seed}")
        if self.clip_frames < 2:
            raise UserInputError(f"--clip-frames must be at least 2 (a given frame and one to segment), "
                                 f"got {self.clip_frames}")
        if not 0 <= self.memory_forget <= 1:
            raise UserInputError(f"--memory-forget must be a probability in [0, 1], got {self.memory_forget}")
        if self.short_side is not None and self.short_side < self.size:
            raise UserInputError(f"--short-side must be at least the crop size {self.size}, got {self.short_side}")
        if not 0 < self.optim.lr < math.inf:
            raise UserInputError(f"--lr must be positive, got {self.optim.lr}")
        if self.optim.grad_clip is not None and not 0 < self.optim.grad_clip < math.inf:
            raise UserInputError(f"--grad-clip must be a positive gradient norm (0 would freeze the weights, a "
                                 f"negative one climb the loss), got {self.optim.grad_clip}")
        if self.optim.warmup < 0:
            raise UserInputError(f"--warmup must be 0 or more iterations, got {self.optim.warmup}")
        if not 0 <= self.optim.read_loss_weight < math.inf:
            raise UserInputError(f"--read-loss must be 0 or more, got {self.optim.read_loss_weight}")
        if not 0 <= self.optim.dice_loss_weight < math.inf:
            raise UserInputError(f"--dice-loss must be 0 or more, got {self.optim.dice_loss_weight}")
        if self.optim.train_sigma is not None and not self.optim.train_sigma > 0:
            raise UserInputError(f"--train-sigma must be positive (key-grid cells), got {self.optim.train_sigma}")
        if not 0 < self.optim.hard_pixel_fraction <= 1:
            raise UserInputError(f"--hard-pixels must be in (0, 1], got {self.optim.hard_pixel_fraction}")
        ramp = self.optim.hard_pixel_ramp
        if ramp is not None and not (len(ramp) == 2 and 0 <= ramp[0] < ramp[1] <= self.iterations):
            raise UserInputError(f"--hard-pixels-ramp must be two iterations START,END with 0 <= START < END <= "
                                 f"{self.iterations}, got {','.join(map(str, ramp))}")
        if self.average.start is not None and not 1 <= self.average.start <= self.iterations:
            raise UserInputError(f"--average-from must be an iteration of the stage, 1 to {self.iterations}, "
                                 f"got {self.average.start}")
        if self.average.every < 1:
            raise UserInputError(f"--average-every must be at least 1, got {self.average.every}")
        batchnorm_options = not self.freeze_batchnorm or self.batchnorm_until is not None
        if batchnorm_options and CONFIGS[self.model].backbone.norm != "batch":
            raise UserInputError(f"--train-batchnorm and --train-batchnorm-until need BatchNorm, and --config "
                                 f"{self.model} normalises each image by its own statistics (InstanceNorm): "
                                 f"drop the option")
        if self.batchnorm_until is not None:
            if not 1 <= self.batchnorm_until < self.iterations:
                raise UserInputError(f"--train-batchnorm-until must be an iteration of the stage, 1 to "
                                     f"{self.iterations - 1}, got {self.batchnorm_until}")
            if not self.freeze_batchnorm:
                raise UserInputError("--train-batchnorm-until and --train-batchnorm exclude each other: the first "
                                     "freezes the statistics at that iteration, the second never does")
        if self.workers < 0:
            raise UserInputError(f"--workers must be 0 or more, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise UserInputError(f"--threads must be at least 1, got {self.threads}")
        if self.channels_last and self.device == "cpu" and self.threads != 1:
            raise UserInputError("--channels-last on the CPU needs --threads 1: with more threads, oneDNN's "
                                 "weight gradient of a 1x1 convolution in channels-last order crashed the process "
                                 "(PyTorch 2.13; docs/training.md)")
        if self.stage == "pretrain" and self.hide_and_seek.enabled and self.hide_and_seek.grid > self.size:
            raise UserInputError(f"--hide-grid {self.hide_and_seek.grid} cuts a {self.size}-pixel crop into cells "
                                 f"under one pixel; use at most {self.size} (one cell per key cell: "
                                 f"{self.size // 16})")
        if self.hide_and_seek.grid < 1 or not 0 <= self.hide_and_seek.max_probability <= 1:
            raise UserInputError(f"Hide-and-Seek needs a grid (--hide-grid) of at least 1 cell and a probability "
                                 f"in [0, 1], got grid {self.hide_and_seek.grid}, p "
                                 f"{self.hide_and_seek.max_probability}")

    def to_dict(self) -> dict:
        """JSON-ready: paths as strings."""
        return json_ready(dataclasses.asdict(self))


def json_ready(value: object) -> object:
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return str(value) if isinstance(value, Path) else value


# Per model size: crop size, batch, learning rate, iterations of each stage. The paper's crop/batch/lr; our counts.
_FROM_SCRATCH_ON_A_CPU = {"size": 128, "batch": 4, "lr": 1e-3, "pretrain": 1_000, "main": 8_000}
_PRESETS: dict[str, dict[str, int | float]] = {
    "paper": {"size": 384, "batch": 4, "lr": 1e-5, "pretrain": 100_000, "main": 100_000},
    "lite": {"size": 384, "batch": 4, "lr": 1e-4, "pretrain": 100_000, "main": 100_000},
    "small": _FROM_SCRATCH_ON_A_CPU,
    "small-in": _FROM_SCRATCH_ON_A_CPU,
    "medium": _FROM_SCRATCH_ON_A_CPU,
    "tiny": {"size": 192, "batch": 4, "lr": 1e-3, "pretrain": 4_000, "main": 4_000},
}


def preset(model: str, stage: Stage, out: Path, **overrides: object) -> TrainConfig:
    """The default :class:`TrainConfig` of a model size and stage; ``overrides`` replace fields (``lr`` goes to
    ``optim.lr``; ``None`` values are ignored, so CLI options left unset keep the preset)."""
    if model not in _PRESETS:
        raise UserInputError(f"unknown model config {model!r}: choose one of {', '.join(_PRESETS)}")
    if stage not in STAGES:
        raise UserInputError(f"unknown stage {stage!r}: choose 'pretrain' or 'main'")
    values = _PRESETS[model]
    given = {key: value for key, value in overrides.items() if value is not None}
    optim = OptimConfig(lr=float(given.pop("lr", values["lr"])))
    fields = {"size": int(values["size"]), "batch": int(values["batch"]), "iterations": int(values[stage])}
    fields.update(given)
    return TrainConfig(model=model, stage=stage, out=Path(out), optim=optim, **fields)  # type: ignore[arg-type]
