"""The baseline: the reference tracker run the way STM's evaluation code runs (``eval_DAVIS.py``).

fp32 eager PyTorch, the model's four stage methods, and the memory kept as a list of per-frame tensors that is
concatenated anew (``torch.stack``) for every frame, as STM's ``torch.cat([keys, prev_key], dim=3)`` does. The read
is the model's own (:func:`kmnrt.model.memory_read.kmn_read`, the explicit log-Gaussian form the reference tracker
uses). The steps are the same as :class:`kmnrt.model.reference.ReferenceTracker`'s, written out here so each stage
can be timed; like the runtime's steps, only the index mask reaches the host. Frames are fitted into the bundle's
input size exactly as the runtime does (for 854x480 DAVIS frames in a 480x864 bundle that is the reference's own
zero padding), so both sides compute the same network at the same size.

Stage clocks: on CUDA every clock read is preceded by ``torch.cuda.synchronize()``, so a stage's time is its
device time plus its launch overhead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kmnrt.framing import Framing, frame_to_tensor, one_hot_probs
from kmnrt.inputs import mask_ids
from kmnrt.model.kmn import KMN


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so the next clock read sees it finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StageClock:
    """perf_counter laps with a device synchronisation before every read."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: dict[str, float] = {}
        synchronize(device)
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        synchronize(self.device)
        now = time.perf_counter()
        self.times[stage] = self.times.get(stage, 0.0) + now - self._last
        self._last = now


@dataclass
class ReferenceState:
    framing: Framing
    object_ids: list[int]
    keys: list[Tensor] = field(default_factory=list)     # permanent memory frames, [N, Ck, h, w] each
    values: list[Tensor] = field(default_factory=list)
    temporary: tuple[Tensor, Tensor] | None = None       # the previous frame's memory
    mask: np.ndarray | None = None                       # the last step's index mask (host), as the runtime returns
    frame_index: int = 0                                 # of the last frame segmented (the first frame is 0)

    @property
    def memory_frames(self) -> int:
        return len(self.keys) + (self.temporary is not None)


class ReferenceEngine:
    """The baseline behind the same small interface as :class:`kmnrt.benchmarks.engines.RuntimeEngine`."""

    name = "reference"

    def __init__(self, model: KMN, input_size: tuple[int, int], device: torch.device | str = "cpu",
                 mem_every: int | None = None):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.input_size = tuple(input_size)
        self.mem_every = mem_every  # None: permanent frames only through fill (T pinned by the benchmark)

    @classmethod
    def from_bundle(cls, bundle: str | Path, device: torch.device | str = "cpu",
                    natural_memory: bool = False) -> ReferenceEngine:
        """The bundle's own weights (``weights.safetensors``), so the baseline runs the same network;
        ``natural_memory``: every ``mem_every``-th frame becomes memory, with no cap, as in STM's evaluation."""
        from kmnrt.export.manifest import load_manifest
        from kmnrt.model.checkpoint import load_model

        manifest = load_manifest(bundle, verify=False)
        model = load_model(manifest.model_config, Path(bundle) / manifest.weights, manifest.read_config)
        return cls(model, tuple(manifest.input_size), device, manifest.mem_every if natural_memory else None)

    def describe(self) -> str:
        return f"reference (fp32 eager PyTorch, memory concatenated per frame) on {self.device}"

    def close(self) -> None:
        pass

    @torch.inference_mode()
    def start(self, frame: np.ndarray, mask: np.ndarray) -> ReferenceState:
        framing = Framing.fitted(frame.shape[:2], self.input_size)
        object_ids = mask_ids(mask)
        image = framing.to_input(frame_to_tensor(frame, self.device))[None]
        probs = one_hot_probs(mask, object_ids, self.device)
        key, value = self.model.encode_memory(image, framing.to_input(probs))
        return ReferenceState(framing, object_ids, [key], [value])

    def fill(self, state: ReferenceState, frames: list[np.ndarray]) -> None:
        for frame in frames:
            self._step(state, frame, permanent=True)

    def step(self, state: ReferenceState, frame: np.ndarray) -> dict[str, float]:
        permanent = self.mem_every is not None and (state.frame_index + 1) % self.mem_every == 0
        return self._step(state, frame, permanent)

    def memory_frames(self, state: ReferenceState) -> int:
        return state.memory_frames

    def permanent_frames(self, state: ReferenceState) -> int:
        return len(state.keys)

    def drop_temporary(self, state: ReferenceState) -> None:
        state.temporary = None

    @torch.inference_mode()
    def _step(self, state: ReferenceState, frame: np.ndarray, permanent: bool) -> dict[str, float]:
        clock = StageClock(self.device)
        state.frame_index += 1
        framing, model = state.framing, self.model
        image = framing.to_input(frame_to_tensor(frame, self.device))[None]
        clock.lap("pre")
        query = model.encode_query(image)
        clock.lap("query_encode")
        keys = state.keys + ([state.temporary[0]] if state.temporary else [])
        values = state.values + ([state.temporary[1]] if state.temporary else [])
        memory_key, memory_value = torch.stack(keys), torch.stack(values)  # anew every frame, as STM does
        valid = torch.ones(len(keys), len(state.object_ids), device=self.device)
        read = model.read_memory(memory_key, memory_value, query.key, valid)
        clock.lap("read")
        probs = model.decode(read, query)
        clock.lap("decode")
        probs = framing.to_frame(probs)
        ids = torch.tensor([0, *state.object_ids], dtype=torch.int64, device=self.device)
        state.mask = ids[probs.argmax(dim=0)].to(torch.uint8).cpu().numpy()
        clock.lap("post")
        key, value = model.encode_memory(image, framing.to_input(probs))
        if permanent:
            state.keys.append(key)
            state.values.append(value)
            state.temporary = None
        else:
            state.temporary = (key, value)
        clock.lap("memorize")
        return clock.times
