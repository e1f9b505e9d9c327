"""Per-video session state in small typed objects: objects, feature buffers, the bank, and the frame counter.

A :class:`kmnrt.runtime.Tracker` holds the runner and the bundle's sizes; everything that belongs to one video
lives in a :class:`SessionState`, so one tracker serves many sessions (one at a time per state).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from kmnrt.errors import UserInputError
from kmnrt.export.graphs import GraphSpec
from kmnrt.framing import Framing
from kmnrt.runtime.memory_bank import MemoryBank


@dataclass
class ObjectManager:
    """Object ids (the user's label values) <-> channels (1 + position; channel 0 is the background)."""

    ids: list[int] = field(default_factory=list)
    _table: tuple[tuple, Tensor] | None = field(default=None, repr=False, compare=False)

    @property
    def count(self) -> int:
        return len(self.ids)

    def channel(self, object_id: int) -> int:
        try:
            return 1 + self.ids.index(object_id)
        except ValueError:
            raise UserInputError(f"object {object_id!r} is not tracked in this session (tracked ids: "
                                 f"{self.ids})") from None

    def id_table(self, device: torch.device) -> Tensor:
        """[N+1] uint8: channel -> label value (0 for the background). Built once per object set and device, not
        per frame: on a GPU each build is a host-to-device copy."""
        key = (tuple(self.ids), device)
        if self._table is None or self._table[0] != key:
            self._table = (key, torch.tensor([0, *self.ids], dtype=torch.uint8, device=device))
        return self._table[1]


class Workspace:
    """Preallocated graph inputs and outputs of one session (besides the bank), on the runner's device.

    Buffers whose size depends on N (``read``, ``probs``) are flat storages for ``max_objects``, viewed for the
    current N, so a view is always contiguous and no buffer is reallocated when objects come and go.
    """

    def __init__(self, specs: dict[str, GraphSpec], max_objects: int, device: torch.device):
        self.max_objects = max_objects
        fixed = {s.name: s for s in specs["query_encoder"].inputs + specs["query_encoder"].outputs}
        self.frame = _zeros(fixed["frame"].concrete({}), device)
        self.query = {name: _zeros(fixed[name].concrete({}), device)
                      for name in ("query_key", "query_value", "r3", "r2")}
        self._read_spec = specs["decoder"].inputs[0]
        self._probs_spec = specs["decoder"].outputs[0]
        self._read = _zeros((math.prod(self._read_spec.concrete({"N": max_objects})),), device)
        self._probs = _zeros((math.prod(self._probs_spec.concrete({"N": max_objects})),), device)

    @property
    def nbytes(self) -> int:
        buffers = (self.frame, *self.query.values(), self._read, self._probs)
        return sum(t.numel() * t.element_size() for t in buffers)

    def read(self, num_objects: int) -> Tensor:
        """[N, Cv, h, w]"""
        shape = self._read_spec.concrete({"N": num_objects})
        return self._read[: math.prod(shape)].view(shape)

    def probs(self, num_objects: int) -> Tensor:
        """[N+1, H, W] probabilities at the network input size, background first."""
        shape = self._probs_spec.concrete({"N": num_objects})
        return self._probs[: math.prod(shape)].view(shape)


@dataclass
class SessionState:
    """Everything one video needs between frames.

    Attributes:
        objects: tracked ids and their channels.
        bank: the memory bank (device-resident).
        workspace: the graph buffers.
        framing: where the video's frames sit in the network input (set by the first frame).
        next_index: the index the next frame gets (0 before the first frame).
        owner: the tracker that made it, the only one that may step it.
    """

    objects: ObjectManager
    bank: MemoryBank
    workspace: Workspace
    framing: Framing | None = None
    next_index: int = 0
    owner: object = field(default=None, repr=False, compare=False)

    @property
    def started(self) -> bool:
        """Whether the session tracks at least one object (it can be stepped)."""
        return self.objects.count > 0

    @property
    def object_ids(self) -> list[int]:
        """The tracked ids, in channel order (a copy)."""
        return list(self.objects.ids)

    @property
    def memory_frames(self) -> int:
        """T: the frames the next step reads from the bank."""
        return self.bank.num_frames

    @property
    def bank_bytes(self) -> int:
        """Device bytes of the bank (preallocated for the bundle's maximum objects and memory: constant)."""
        return self.bank.nbytes


@dataclass
class StepResult:
    """The segmentation of one frame.

    Attributes:
        index: the frame's index in the session (0 = the first frame).
        object_ids: the tracked ids; probability channel i+1 is object_ids[i].
        mask: [H, W] uint8 index mask at the frame's original size, with the user's label ids.
        probs: [N+1, H, W] float32 probabilities at the frame's size, background first, a torch tensor on the
            runner's device (``None`` when the step was asked not to keep them); :meth:`probs_numpy` gives a copy.
        times: seconds per stage (``pre``, ``query_encode``, ``read``, ``decode``, ``post``, ``memorize``) and
            ``total``. In a :meth:`Tracker.step_batch`, ``query_encode`` is the batch's one encoder call.
    """

    index: int
    object_ids: list[int]
    mask: np.ndarray
    probs: Tensor | None = None
    times: dict[str, float] = field(default_factory=dict)

    def probs_numpy(self) -> np.ndarray:
        """The probabilities as a host array [N+1, H, W] float32, a copy (writing to it leaves ``probs`` as is)."""
        if self.probs is None:
            raise UserInputError("this step was run with keep_probs=False: no probabilities were kept")
        host = self.probs.float().cpu()
        return host.numpy().copy() if host.data_ptr() == self.probs.data_ptr() else host.numpy()


def _zeros(shape: tuple[int, ...], device: torch.device) -> Tensor:
    return torch.zeros(shape, dtype=torch.float32, device=device)
