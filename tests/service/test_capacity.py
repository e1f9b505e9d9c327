"""Session capacity from the device-memory budget: the device worker's query-encoder batch buffers (shared, for its
largest batch) come off the budget once, the rest is divided into per-session slots."""

from __future__ import annotations

import json

import pytest

from kmnrt.client import encode_frame, encode_mask_png
from kmnrt.errors import UserInputError
from kmnrt.service.app import capacity, largest_batch
from kmnrt.service.settings import ServiceSettings

MIB = 2**20


def test_batch_bytes_are_the_buffers_step_batch_allocates(tiny_bundle, videos):
    from kmnrt.runtime.tracker import Tracker

    with Tracker.from_bundle(tiny_bundle, backend="onnxruntime") as tracker:  # fresh: no buffers grown yet
        assert tracker.batch_bytes(1) == 0  # one session encodes into its own workspace
        assert tracker.batch_bytes(8) == 4 * tracker.batch_bytes(2) > 0  # one slot per frame of the batch
        clips = [videos(600 + s, 2) for s in range(3)]
        states = [tracker.start(clip.frames[0], clip.mask) for clip in clips]
        tracker.step_batch(states, [clip.frames[1] for clip in clips], keep_probs=False)
        allocated = sum(t.numel() * t.element_size() for t in tracker._batch.values())  # what it really holds
        assert allocated == tracker.batch_bytes(3)
        # frame [3, 64, 112] in, features out, float32: computed from the bundle's graph shapes
        spec = tracker.graphs["query_encoder"]
        per_frame = sum(4 * _numel(s.concrete({"B": 1})) for s in spec.inputs + spec.outputs)
        assert tracker.batch_bytes(3) == 3 * per_frame


def _numel(shape) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def test_capacity_takes_the_batch_buffers_off_the_budget():
    session, batch = 1000 * 1024, 700 * 1024
    exact = ServiceSettings(memory_budget_mb=(3 * session + batch) / MIB)
    assert capacity(exact, session, batch) == 3
    assert capacity(exact, session, 0) == 3 + batch // session  # without them the same budget seemed to hold more
    short = ServiceSettings(memory_budget_mb=(3 * session + batch - 1024) / MIB)
    assert capacity(short, session, batch) == 2
    assert capacity(ServiceSettings(memory_budget_mb=100, max_sessions=5), session, batch) == 5
    with pytest.raises(UserInputError, match=r"batch buffers \(batch of 8\) take 0.7 MiB.*--max-batch"):
        capacity(ServiceSettings(memory_budget_mb=(session + batch - 1024) / MIB), session, batch)


def test_largest_batch_is_capped_by_the_sessions():
    assert largest_batch(ServiceSettings(max_batch=8)) == 8
    assert largest_batch(ServiceSettings(max_batch=8, max_sessions=3)) == 3  # one frame per session per batch
    assert largest_batch(ServiceSettings(max_batch=1)) == 1


def test_served_capacity_includes_the_batch_buffers(make_client, tracker, videos):
    session, batch = tracker.session_bytes(), tracker.batch_bytes(4)
    assert batch > 0
    budget_mb = (2 * session + batch) / MIB
    batched = make_client(memory_budget_mb=budget_mb, max_batch=4)
    assert batched.get("/v2/health/ready").json()["max_sessions"] == 2
    assert "kmnrt_max_sessions 2.0" in batched.get("/metrics").text
    video = videos(610, 1)
    files = {"frame": ("f.png", encode_frame(video.frames[0])), "mask": ("m.png", encode_mask_png(video.mask))}
    for _ in range(2):
        assert batched.post("/v1/sessions", files=files, data={"options": json.dumps({})}).status_code == 201
    full = batched.post("/v1/sessions", files=files)
    assert full.status_code == 503 and full.json()["error"]["code"] == "capacity_full"
    # the same budget without cross-session batching needs no batch buffers: those bytes hold sessions instead
    unbatched = make_client(memory_budget_mb=budget_mb, max_batch=1)
    assert unbatched.get("/v2/health/ready").json()["max_sessions"] == 2 + batch // session


def test_a_budget_the_batch_buffers_fill_refuses_to_start(make_client, tracker):
    session, batch = tracker.session_bytes(), tracker.batch_bytes(8)
    with pytest.raises(UserInputError, match="holds no session: the batch buffers"):
        make_client(memory_budget_mb=(session + batch - 1) / MIB, max_batch=8)
    assert make_client(memory_budget_mb=(session + batch) / MIB, max_batch=8) \
        .get("/v2/health/ready").json()["max_sessions"] == 1
