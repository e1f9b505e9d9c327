"""The reference tracker on real DAVIS frames (tiny model: behaviour, not accuracy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kmnrt.errors import KmnrtWarning, UserInputError
from kmnrt.model.reference import ReferenceTracker, TrackerConfig, _Memory, _MemoryFrame


def test_two_objects_on_real_frames(tiny_model, bmx_trees):
    frames, _, mask = bmx_trees
    results = list(ReferenceTracker(tiny_model).track(frames, mask))
    assert [r.index for r in results] == list(range(len(frames)))
    for result in results:
        assert result.object_ids == [1, 2]
        assert result.probs.shape == (3, 480, 854) and result.probs.dtype == np.float32
        assert np.allclose(result.probs.sum(axis=0), 1.0, atol=1e-5)
        assert result.labels.shape == (480, 854) and result.labels.dtype == np.uint8
        assert set(np.unique(result.labels)) <= {0, 1, 2}
        assert np.array_equal(result.labels, result.probs.argmax(axis=0).astype(np.uint8))
    assert np.array_equal(results[0].labels, mask)  # frame 0 is the given mask


def test_label_ids_are_kept(tiny_model, bmx_trees):
    frames, _, mask = bmx_trees
    remapped = np.select([mask == 1, mask == 2], [3, 7], 0).astype(np.uint8)
    plain = list(ReferenceTracker(tiny_model).track(frames[:4], mask))
    renamed = list(ReferenceTracker(tiny_model).track(frames[:4], remapped))
    for a, b in zip(plain, renamed):
        assert b.object_ids == [3, 7]
        assert np.array_equal(np.select([a.labels == 1, a.labels == 2], [3, 7], 0), b.labels)
        assert np.array_equal(a.probs, b.probs)


def test_object_joining_at_a_later_frame(tiny_model, blackswan):
    frames, _, mask = blackswan
    later = np.zeros_like(mask)
    later[300:380, 100:220] = 4  # a new object, id 4, first annotated on frame 3
    later[mask.astype(bool)] = 1  # an already tracked id in a later mask is ignored
    tracker = ReferenceTracker(tiny_model)
    alone = list(tracker.track(frames, mask))
    joined = list(tracker.track(frames, mask, {3: later}))
    for t in range(3):
        assert joined[t].object_ids == [1]
        assert np.array_equal(joined[t].probs, alone[t].probs)  # nothing changes before the join
    assert joined[3].object_ids == [1, 4] and joined[-1].object_ids == [1, 4]
    assert np.array_equal(joined[3].labels == 4, later == 4)  # the given mask overrides the prediction
    assert joined[3].probs.shape[0] == 3
    assert not np.array_equal(joined[5].probs[:2], alone[5].probs)  # the new object now takes part


def _odd_sized_clip() -> tuple[list[np.ndarray], np.ndarray]:
    """Three random 50x37 frames (no side a multiple of 16) and a mask with object 2."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (37, 50, 3), dtype=np.uint8) for _ in range(3)]
    mask = np.zeros((37, 50), np.uint8)
    mask[10:20, 10:30] = 2
    return frames, mask


def test_frames_are_padded_and_cropped_back(tiny_model):
    frames, mask = _odd_sized_clip()
    results = list(ReferenceTracker(tiny_model).track(frames, mask))
    assert results[-1].labels.shape == (37, 50) and results[-1].probs.shape == (2, 37, 50)


def test_tracking_at_a_short_side_resizes_in_and_back(tiny_model):
    frames, mask = _odd_sized_clip()
    as_is = list(ReferenceTracker(tiny_model).track(frames, mask))
    same = list(ReferenceTracker(tiny_model, TrackerConfig(short_side=37)).track(frames, mask))
    doubled = list(ReferenceTracker(tiny_model, TrackerConfig(short_side=74)).track(frames, mask))
    assert all(np.array_equal(a.probs, b.probs) for a, b in zip(as_is, same))
    assert all(r.probs.shape == (2, 37, 50) and r.labels.shape == (37, 50) for r in doubled)
    assert np.array_equal(doubled[0].labels, mask)  # the given mask comes back exactly
    assert np.abs(doubled[-1].probs - as_is[-1].probs).max() > 1e-3  # the network did see other pixels
    with pytest.raises(UserInputError, match="short_side"):
        TrackerConfig(short_side=8)


def _entry(index, permanent, protected=False):
    return _MemoryFrame(index, torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), permanent, protected)


