"""The device-resident memory bank: preallocated once, written in place, read as a contiguous prefix.

Layout. One flat buffer per key and value, sized for ``max_memory`` frames x ``max_objects`` objects, viewed as
``[T_max, N, C, h, w]`` for the current object count N, so the valid frames ``view[:T]`` are a contiguous prefix
that the read graph takes as it is, and one frame slot ``view[t]`` ([N, C, h, w], contiguous) is exactly the
memory encoder's output. ``valid`` ([T_max, N] float) marks which objects each frame holds (0 for objects that
joined later). Everything is zero-initialised, so a slot never holds garbage that could turn into NaN.

Slot rule (identical to :class:`kmnrt.model.reference._Memory` with ``max_memory = T_max``). The read does not
depend on the order of the memory frames, so the slots can be reused in place:

- permanent frames (the first frame, every ``mem_every``-th frame, join frames) fill slots ``0..P-1``;
- the previous frame, when it is not permanent, sits in the temporary slot ``P``; the next frame replaces it;
- the permanent capacity is ``T_max - 1`` (one slot stays free for the previous frame). When it is full, a new
  permanent frame overwrites the slot of the oldest permanent frame that is neither the first frame nor a join
  frame; if every permanent frame is protected, the new frame is kept only as the temporary frame.

The bank's memory is constant over a video of any length: nothing is allocated or concatenated per frame. Only a
change of the object count (an object added or removed) re-packs the valid prefix once, with one device copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from kmnrt.errors import UserInputError


@dataclass
class SlotRecord:
    """Which video frame a slot holds."""

    frame_index: int
    protected: bool     # the first frame or a join frame: never overwritten while permanent


class MemoryBank:
    """Keys, values and validity of up to ``max_memory`` frames for up to ``max_objects`` objects.

    Args:
        max_memory: T_max, the slots including the previous-frame slot (at least 2).
        max_objects: N_max.
        key_shape: (Ck, h, w) of one object's key; value_shape: (Cv, h, w).
    """

    def __init__(self, max_memory: int, max_objects: int, key_shape: tuple[int, int, int],
                 value_shape: tuple[int, int, int], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        if max_memory < 2:
            raise UserInputError(f"max_memory must be at least 2 (the first frame and the previous frame), "
                                 f"got {max_memory}")
        if max_objects < 1:
            raise UserInputError(f"max_objects must be at least 1, got {max_objects}")
        self.max_memory = max_memory
        self.max_objects = max_objects
        self.key_shape = tuple(key_shape)
        self.value_shape = tuple(value_shape)
        slots = max_memory * max_objects
        try:
            self._key = torch.zeros(slots * math.prod(key_shape), dtype=dtype, device=device)
            self._value = torch.zeros(slots * math.prod(value_shape), dtype=dtype, device=device)
            self._valid = torch.zeros(slots, dtype=dtype, device=device)
        except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            size = slots * (math.prod(key_shape) + math.prod(value_shape) + 1) * (torch.finfo(dtype).bits // 8)
            raise UserInputError(f"the memory bank of {max_memory} slots x {max_objects} objects needs "
                                 f"{size / 2**30:.1f} GiB, more than {device} can give ({str(exc).splitlines()[0]}); "
                                 f"use a bundle exported with a smaller --max-memory or --max-objects") from None
        self.num_objects = 0
        self.slots: list[SlotRecord] = []    # slot t holds self.slots[t]; len(self.slots) == T
        self.num_permanent = 0               # P: slots 0..P-1 are permanent; slot P (if used) is temporary

    # --- views ------------------------------------------------------------------------------------------------

    @property
    def num_frames(self) -> int:
        """T, the valid slots (a prefix)."""
        return len(self.slots)

    @property
    def has_temporary(self) -> bool:
        return len(self.slots) > self.num_permanent

    def keys(self, num_objects: int | None = None) -> Tensor:
        """All slots as [T_max, N, Ck, h, w] (a view of the flat storage)."""
        return _view(self._key, self.max_memory, num_objects or self.num_objects, self.key_shape)

    def values(self, num_objects: int | None = None) -> Tensor:
        return _view(self._value, self.max_memory, num_objects or self.num_objects, self.value_shape)

    def validity(self, num_objects: int | None = None) -> Tensor:
        n = num_objects or self.num_objects
        return self._valid[: self.max_memory * n].view(self.max_memory, n)

    def read_inputs(self) -> dict[str, Tensor]:
        """The read graph's memory inputs: the valid prefix [T, N, ...] of keys, values and validity."""
        t = self.num_frames
        return {"memory_key": self.keys()[:t], "memory_value": self.values()[:t], "memory_valid": self.validity()[:t]}

    def storage_pointers(self) -> tuple[int, int, int]:
        """Device addresses of the three buffers (constant for the bank's lifetime)."""
        return self._key.data_ptr(), self._value.data_ptr(), self._valid.data_ptr()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self._key, self._value, self._valid))

    # --- the slot rule ----------------------------------------------------------------------------------------

    def choose_slot(self, frame_index: int, permanent: bool, protected: bool) -> tuple[int, bool]:
        """Where frame ``frame_index`` is memorised -> (slot, stays permanent). Changes nothing yet: the caller
        writes the memory encoder's output into ``keys()[slot]``/``values()[slot]``, then calls :meth:`commit`."""
        capacity = self.max_memory - 1
        if not permanent:
            return self.num_permanent, False
        if self.num_permanent < capacity:
            return self.num_permanent, True
        droppable = [t for t in range(self.num_permanent) if not self.slots[t].protected]
        if droppable:
            return min(droppable, key=lambda t: self.slots[t].frame_index), True
        return self.num_permanent, False

    def commit(self, slot: int, frame_index: int, permanent: bool, protected: bool) -> None:
        """Record that ``slot`` now holds frame ``frame_index`` for all current objects."""
        record = SlotRecord(frame_index, protected)
        if permanent and slot == self.num_permanent:   # a new permanent slot; any temporary frame is dropped
            del self.slots[slot:]
            self.slots.append(record)
            self.num_permanent += 1
        elif permanent:                                 # overwrote the oldest unprotected permanent frame
            del self.slots[self.num_permanent:]
            self.slots[slot] = record
        else:                                           # the temporary slot, replacing the previous one
            del self.slots[self.num_permanent:]
            self.slots.append(record)
        self.validity()[slot].fill_(1.0)

    # --- objects ----------------------------------------------------------------------------------------------

    def set_objects(self, keep: list[int], added: int = 0) -> None:
        """Change the objects: keep the channels ``keep`` (in this order), then append ``added`` new ones with
        validity 0 on every frame memorised so far. One device copy of the valid prefix, not per frame."""
        new_count = len(keep) + added
        if new_count > self.max_objects:
            raise UserInputError(f"{new_count} objects exceed this bundle's maximum of {self.max_objects} objects; "
                                 f"export a bundle with a larger --max-objects")
        t, old = self.num_frames, self.num_objects
        if t and old:
            index = torch.tensor(keep, dtype=torch.long, device=self._key.device)
            packed = [(storage, view.index_select(1, index)) for storage, view in (
                (self._key, self.keys(old)[:t]), (self._value, self.values(old)[:t]),
                (self._valid, self.validity(old)[:t]))]
        else:
            packed = []
        for storage in (self._key, self._value, self._valid):
            storage.zero_()
        self.num_objects = new_count
        for storage, kept in packed:
            view = _view(storage, self.max_memory, new_count, tuple(kept.shape[2:]))
            view[:t, : len(keep)].copy_(kept)

    def drop_temporary(self) -> None:
        """Forget the previous-frame slot, so the next read sees the permanent frames only (benchmarks use it to
        time T = 1); the slot's data stays until the next frame overwrites it."""
        del self.slots[self.num_permanent:]

    def clear(self) -> None:
        """Forget every frame and object (the buffers stay allocated)."""
        for storage in (self._key, self._value, self._valid):
            storage.zero_()
        self.slots.clear()
        self.num_permanent = 0
        self.num_objects = 0

    def frame_indices(self) -> list[int]:
        """The video frames in the bank, slot order (for tests and debugging)."""
        return [record.frame_index for record in self.slots]


def _view(storage: Tensor, slots: int, objects: int, item_shape: tuple[int, ...]) -> Tensor:
    return storage[: slots * objects * math.prod(item_shape)].view(slots, objects, *item_shape)
