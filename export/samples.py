"""Realistic verification inputs: frames with edges and texture, soft object masks, features from the model.

Zeros or uniform noise hide errors (every argmax ties, every softmax is flat), so verification feeds the graphs what
they see in use: real frames when a folder or video is given, otherwise a generated scene with smooth shading,
texture and hard-edged shapes; per-object probabilities from soft blobs aggregated like the decoder's output.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from kmnrt.model.decoder import soft_aggregate

SCENE_FRAMES = 4   # distinct frames: the bank cycles through them, the last one is the query


def textured_frame(height: int, width: int, seed: int) -> Tensor:
    """[1, 3, H, W] RGB in [0, 1]: shading, two texture frequencies and a few hard-edged discs and boxes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = y / height, x / width
    image = np.zeros((3, height, width), np.float32)
    for c in range(3):
        fy, fx, phase = rng.uniform(2, 9), rng.uniform(2, 9), rng.uniform(0, 2 * np.pi)
        image[c] = 0.4 + 0.2 * (x * rng.uniform(-1, 1) + y * rng.uniform(-1, 1))
        image[c] += 0.12 * np.sin(2 * np.pi * (fy * y + fx * x) + phase)
        image[c] += 0.05 * np.sin(2 * np.pi * (37 * y + 29 * x) + phase)
    for _ in range(5):
        colour = rng.uniform(0, 1, (3, 1)).astype(np.float32)
        cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.25)
        inside = ((y - cy) ** 2 + ((x - cx) * width / height) ** 2 < r * r) if rng.random() < 0.5 else \
            ((abs(y - cy) < r) & (abs(x - cx) < r * 1.5))
        image[:, inside] = colour
    image += rng.normal(0, 0.02, image.shape).astype(np.float32)
    return torch.from_numpy(np.clip(image, 0, 1))[None]


def frames_from(path: str | os.PathLike, height: int, width: int, count: int) -> list[Tensor]:
    """``count`` frames spread over a folder or video, fitted into H x W like the runtime does."""
    from kmnrt.data import open_frames
    from kmnrt.framing import Framing, frame_to_tensor

    source = open_frames(path)
    frames = [frame for _, frame in source]
    if not frames:
        from kmnrt.errors import UserInputError

        raise UserInputError(f"verification frames {path}: no frames found")
    picks = np.linspace(0, len(frames) - 1, count).round().astype(int)
    result = []
    for index in picks:
        planes = frame_to_tensor(frames[index])
        result.append(Framing.fitted(tuple(planes.shape[1:]), (height, width)).to_input(planes)[None])
    return result


def soft_probs(height: int, width: int, objects: int, frame_index: int) -> Tensor:
    """[N+1, H, W] probabilities, background first: N soft elliptic blobs that drift with ``frame_index``."""
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    blobs = []
    for i in range(objects):
        cy = 0.3 + 0.4 * ((i * 0.37 + 0.05 * frame_index) % 1.0)
        cx = 0.2 + 0.6 * ((i * 0.61 + 0.03 * frame_index) % 1.0)
        distance = ((y - cy) / 0.18) ** 2 + ((x - cx) / 0.12) ** 2
        blobs.append(6.0 * (1.0 - distance))   # logit: a soft edge around the ellipse
    return soft_aggregate(torch.stack(blobs))


@dataclass
class Scene:
    frames: list[Tensor]                 # [1, 3, H, W] each; the last is the query frame
    probs: dict[int, list[Tensor]]       # N -> per memory frame [N+1, H, W]

    @classmethod
    def build(cls, height: int, width: int, object_counts: tuple[int, ...],
              frames_path: str | os.PathLike | None = None) -> Scene:
        if frames_path is not None:
            frames = frames_from(frames_path, height, width, SCENE_FRAMES)
        else:
            frames = [textured_frame(height, width, seed) for seed in range(SCENE_FRAMES)]
        probs = {n: [soft_probs(height, width, n, i) for i in range(SCENE_FRAMES)] for n in object_counts}
        return cls(frames, probs)

    @property
    def query_frame(self) -> Tensor:
        return self.frames[-1]

    def memory_bank(self, model, objects: int, frames: int) -> tuple[Tensor, Tensor]:
        """Keys [T, N, Ck, h, w] and values [T, N, Cv, h, w]: the memory frames' encodings, cycled up to T."""
        encoded = [model.encode_memory(f, p) for f, p in zip(self.frames[:-1], self.probs[objects][:-1])]
        keys = torch.stack([encoded[t % len(encoded)][0] for t in range(frames)])
        values = torch.stack([encoded[t % len(encoded)][1] for t in range(frames)])
        return keys, values
