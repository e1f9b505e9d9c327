"""The device worker on the real tracker: cross-session batches (at most one frame per session) with results equal
to single runs, the `latest` policy dropping stale frames, `block` answering 429, and draining on stop."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from kmnrt.service.errors import ServiceError
from kmnrt.service.metrics import ServiceMetrics
from kmnrt.service.sessions import SessionRegistry
from kmnrt.service.worker import DROPPED, DeviceWorker


def _worker(tracker, max_batch=4, max_delay_s=0.0, queue_depth=1):
    registry = SessionRegistry(max_sessions=16, max_ttl_s=60, tombstones=100)
    worker = DeviceWorker(tracker, registry, ServiceMetrics.create(), max_batch, max_delay_s, queue_depth)
    worker.start(warmup=False)
    return registry, worker


def _open(registry, tracker, video, policy="block"):
    session = registry.reserve(video.mask.shape, "png", policy, None)
    session.state = tracker.start(video.frames[0], video.mask)
    return session


def _hold(worker, session):
    """Occupy the worker with a call on ``session`` until the returned event is set."""
    release, running = threading.Event(), threading.Event()

    def wait(tracker, session):
        running.set()
        release.wait(30)

    future = worker.submit_call(session, wait)
    assert running.wait(30)
    return release, future


def test_frames_of_different_sessions_share_a_batch(tracker, videos, reference):
    registry, worker = _worker(tracker, max_batch=4, max_delay_s=0.2)
    try:
        clips = [videos(30 + s, 4) for s in range(5)]
        sessions = [_open(registry, tracker, clip) for clip in clips]
        blocker = _open(registry, tracker, clips[0])
        for index in range(1, 4):
            release, _ = _hold(worker, blocker)  # frames pile up while the worker is busy
            futures = [worker.submit_frame(s, index, clip.frames[index])[0] for s, clip in zip(sessions, clips)]
            release.set()
            outcomes = [f.result(30) for f in futures]
            # five ready sessions, max_batch 4: the four oldest share one query-encoder call, the fifth runs next
            assert [o.batch_size for o in outcomes] == [4, 4, 4, 4, 1]
            for clip, outcome in zip(clips, outcomes):
                assert outcome.result.index == index
                assert np.array_equal(outcome.result.mask, reference(clip)[index])
    finally:
        worker.stop(10)


def test_a_batch_never_holds_two_frames_of_one_session(tracker, videos):
    registry, worker = _worker(tracker, max_batch=8, max_delay_s=0.05, queue_depth=2)
    try:
        clips = [videos(40 + s, 3) for s in range(3)]
        sessions = [_open(registry, tracker, clip) for clip in clips]
        release, _ = _hold(worker, sessions[0])
        futures = []
        for session, clip in zip(sessions, clips):
            futures += [worker.submit_frame(session, i, clip.frames[i])[0] for i in (1, 2)]
        release.set()
        outcomes = [f.result(30) for f in futures]
        # session 0's call ran first; then its frames and the others' went in batches of <= 3 sessions
        assert all(o.batch_size <= 3 for o in outcomes)
        assert [o.result.index for o in outcomes] == [1, 2] * 3
    finally:
        worker.stop(10)


def test_latest_policy_drops_stale_frames_block_policy_answers_429(tracker, videos, reference):
    registry, worker = _worker(tracker, max_batch=1, queue_depth=1)
    try:
        clip = videos(50, 6)
        latest = _open(registry, tracker, clip, "latest")
        release, _ = _hold(worker, latest)
        futures = [worker.submit_frame(latest, i, clip.frames[i])[0] for i in (1, 2, 3)]
        release.set()
        assert futures[0].result(30) is DROPPED and futures[1].result(30) is DROPPED
        kept = futures[2].result(30).result
        assert latest.frames_dropped == 2 and kept.index == 1  # the runtime saw one frame: frame 3
        state = tracker.start(clip.frames[0], clip.mask)
        assert np.array_equal(kept.mask, tracker.step(state, clip.frames[3]).mask)

        blocked = _open(registry, tracker, clip, "block")
        release, _ = _hold(worker, blocked)
        worker.submit_frame(blocked, 1, clip.frames[1])
        with pytest.raises(ServiceError) as raised:
            worker.submit_frame(blocked, 2, clip.frames[2])
        assert raised.value.status == 429 and raised.value.headers["Retry-After"]
        release.set()
    finally:
        worker.stop(10)


def test_stop_finishes_queued_frames(tracker, videos):
    registry, worker = _worker(tracker, max_batch=2, queue_depth=4)
    clip = videos(60, 5)
    session = _open(registry, tracker, clip)
    release, _ = _hold(worker, session)
    futures = [worker.submit_frame(session, i, clip.frames[i])[0] for i in range(1, 5)]
    release.set()
    assert worker.stop(30)
    assert [f.result(0).result.index for f in futures] == [1, 2, 3, 4]
    with pytest.raises(ServiceError) as raised:
        worker.submit_frame(session, 5, clip.frames[4])
    assert raised.value.status == 503


def test_requests_that_gave_up_leave_the_worker_serving(tracker, videos):
    """A client that leaves cancels its frame's future (asyncio.wrap_future passes the cancellation on). The worker
    skips a cancelled frame, drops one under `latest` without answering it, and serves on; answering a cancelled
    future used to raise in the device thread, and every later request hung."""
    registry, worker = _worker(tracker, max_batch=1, queue_depth=2)
    try:
        clip = videos(70, 5)
        blocked = _open(registry, tracker, clip)
        release, _ = _hold(worker, blocked)
        gave_up = worker.submit_frame(blocked, 1, clip.frames[1])[0]
        assert gave_up.cancel()
        kept = worker.submit_frame(blocked, 2, clip.frames[2])[0]
        release.set()
        assert kept.result(30).result.index == 1  # the runtime saw one frame: the cancelled one never ran

        latest = _open(registry, tracker, clip, "latest")
        release, _ = _hold(worker, latest)
        futures = [worker.submit_frame(latest, i, clip.frames[i])[0] for i in (1, 2)]
        assert futures[0].cancel()
        last = worker.submit_frame(latest, 3, clip.frames[3])[0]  # drops the cancelled frame 1
        release.set()
        assert last.result(30).result.index >= 1 and futures[0].cancelled()
        assert worker.submit_frame(blocked, 3, clip.frames[3])[0].result(30).result.index == 2
        assert worker.failure is None and worker.ready.is_set()
    finally:
        worker.stop(10)


def test_a_failure_outside_the_tracker_evicts_its_sessions_and_the_worker_serves_on(tracker, videos, monkeypatch):
    """The tracker's own failures are caught where it is called; this is the net under the worker's bookkeeping
    (simulated by a step that raises once): the session in the batch is closed with 500, the others go on."""
    registry, worker = _worker(tracker, max_batch=1)
    try:
        clip = videos(80, 3)
        doomed, healthy = _open(registry, tracker, clip), _open(registry, tracker, clip)
        run_steps = worker._run_steps

        def fail_once(batch, started):
            monkeypatch.setattr(worker, "_run_steps", run_steps)
            raise RuntimeError("a bug in the bookkeeping (simulated)")

        monkeypatch.setattr(worker, "_run_steps", fail_once)
        with pytest.raises(ServiceError) as raised:
            worker.submit_frame(doomed, 1, clip.frames[1])[0].result(30)
        assert (raised.value.status, raised.value.code) == (500, "device_error") and doomed.closed_reason
        assert worker.submit_frame(healthy, 1, clip.frames[1])[0].result(30).result.index == 1
    finally:
        worker.stop(10)
