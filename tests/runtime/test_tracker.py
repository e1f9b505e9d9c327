"""The session API on the torch backend (no bundle needed) against the reference tracker, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kmnrt.errors import UserInputError
from kmnrt.model.reference import ReferenceTracker, TrackerConfig
from kmnrt.runtime import Tracker
from kmnrt.runtime.memory_bank import MemoryBank

INPUT = (64, 112)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def make_tracker(model, max_memory=4, mem_every=3, max_objects=4) -> Tracker:
    return Tracker.from_model(model, INPUT, max_objects=max_objects, max_memory=max_memory, mem_every=mem_every)


def fold_reads(model):
    """The reference model with the read in its export form (the same formula, see MemoryRead): the runtime then
    agrees with it bit for bit until an eviction puts the bank's frames in another order than the reference's
    list, and to fp32 summation order after that."""
    model.read.folded = True
    return model


@pytest.fixture()
def folded_model(tiny_model):
    yield fold_reads(tiny_model)
    tiny_model.read.folded = False


def test_matches_the_reference_with_late_object_and_eviction(folded_model, bmx_small):
    """Two objects from frame 0, a third joining at frame 4 (synthesised mask, new id 9); max_memory 4 forces
    evictions. Every probability agrees with the reference (bit for bit before the first eviction)."""
    frames, first = bmx_small.frames, bmx_small.first_mask
    later = np.zeros_like(first)
    later[5:20, 5:30] = 9
    reference = list(ReferenceTracker(folded_model, TrackerConfig(mem_every=3, max_memory=4))
                     .track(frames, first, {4: later}))
    tracker = make_tracker(folded_model)
    state = tracker.start(frames[0], first)
    for index in range(1, len(frames)):
        if index == 4:
            result = tracker.add_objects(state, frames[index], later)
        else:
            result = tracker.step(state, frames[index])
        expected = reference[index]
        assert result.index == index and result.object_ids == expected.object_ids
        if index <= 6:  # frame 6 evicts frame 3: from frame 7 on the bank's frame order differs from the list's
            assert np.array_equal(result.probs_numpy(), expected.probs), index
        for object_id in expected.object_ids:
            assert iou(result.mask == object_id, expected.labels == object_id) >= 0.99, (index, object_id)
    assert result.object_ids == [1, 2, 9] and set(np.unique(result.mask)) <= {0, 1, 2, 9}
    assert sorted(state.bank.frame_indices()) == [0, 4, 15]  # first and join frames stay; 15 is permanent


def test_a_bundle_at_twice_the_frame_size_tracks_like_the_reference_at_that_short_side(folded_model, bmx_small):
    """Frames half the input size are resized up to fit it: the reference tracking at that short side
    (``TrackerConfig.short_side``, what a checkpoint trained at that scale asks for) is the same computation."""
    import cv2

    half = [cv2.resize(frame, (INPUT[1] // 2, INPUT[0] // 2), interpolation=cv2.INTER_AREA)
            for frame in bmx_small.frames[:6]]
    first = cv2.resize(bmx_small.first_mask, (INPUT[1] // 2, INPUT[0] // 2), interpolation=cv2.INTER_NEAREST)
    reference = list(ReferenceTracker(folded_model, TrackerConfig(mem_every=3, short_side=INPUT[0])).track(half, first))
    tracker = make_tracker(folded_model, max_memory=8)
    state = tracker.start(half[0], first)
    for index in range(1, len(half)):
        result = tracker.step(state, half[index])
        assert result.mask.shape == half[index].shape[:2]
        assert np.array_equal(result.probs_numpy(), reference[index].probs), index


def test_step_batch_equals_step(tiny_model, bmx_small):
    """One encoder call for two sessions gives each session what ``step`` gives it: the same features up to the
    batched convolution's rounding (1e-6; the KMN argmax can turn that into 1e-3 in a probability), so the same
    masks."""
    frames, first = bmx_small.frames[:6], bmx_small.first_mask
    tracker = make_tracker(tiny_model)
    single = tracker.start(frames[0], first)
    batched = [tracker.start(frames[0], first), tracker.start(frames[0], np.where(first == 2, 0, first))]
    for frame in frames[1:]:
        expected = tracker.step(single, frame)
        results = tracker.step_batch(batched, [frame, frame])
        for name, tensor in single.workspace.query.items():
            assert torch.allclose(tracker._batch[name][0], tensor, atol=1e-5), name
        assert torch.allclose(results[0].probs, expected.probs, atol=5e-3)
        for object_id in (1, 2):
            assert iou(results[0].mask == object_id, expected.mask == object_id) >= 0.99
        assert results[1].object_ids == [1] and results[0].object_ids == [1, 2]
        assert {"query_encode", "read", "decode", "memorize", "total"} <= set(results[0].times)
    with pytest.raises(UserInputError, match="same session twice"):
        tracker.step_batch([single, single], [frames[0], frames[0]])


def test_remove_object_repacks_and_keeps_tracking(tiny_model, bmx_small):
    frames, first = bmx_small.frames[:8], bmx_small.first_mask
    tracker = make_tracker(tiny_model)
    state = tracker.start(frames[0], first)
    for frame in frames[1:4]:
        tracker.step(state, frame)
    bike_memory = state.bank.keys()[: state.memory_frames, 1].clone()
    tracker.remove_object(state, 1)
    assert state.object_ids == [2]
    assert torch.equal(state.bank.keys()[: state.memory_frames, 0], bike_memory)
    for frame in frames[4:]:
        result = tracker.step(state, frame)
        assert set(np.unique(result.mask)) <= {0, 2} and result.probs.shape[0] == 2
    with pytest.raises(UserInputError, match="not tracked"):
        tracker.remove_object(state, 1)
    with pytest.raises(UserInputError, match="last tracked object"):
        tracker.remove_object(state, 2)


def test_reset_starts_a_new_video_of_another_size(tiny_model, bmx_small):
    tracker = make_tracker(tiny_model)
    state = tracker.start(bmx_small.frames[0], bmx_small.first_mask)
    tracker.step(state, bmx_small.frames[1])
    tracker.reset(state)
    assert state.object_ids == [] and state.memory_frames == 0
    frame = np.full((30, 40, 3), 128, np.uint8)
    mask = np.zeros((30, 40), np.uint8)
    mask[5:15, 5:15] = 4
    first = tracker.add_objects(state, frame, mask)
    assert first.index == 0 and first.mask.shape == (30, 40) and np.array_equal(first.mask, mask)
    assert tracker.step(state, frame).mask.shape == (30, 40)


def test_frames_of_another_size_are_resized_and_padded_and_back(tiny_model, bmx_small):
    """A 120x212 frame in a 64x112 tracker: resized to fit (aspect kept), padded, and the mask comes back at
    120x212; it agrees with running the downscaled video (the same network input, up to interpolation)."""
    import cv2

    big = [cv2.resize(f, (212, 120), interpolation=cv2.INTER_LINEAR) for f in bmx_small.frames[:5]]
    big_mask = cv2.resize(bmx_small.first_mask, (212, 120), interpolation=cv2.INTER_NEAREST)
    tracker = make_tracker(tiny_model)
    state = tracker.start(big[0], big_mask)
    assert state.framing.needs_resize and state.framing.input_size == INPUT
    for frame in big[1:]:
        result = tracker.step(state, frame)
        assert result.mask.shape == (120, 212) and result.probs.shape == (3, 120, 212)
        assert set(np.unique(result.mask)) <= {0, 1, 2}
        assert torch.allclose(result.probs.sum(0), torch.ones(120, 212), atol=1e-4)


def test_unusual_ids_grayscale_rgba_and_device_tensors(tiny_model, bmx_small):
    frames = bmx_small.frames[:4]
    mask = np.where(bmx_small.first_mask == 1, 200, np.where(bmx_small.first_mask == 2, 17, 0)).astype(np.uint8)
    tracker = make_tracker(tiny_model)
    state = tracker.start(frames[0], mask)
    assert state.object_ids == [17, 200]
    gray = frames[1].mean(axis=2).astype(np.uint8)
    rgba = np.concatenate([frames[2], np.full((*frames[2].shape[:2], 1), 255, np.uint8)], axis=2)
    for frame in (gray, rgba, torch.from_numpy(frames[3])):
        result = tracker.step(state, frame)
        assert set(np.unique(result.mask)) <= {0, 17, 200}
    # a grayscale frame is the same image given as RGB
    as_gray = tracker.step(tracker.start(frames[0], mask), gray)
    as_rgb = tracker.step(tracker.start(frames[0], mask), np.repeat(gray[..., None], 3, axis=2))
    assert torch.equal(as_gray.probs, as_rgb.probs)


def test_bad_input_is_reported_clearly(tiny_model, bmx_small):
    frame, mask = bmx_small.frames[0], bmx_small.first_mask
    tracker = make_tracker(tiny_model, max_objects=2)
    with pytest.raises(UserInputError, match="no object"):
        tracker.start(frame, np.zeros_like(mask))
    with pytest.raises(UserInputError, match="mask size 50x40 differs from the frame size 106x60"):
        tracker.start(frame, np.zeros((40, 50), np.uint8))
    three = mask.copy()
    three[:3, :3] = 5
    with pytest.raises(UserInputError, match="3 objects exceed the maximum of 2 objects"):
        tracker.start(frame, three)
    state = tracker.start(frame, mask)
    with pytest.raises(UserInputError, match="frame 1 is 50x40"):
        tracker.step(state, np.zeros((40, 50, 3), np.uint8))
    with pytest.raises(UserInputError, match="uint8"):
        tracker.step(state, frame.astype(np.float32))
    with pytest.raises(UserInputError, match="tracks no object"):
        tracker.step(tracker.new_state(), frame)
    assert state.next_index == 1  # rejected frames do not advance the session
    tracker.close()
    with pytest.raises(UserInputError, match="this tracker is closed"):
        tracker.step(state, frame)
    assert state.next_index == 1
    with pytest.raises(UserInputError, match="this tracker is closed"):
        tracker.new_state()
    for call in (lambda: tracker.remove_object(state, 1), lambda: tracker.reset(state),
                 lambda: tracker.add_objects(state, frame, three)):  # closed comes first, before the inputs
        with pytest.raises(UserInputError, match="this tracker is closed"):
            call()
    assert state.object_ids == [int(i) for i in np.unique(mask) if i]  # unchanged


def test_sessions_stay_with_their_tracker_and_misuse_leaves_them_as_they_were(tiny_model, bmx_small):
    frame, mask = bmx_small.frames[0], bmx_small.first_mask
    tracker, other = make_tracker(tiny_model), make_tracker(tiny_model)
    state = tracker.start(frame, mask)
    for call in (lambda: other.step(state, frame), lambda: other.remove_object(state, 1),
                 lambda: other.reset(state), lambda: other.step_batch([other.start(frame, mask), state],
                                                                       [frame, frame])):
        with pytest.raises(UserInputError, match=r"made by another tracker \(model, torch\); a session stays"):
            call()
    assert state.next_index == 1 and state.object_ids == [1, 2]
    with pytest.raises(UserInputError, match="expected a session .* got NoneType"):
        tracker.step(None, frame)
    empty = tracker.new_state()
    with pytest.raises(UserInputError, match="frame 0: this session tracks no object yet"):
        tracker.fill_memory(empty, [frame])
    assert empty.framing is None and empty.next_index == 0 and empty.memory_frames == 0
    with pytest.raises(UserInputError, match=r"session 2 of 3: frame 0: this session tracks no object yet"):
        tracker.step_batch([state, empty, tracker.start(frame, mask)], [frame] * 3)
    with pytest.raises(UserInputError, match=r"session 1 of 2: frame 1: frames must be uint8"):
        tracker.step_batch([state, tracker.start(frame, mask)], [frame.astype(np.float32), frame])
    assert state.next_index == 1


def test_numbers_are_checked_and_probs_numpy_is_a_copy(tiny_model, bmx_small):
    for mem_every in (2.5, "5", 0, True):
        with pytest.raises(UserInputError, match="mem_every .* must be a whole number of at least 1"):
            make_tracker(tiny_model, mem_every=mem_every)
    for size in ((0, 0), (64,), (-16, 64)):
        with pytest.raises(UserInputError, match="must be \\(height, width\\), positive multiples of 16"):
            Tracker.from_model(tiny_model, size)
    with pytest.raises(UserInputError, match="a bundle is a folder: give its path"):
        Tracker.from_bundle(None)
    tracker = make_tracker(tiny_model)
    result = tracker.step(tracker.start(bmx_small.frames[0], bmx_small.first_mask), bmx_small.frames[1])
    copy = result.probs_numpy()
    copy[:] = -1
    assert float(result.probs.min()) >= 0 and np.array_equal(result.probs_numpy(), result.probs.numpy())
    with pytest.raises(UserInputError, match="object '1' is not tracked in this session"):
        tracker.remove_object(tracker.start(bmx_small.frames[0], bmx_small.first_mask), "1")


def test_session_bytes_and_fill_memory(tiny_model, bmx_small):
    frames, first = bmx_small.frames, bmx_small.first_mask
    tracker = Tracker.from_model(tiny_model, INPUT, max_objects=4, max_memory=6, mem_every=10**9)
    state = tracker.start(frames[0], first)
    c = tiny_model.config
    per_frame_object = (c.key_dim + c.value_dim) * 4 * 7 * 4 + 4  # fp32 key + value [C, 4, 7], validity
    assert state.bank_bytes == 6 * 4 * per_frame_object
    assert tracker.session_bytes() == state.bank_bytes + state.workspace.nbytes
    tracker.fill_memory(state, frames[1:4])       # T = 6 -> 1 + 3 permanent, then every step reads 1 + 3 + 1
    assert state.memory_frames == 4
    for frame in frames[4:8]:
        tracker.step(state, frame)
        assert state.memory_frames == 5
    with pytest.raises(UserInputError, match=r"fill_memory got 2 frames, but the bank holds 4 permanent frames and "
                       r"this bundle's max_memory 6 allows 5: room for 1 more"):
        tracker.fill_memory(state, frames[8:10])
    assert state.memory_frames == 5 and state.next_index == 8  # refused before any frame ran
    fresh = tracker.start(frames[0], first)
    with pytest.raises(UserInputError, match=r"^frame 2 is 50x40"):  # named as the frame it would have been
        tracker.fill_memory(fresh, [frames[1], np.zeros((40, 50, 3), np.uint8)])
    assert fresh.next_index == 1 and fresh.memory_frames == 1
    tracker.fill_memory(state, frames[8:9])
    with pytest.raises(UserInputError, match="room for 0 more"):
        tracker.fill_memory(state, frames[9:10])


def test_bank_is_reused_not_reallocated(tiny_model, bmx_small):
    tracker = make_tracker(tiny_model, max_memory=3, mem_every=1)
    state = tracker.start(bmx_small.frames[0], bmx_small.first_mask)
    pointers = state.bank.storage_pointers()
    for frame in bmx_small.frames[1:6]:
        tracker.step(state, frame)
    assert state.bank.storage_pointers() == pointers and isinstance(state.bank, MemoryBank)
