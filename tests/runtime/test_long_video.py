"""A long video: bank bytes, buffer addresses and process memory stay flat (nothing grows per frame)."""

from __future__ import annotations

import itertools
from pathlib import Path

from kmnrt.runtime import Tracker

FRAMES = 300


def resident_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def test_three_hundred_frames_in_constant_memory(tiny_bundle, load_clip):
    clip = load_clip("davis2016_blackswan", 50, (60, 106))
    tracker = Tracker.from_bundle(tiny_bundle, backend="onnxruntime")
    state = tracker.start(clip.frames[0], clip.first_mask)
    bank_bytes, pointers = state.bank_bytes, state.bank.storage_pointers()
    # the frames cycle forwards and backwards through the real sequence, so the motion stays plausible
    frames = itertools.cycle(clip.frames[1:] + clip.frames[-2:0:-1])
    rss = {}
    for index in range(1, FRAMES + 1):
        result = tracker.step(state, next(frames), keep_probs=False)
        assert result.index == index
        if index in (100, FRAMES):
            rss[index] = resident_bytes()
    assert state.bank_bytes == bank_bytes == tracker.session_bytes() - state.workspace.nbytes
    assert state.bank.storage_pointers() == pointers
    assert state.memory_frames <= tracker.spec.max_memory
    assert 0 in state.bank.frame_indices()  # the first frame is never evicted
    growth = rss[FRAMES] - rss[100]
    print(f"RSS after frame 100: {rss[100] / 2**20:.1f} MiB, after {FRAMES}: {rss[FRAMES] / 2**20:.1f} MiB")
    assert growth < 20 * 2**20, f"process memory grew by {growth / 2**20:.1f} MiB between frames 100 and {FRAMES}"
