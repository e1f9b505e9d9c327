"""Runtime test fixtures: real DAVIS sequences at small sizes, reference runs and conditioned random bundles."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from kmnrt.data.frames import read_image
from kmnrt.data.palette import read_label_png
from kmnrt.model.config import get_config
from kmnrt.model.kmn import KMN, build_model

@dataclass
class Clip:
    """The first frames of a real sequence, resized to a small size, with its first mask and ground truth."""

    name: str
    frames: list[np.ndarray]
    first_mask: np.ndarray   # bmx-trees: the two-object DAVIS 2017 mask (1 = rider, 2 = bike)
    truth: list[np.ndarray]  # DAVIS 2016 ground truth (0/1, all objects together)


def _load_clip(root: Path, name: str, count: int, size: tuple[int, int]) -> Clip:
    height, width = size
    folder = root / name
    frame_paths = sorted((folder / "JPEGImages").glob("*.jpg"))[:count]
    frames = [cv2.resize(read_image(p), (width, height), interpolation=cv2.INTER_AREA) for p in frame_paths]
    truth = [cv2.resize((read_label_png(folder / "Annotations" / f"{p.stem}.png") > 0).astype(np.uint8),
                        (width, height), interpolation=cv2.INTER_NEAREST) for p in frame_paths]
    davis2017 = folder / "Annotations_davis2017_first_frame" / "00000.png"
    first = (cv2.resize(read_label_png(davis2017), (width, height), interpolation=cv2.INTER_NEAREST)
             if davis2017.is_file() else truth[0])
    return Clip(name, frames, first, truth)


def conditioned_model(config: str, seed: int = 0) -> KMN:
    """Seeded random weights scaled to behave like a trained network. Random ResNet trunks give keys of std ~7
    (lite) to ~85 (paper) and decoder logits of std ~120 to ~930, so every probability saturates, argmax ties decide
    the masks and any rounding difference grows from frame to frame. The key projections and the last decoder layer
    are scaled (measured on a fixed random frame) to keys of std 2.5 and logits of std 6, about tiny's and a
    trained model's; the graphs compute the same functions of these weights as of any others."""
    model = build_model(get_config(config), seed=seed)
    if config == "tiny":  # already in range: keys ~3, logits ~9
        return model
    probe = torch.rand((1, 3, 128, 224), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        key_scale = 2.5 / float(model.encode_query(probe).key.std())
        for key_value in (model.memory_kv, model.query_kv):
            key_value.key.weight.mul_(key_scale)
            key_value.key.bias.mul_(key_scale)
        query = model.encode_query(probe)
        logits = model.decode_logits(query.value, query)
        logit_scale = 6.0 / float(logits.std())
        model.decoder.pred2.weight.mul_(logit_scale)
        model.decoder.pred2.bias.mul_(logit_scale)
        if config == "paper":  # centred: paper's random decoder otherwise erases every object by frame 1
            model.decoder.pred2.bias.sub_(logits.mean(dim=(0, 2, 3)) * logit_scale)
    return model


def _export_small_bundle(out: Path, config: str, size: tuple[int, int], max_memory: int = 8) -> Path:
    from kmnrt.export.bundle import ExportOptions, export_bundle

    options = ExportOptions(config=config, out=out, height=size[0], width=size[1], max_objects=4,
                            max_memory=max_memory, verify=False)
    return export_bundle(options, model=conditioned_model(config), progress=False)


@pytest.fixture(scope="session")
def load_clip(shared_vos):
    """load_clip(sequence folder name, frame count, (H, W)) -> Clip."""
    return lambda name, count, size: _load_clip(shared_vos, name, count, size)


@pytest.fixture(scope="session")
def export_small_bundle():
    """export_small_bundle(out, config, (H, W), max_memory=8) -> a bundle of conditioned random weights."""
    return _export_small_bundle


@pytest.fixture(scope="session")
def tiny_model() -> KMN:
    return build_model(get_config("tiny"), seed=0)


@pytest.fixture(scope="session")
def bmx_small(shared_vos) -> Clip:
    """bmx-trees at 60x106 (pads to 64x112 exactly, as the tiny bundle's input), 16 frames, two objects."""
    return _load_clip(shared_vos, "davis2016_bmx-trees", 16, (60, 106))
