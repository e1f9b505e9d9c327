"""The bank's slot rule against the reference tracker's memory list, and its in-place object changes."""

from __future__ import annotations

import random

import pytest
import torch

from kmnrt.errors import UserInputError
from kmnrt.model.reference import TrackerConfig, _Memory, _MemoryFrame
from kmnrt.runtime.memory_bank import MemoryBank

KEY, VALUE = (2, 3, 4), (5, 3, 4)


def memorise(bank: MemoryBank, index: int, permanent: bool, protected: bool, fill: float | None = None) -> int:
    slot, permanent = bank.choose_slot(index, permanent, protected)
    bank.keys()[slot].fill_(index if fill is None else fill)
    bank.values()[slot].fill_(index if fill is None else fill)
    bank.commit(slot, index, permanent, protected)
    return slot


@pytest.mark.parametrize("max_memory,mem_every,seed", [(2, 1, 0), (3, 2, 1), (5, 3, 2), (8, 5, 3), (4, 1, 4)])
def test_slot_rule_keeps_the_reference_memory_frames(max_memory, mem_every, seed):
    """Over 200 frames with random join frames, the bank holds exactly the reference's frames (order aside)."""
    rng = random.Random(seed)
    reference = _Memory(TrackerConfig(mem_every=mem_every, max_memory=max_memory))
    bank = MemoryBank(max_memory, 1, KEY, VALUE)
    bank.set_objects([], added=1)
    empty = torch.zeros(1)
    for index in range(200):
        joined = index == 0 or rng.random() < 0.05
        permanent = joined or index % mem_every == 0
        reference.add(_MemoryFrame(index, empty, empty, permanent=permanent, protected=joined))
        memorise(bank, index, permanent, joined)
        assert sorted(bank.frame_indices()) == sorted(f.index for f in reference.frames), index
        assert bank.num_frames <= max_memory
        # the slot contents are the frames the records say (a contiguous valid prefix)
        stored = bank.keys()[: bank.num_frames, 0, 0, 0, 0].tolist()
        assert stored == [float(i) for i in bank.frame_indices()]
        assert bank.validity()[: bank.num_frames].eq(1).all()


def test_storage_is_allocated_once():
    bank = MemoryBank(4, 3, KEY, VALUE)
    pointers, size = bank.storage_pointers(), bank.nbytes
    assert size == 4 * 3 * (2 * 3 * 4 + 5 * 3 * 4) * 4 + 4 * 3 * 4
    bank.set_objects([], added=2)
    for index in range(50):
        memorise(bank, index, index % 2 == 0, index == 0)
    bank.set_objects([0, 1], added=1)
    bank.set_objects([1, 2])
    bank.clear()
    assert bank.storage_pointers() == pointers and bank.nbytes == size


def test_views_are_contiguous_prefixes():
    bank = MemoryBank(5, 4, KEY, VALUE)
    bank.set_objects([], added=3)
    for index in range(3):
        memorise(bank, index, True, index == 0)
    inputs = bank.read_inputs()
    assert inputs["memory_key"].shape == (3, 3, *KEY) and inputs["memory_value"].shape == (3, 3, *VALUE)
    assert inputs["memory_valid"].shape == (3, 3)
    assert all(t.is_contiguous() for t in inputs.values())
    assert inputs["memory_key"].data_ptr() == bank.storage_pointers()[0]


def test_objects_added_later_are_invalid_in_older_frames_and_removal_repacks():
    bank = MemoryBank(6, 4, KEY, VALUE)
    bank.set_objects([], added=2)
    for index in range(3):
        slot, permanent = bank.choose_slot(index, True, index == 0)
        bank.keys()[slot].copy_(torch.arange(2.0).view(2, 1, 1, 1).expand(2, *KEY) + 10 * index)
        bank.commit(slot, index, permanent, index == 0)
    bank.set_objects([0, 1], added=1)   # object 3 joins at frame 3
    slot = memorise(bank, 3, True, True, fill=-1.0)
    valid = bank.validity()[: bank.num_frames]
    assert valid.tolist() == [[1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 1, 1]]
    assert bank.keys()[:3, 2].abs().sum() == 0  # no stale data where the object has no memory
    assert bank.keys()[:3, :2, 0, 0, 0].tolist() == [[0, 1], [10, 11], [20, 21]]
    bank.set_objects([1, 2])            # remove object 1 (channel 0)
    assert bank.num_objects == 2 and bank.num_frames == 4
    assert bank.keys()[:3, 0, 0, 0, 0].tolist() == [1, 11, 21]
    assert bank.validity()[: bank.num_frames].tolist() == [[1, 0], [1, 0], [1, 0], [1, 1]]
    assert bank.keys()[slot, 1].eq(-1).all()


def test_drop_temporary_leaves_the_permanent_prefix():
    bank = MemoryBank(4, 1, KEY, VALUE)
    bank.set_objects([], added=1)
    for index in range(3):
        memorise(bank, index, index == 0, index == 0)
    assert bank.frame_indices() == [0, 2] and bank.has_temporary
    bank.drop_temporary()
    assert bank.frame_indices() == [0] and bank.read_inputs()["memory_key"].shape[0] == 1
    memorise(bank, 3, False, False)
    assert bank.frame_indices() == [0, 3]


def test_limits_are_user_errors():
    with pytest.raises(UserInputError, match="max_memory must be at least 2"):
        MemoryBank(1, 2, KEY, VALUE)
    bank = MemoryBank(3, 2, KEY, VALUE)
    with pytest.raises(UserInputError, match="maximum of 2 objects"):
        bank.set_objects([], added=3)


def test_a_bank_the_device_cannot_hold_is_a_user_error_with_its_size():
    """A manifest edited to max_memory 10**7 ended in torch's allocator traceback; the size is what to act on.
    10**13 slots ask for petabytes, which the allocator refuses at once, without touching memory."""
    with pytest.raises(UserInputError, match=r"the memory bank of 10000000000000 slots x 2 objects needs .* GiB, "
                                             r"more than cpu can give .*; use a bundle exported with a smaller"):
        MemoryBank(10**13, 2, KEY, VALUE)