def test_memory_keeps_first_every_kth_and_previous_frame():
    memory = _Memory(TrackerConfig(mem_every=5))
    for t in range(13):
        memory.add(_entry(t, permanent=t % 5 == 0, protected=t == 0))
    assert [f.index for f in memory.frames] == [0, 5, 10, 12]


def test_bounded_memory_drops_the_oldest_unprotected_permanent_frame():
    memory = _Memory(TrackerConfig(mem_every=2, max_memory=4))
    for t in range(11):
        memory.add(_entry(t, permanent=t % 2 == 0 or t == 3, protected=t in (0, 3)))
    # permanent capacity 3: 0 and 3 (a join frame) are protected; 10 replaced 8, which replaced 6, ...
    assert [f.index for f in memory.frames] == [0, 3, 10]
    memory.add(_entry(11, permanent=False))
    assert [f.index for f in memory.frames] == [0, 3, 10, 11]
    full = _Memory(TrackerConfig(mem_every=1, max_memory=2))
    for t in range(4):
        full.add(_entry(t, permanent=True, protected=t == 0))
    assert [(f.index, f.permanent) for f in full.frames] == [(0, True), (3, False)]


def test_bad_masks_are_user_errors(tiny_model, blackswan):
    frames, _, mask = blackswan
    tracker = ReferenceTracker(tiny_model)
    with pytest.raises(UserInputError, match="no object"):
        list(tracker.track(frames[:2], np.zeros_like(mask)))
    with pytest.raises(UserInputError, match="mask size 427x240 differs from the frame size 854x480"):
        list(tracker.track(frames[:2], mask[::2, ::2]))
    with pytest.raises(UserInputError, match="frame 1 is 427x240"):
        list(tracker.track([frames[0], frames[1][::2, ::2]], mask))
    with pytest.raises(UserInputError, match=r"max_memory \(memory slots: .*\) must be a whole number of at least 2"):
        TrackerConfig(max_memory=1)


def test_frames_masks_and_later_masks_are_checked_as_the_runtime_checks_them(tiny_model, blackswan):
    """The oracle refuses what the runtime refuses instead of giving other answers (a float frame in [0, 1] lost
    the object; id 300 came back as 44), and takes the frames the runtime takes."""
    frames, _, mask = blackswan
    frames, mask = [np.ascontiguousarray(f[::8, ::8]) for f in frames[:3]], np.ascontiguousarray(mask[::8, ::8])
    tracker = ReferenceTracker(tiny_model)
    for frame, message in ((frames[0] / 255.0, "frame 0: frames must be uint8"),
                           (frames[0].transpose(2, 0, 1), r"frame 0: a frame must be an \[H, W, 3\] RGB image")):
        with pytest.raises(UserInputError, match=message):
            list(tracker.track([frame], mask))
    for bad, message in ((mask.astype(np.int64) * 300, r"first mask: object ids must lie in 1..255"),
                         (-mask.astype(np.int64), r"first mask: object ids must lie in 1..255"),
                         (mask.astype(np.float32), "first mask: a mask must hold integer object ids")):
        with pytest.raises(UserInputError, match=message):
            list(tracker.track(frames, bad))
    for key in ("1", 0, 1.0):
        with pytest.raises(UserInputError, match=r"each key of later_masks \(the index of the frame .*\) must be a "
                                                 r"whole number of at least 1"):
            list(tracker.track(frames, mask, later_masks={key: mask}))
    gray = [f.mean(axis=2).astype(np.uint8) for f in frames]
    as_gray = [r.labels for r in tracker.track(gray, mask)]
    as_rgb = [r.labels for r in tracker.track([np.repeat(g[..., None], 3, axis=2) for g in gray], mask)]
    assert all(np.array_equal(a, b) for a, b in zip(as_gray, as_rgb))
    with pytest.warns(KmnrtWarning, match=r"later_masks for frame\(s\) \[99\]: the video ended at frame 2"):
        assert len(list(tracker.track(frames, mask, later_masks={99: mask}))) == 3


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible to PyTorch)")
def test_cuda_matches_cpu(tiny_model, bmx_trees):
    frames, _, mask = bmx_trees
    cpu = list(ReferenceTracker(tiny_model).track(frames[:4], mask))
    cuda = list(ReferenceTracker(tiny_model, device="cuda").track(frames[:4], mask))
    for a, b in zip(cpu, cuda):
        assert np.abs(a.probs - b.probs).max() < 1e-3
        assert (a.labels == b.labels).mean() > 0.999
