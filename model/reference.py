"""The reference tracker: the STM/KMN evaluation protocol in plain PyTorch, the oracle for every backend.

Protocol (STM ``eval_DAVIS.py``, which KMN follows): the first frame's mask is given; every frame is zero-padded to
multiples of 16 and the output cropped back (optionally resized first to a chosen short side, as STM does for
YouTube-VOS, and the probabilities resized back); frame t is segmented with a memory of the first frame, every
``mem_every``-th frame and the previous frame; the soft probabilities (not a hard mask) are fed to the memory
encoder; objects are combined by soft aggregation; the labels are the argmax at the original size.

Extensions, all of which the runtime reproduces:
- arbitrary label ids are kept (ids {3, 7} come out as 3 and 7);
- an object that first appears in a later frame's mask joins at that frame: its mask overrides the prediction
  there, the frame becomes permanent memory, and the object reads only memory from that frame on;
- ``max_memory`` bounds the memory: one slot is kept for the previous frame, and when the permanent slots are
  full the oldest permanent frame that is neither the first frame nor an object's join frame is dropped.

Memory is kept as a list here on purpose: simple enough to read as the specification.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from kmnrt.errors import KmnrtWarning, UserInputError
from kmnrt.framing import Framing, frame_to_tensor, one_hot_probs
from kmnrt.inputs import check_mask, frame_as_rgb, mask_ids, whole_number
from kmnrt.model.kmn import KMN


@dataclass(frozen=True)
class TrackerConfig:
    mem_every: int = 5             # every mem_every-th frame joins the permanent memory (STM's Mem_every)
    max_memory: int | None = None  # memory slots including the previous-frame slot; None = unbounded (STM)
    short_side: int | None = None  # track at this short side (frames resized, masks resized back); None = as is

    def __post_init__(self) -> None:
        whole_number(self.mem_every, "mem_every (--mem-every)", 1)
        if self.max_memory is not None:
            whole_number(self.max_memory, "max_memory (memory slots: the first frame and the previous frame)", 2)
        if self.short_side is not None:
            whole_number(self.short_side, "short_side (pixels)", 16)


@dataclass
class FrameResult:
    index: int
    object_ids: list[int]
    probs: np.ndarray   # [N+1, H, W] float32 at the frame's size, background first, channel i+1 = object_ids[i]
    labels: np.ndarray  # [H, W] uint8 index mask with the original ids


@dataclass
class _MemoryFrame:
    index: int
    key: Tensor         # [N_t, Ck, h, w]: the objects known when this frame was memorised
    value: Tensor       # [N_t, Cv, h, w]
    permanent: bool
    protected: bool     # the first frame or a join frame: never dropped


@dataclass
class _Memory:
    config: TrackerConfig
    frames: list[_MemoryFrame] = field(default_factory=list)

    def add(self, entry: _MemoryFrame) -> None:
        self.frames = [f for f in self.frames if f.permanent]  # the previous temporary frame is no longer needed
        if entry.permanent and self.config.max_memory is not None:
            capacity = self.config.max_memory - 1  # one slot stays free for the previous frame
            if len(self.frames) >= capacity:
                droppable = [f for f in self.frames if not f.protected]
                if droppable:
                    self.frames.remove(min(droppable, key=lambda f: f.index))
                else:
                    entry.permanent = False
        self.frames.append(entry)

    def stacked(self, num_objects: int) -> tuple[Tensor, Tensor, Tensor]:
        """-> key [T, N, Ck, h, w], value [T, N, Cv, h, w] (zeros for objects that joined later) and valid [T, N]."""
        keys, values, valid = [], [], []
        for frame in self.frames:
            missing = num_objects - frame.key.shape[0]
            keys.append(torch.cat([frame.key, frame.key.new_zeros((missing, *frame.key.shape[1:]))]))
            values.append(torch.cat([frame.value, frame.value.new_zeros((missing, *frame.value.shape[1:]))]))
            row = torch.zeros(num_objects, device=frame.key.device)
            row[: frame.key.shape[0]] = 1.0
            valid.append(row)
        return torch.stack(keys), torch.stack(values), torch.stack(valid)


def _check_later_masks(later_masks: Mapping[int, np.ndarray] | None) -> dict[int, np.ndarray]:
    name = "each key of later_masks (the index of the frame the mask belongs to; frame 0's is first_mask)"
    return {whole_number(index, name, 1): mask for index, mask in (later_masks or {}).items()}


class ReferenceTracker:
    """Tracks the objects of a first-frame mask through a sequence with a :class:`KMN` model."""

    def __init__(self, model: KMN, config: TrackerConfig = TrackerConfig(), device: str | torch.device = "cpu"):
        self.model = model.eval().to(device)
        self.config = config
        self.device = torch.device(device)

    @torch.inference_mode()
    def track(self, frames: Iterable[np.ndarray], first_mask: np.ndarray,
              later_masks: Mapping[int, np.ndarray] | None = None) -> Iterator[FrameResult]:
        """Yield one :class:`FrameResult` per frame (frame 0 included).

        frames: HWC uint8 RGB arrays of one size (or [H, W] gray, RGBA; numpy or torch), checked as the runtime
        checks them; first_mask: [H, W] integer ids 0..255 of frame 0 (0 = background); later_masks: {frame
        index: index mask} for objects that first appear later; ids already tracked in them are ignored (their
        prediction is kept). An index past the video's end is warned of when the frames run out.
        """
        later_masks = _check_later_masks(later_masks)
        memory = _Memory(self.config)
        object_ids: list[int] = []
        framing: Framing | None = None
        index = -1
        for index, frame in enumerate(frames):
            frame = frame_as_rgb(frame, f"frame {index}")
            if framing is None:
                framing = Framing.scaled(tuple(frame.shape[:2]), self.config.short_side)
                first_mask = check_mask(first_mask, framing.frame_size, "first mask")
                object_ids = mask_ids(first_mask)
                if not object_ids:
                    raise UserInputError("first mask has no object: every pixel is 0 (background)")
            elif tuple(frame.shape[:2]) != framing.frame_size:
                raise UserInputError(f"frame {index} is {frame.shape[1]}x{frame.shape[0]}, but the sequence is "
                                     f"{framing.frame_size[1]}x{framing.frame_size[0]}")
            image = framing.to_input(frame_to_tensor(frame, self.device))[None]
            if index == 0:
                probs = one_hot_probs(first_mask, object_ids, self.device)
                memorised = framing.to_input(probs)
                joined = True
            else:
                key, value, valid = memory.stacked(len(object_ids))
                # the network's own probabilities are memorised (padding zeroed), not their resized-back copy
                memorised = framing.clear_padding(self.model.segment(image, key, value, valid))
                probs = framing.to_frame(memorised)
                joined = False
                if index in later_masks:
                    mask = check_mask(later_masks[index], framing.frame_size, f"mask of frame {index}")
                    new_ids = [i for i in mask_ids(mask) if i not in object_ids]
                    if new_ids:
                        probs = _join_objects(probs, mask, new_ids, self.device)
                        memorised = framing.to_input(probs)
                        object_ids += new_ids
                        joined = True
            key, value = self.model.encode_memory(image, memorised)
            permanent = joined or index % self.config.mem_every == 0
            memory.add(_MemoryFrame(index, key, value, permanent=permanent, protected=joined))
            yield _result(index, object_ids, probs)
        beyond = sorted(i for i in later_masks if i > index)
        if beyond:
            warnings.warn(f"later_masks for frame(s) {beyond}: the video ended at frame {index}, so they were not "
                          f"used", KmnrtWarning, stacklevel=2)


def _join_objects(probs: Tensor, mask: np.ndarray, new_ids: list[int], device: torch.device) -> Tensor:
    """Append channels for new objects; their given pixels override every other channel."""
    new = one_hot_probs(mask, new_ids, device)[1:]  # [M, H, W]
    covered = new.sum(dim=0, keepdim=True).clamp(max=1.0)
    return torch.cat([probs * (1.0 - covered), new])


def _result(index: int, object_ids: list[int], probs: Tensor) -> FrameResult:
    ids = torch.tensor([0, *object_ids], dtype=torch.int64, device=probs.device)
    labels = ids[probs.argmax(dim=0)]
    return FrameResult(index, list(object_ids), probs.float().cpu().numpy(), labels.to(torch.uint8).cpu().numpy())
