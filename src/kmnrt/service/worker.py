"""The device worker: one thread owns the tracker (engines, CUDA stream) and runs every session's work.

Scheduling (Triton's "oldest" sequence batching): sessions with waiting work queue up in arrival order; at most
one job per session runs at a time (a frame needs the previous frame's memory). Frames of different sessions are
batched through one query-encoder call (``Tracker.step_batch``), at most one per session and ``max_batch`` in
all; when fewer are ready the worker waits until ``max_delay`` after the oldest one arrived. Anything that is not a
plain frame (creation, new objects, removal) runs alone, in its session's order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from kmnrt.errors import UserInputError
from kmnrt.service.errors import ServiceError
from kmnrt.service.sessions import CloseReason, Job, Session, SessionRegistry

if TYPE_CHECKING:
    from kmnrt.runtime.state import StepResult
    from kmnrt.runtime.tracker import Tracker
    from kmnrt.service.metrics import ServiceMetrics

log = logging.getLogger("kmnrt.service")

DROPPED = "dropped"  # the result of a frame the ``latest`` policy dropped


@dataclass
class FrameOutcome:
    """What the worker returns for a frame: the runtime's result plus how it was scheduled."""

    result: StepResult
    batch_size: int
    queue_wait_s: float


class DeviceWorker:
    """Runs jobs on ``tracker`` in its own thread; ``submit_*`` are thread-safe and return futures."""

    def __init__(self, tracker: Tracker, registry: SessionRegistry, metrics: ServiceMetrics, max_batch: int,
                 max_delay_s: float, queue_depth: int):
        self.tracker = tracker
        self.registry = registry
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.queue_depth = queue_depth
        self._lock = registry.lock
        self._ready: deque[Session] = deque()   # sessions with waiting work and nothing in flight, oldest first
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name="kmnrt-device-worker", daemon=True)
        self.ready = threading.Event()           # set once warmed up: work is accepted from then on
        self.failure: BaseException | None = None  # why the worker stopped serving: a failed warm-up or a crash
        self._warm_first = True

    # --- lifecycle ----------------------------------------------------------------------------------------------

    def start(self, warmup: bool = True) -> None:
        """Start the thread and return at once. With ``warmup`` the thread first runs a few frames of a throw-away
        session at each batch size used (on a GPU the first calls pay for lazy initialisation and autotuning),
        so ``ready`` is set later; without, ``ready`` is set before this returns. Until ``ready``, submissions
        answer 503 ``not_ready``: no client frame runs on cold engines or waits behind the warm-up."""
        self._warm_first = warmup
        if not warmup:
            self._set_ready(0.0)
        self._thread.start()

    def _main(self) -> None:
        if self._warm_first:
            started = time.perf_counter()
            try:
                self._warmup()
            except Exception as exc:  # noqa: BLE001 - /v2/health/* report it; the server stays up to say so
                self.failure = exc
                log.error("engine warm-up failed; the service will not get ready", exc_info=exc,
                          extra={"event": "warmup_failed", "error": repr(exc)})
                return
            self._set_ready(time.perf_counter() - started)
        try:
            self._loop()
        except Exception as exc:  # noqa: BLE001 - a bug: say so everywhere rather than leave requests hanging
            self.failure = exc
            self.ready.clear()
            log.error("the device worker stopped; this instance will not serve again", exc_info=exc,
                      extra={"event": "worker_failed", "error": repr(exc)})
            with self._lock:
                waiting = [job for session in self._ready for job in session.pending]
            fail_jobs(waiting, ServiceError(503, "not_ready", "the device worker of this instance failed; use "
                                            "another instance"))

    def _set_ready(self, warmup_s: float) -> None:
        if not self._stopping:  # a stop during the warm-up: never report ready
            self.ready.set()
            log.info("engines ready", extra={"event": "ready", "warmup_s": round(warmup_s, 3)})

    def stop(self, timeout_s: float) -> bool:
        """Finish what is queued and in flight (up to ``timeout_s``), then stop. -> True if it drained."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self.ready.clear()
        return not self._thread.is_alive()

    def _warmup(self) -> None:
        height, width = self.tracker.spec.input_size
        frame = np.zeros((height, width, 3), np.uint8)
        mask = np.zeros((height, width), np.uint8)
        mask[: height // 2, : width // 2] = 1
        states = [self.tracker.start(frame, mask) for _ in range(min(2, self.max_batch))]
        for _ in range(2):
            self.tracker.step_batch(states, [frame] * len(states), keep_probs=False)
            self.tracker.step(states[0], frame, keep_probs=False)

    # --- submission (any thread) --------------------------------------------------------------------------------

    def submit_frame(self, session: Session, index: int, frame: np.ndarray, call=None,
                     objects: str | None = None) -> tuple[Future, bool]:
        """Queue frame ``index`` of ``session`` (``call``: run it as a call instead of a batched step, e.g. adding
        the objects whose mask has the digest ``objects``). -> (future of a FrameOutcome or DROPPED, whether it
        repeats an earlier index)."""
        with self._lock:
            self._check_open(session)
            earlier, dropped = session.admit_frame(index, self.queue_depth, objects)
            if earlier is not None:
                return earlier, True
            future: Future = Future()
            kind = "step" if call is None else "call"
            self._enqueue(Job(session, kind, future, time.perf_counter(), frame, call, index))
            session.remember(index, future, objects)
        for job in dropped:  # counted before answered, so a client that saw the answer sees it in /metrics
            self.metrics.frames.labels("dropped").inc()
            settle(job.future, DROPPED)
        return future, False

    def submit_call(self, session: Session, call) -> Future:
        """Queue ``call(tracker, session)`` in the session's order (creation, object removal)."""
        with self._lock:
            self._check_open(session)
            future: Future = Future()
            self._enqueue(Job(session, "call", future, time.perf_counter(), call=call))
        return future

    def _check_open(self, session: Session) -> None:
        if not self.ready.is_set() and not self._stopping:
            if self.failure is not None:
                raise ServiceError(503, "not_ready", "the device worker of this instance failed, so it will not "
                                   "serve (its log says why); use another instance")
            raise ServiceError(503, "not_ready", "the engines are still warming up; retry when /v2/health/ready "
                               "answers 200", {"Retry-After": "1"})
        if session.closed_reason is not None:
            raise ServiceError(410, f"session_{session.closed_reason}", f"session {session.id} is gone: "
                               f"{session.closed_reason.replace('_', ' ')}")
        if self._stopping:
            raise ServiceError(503, "shutting_down", "the server is shutting down; retry on another instance",
                               {"Retry-After": "5"})

    def _enqueue(self, job: Job) -> None:
        session = job.session
        session.pending.append(job)
        if not session.in_flight and session not in self._ready:
            self._ready.append(session)
        self._lock.notify_all()

    # --- the device thread --------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._lock:
                batch = self._next_batch()
                if batch is None:
                    return
            try:
                self._run(batch)
            except Exception as exc:  # noqa: BLE001 - a bug of the worker's own: evict these sessions, serve on
                for job in batch:
                    self._fail(job, exc)
            with self._lock:
                for job in batch:
                    session = job.session
                    session.in_flight = False
                    if session.closed_reason is not None:
                        session.state = None  # closed while this frame ran: release the bank now
                    elif session.pending and session not in self._ready:
                        self._ready.append(session)
                self._lock.notify_all()

    def _next_batch(self) -> list[Job] | None:
        """Wait for work (lock held); -> the jobs to run now, at most one per session; None when stopping and
        drained."""
        while True:
            self._ready = deque(s for s in self._ready if s.pending and s.closed_reason is None)
            if self._ready:
                break
            if self._stopping:
                return None
            self._lock.wait()
        head = self._ready[0].pending[0]
        if head.kind == "step" and self.max_batch > 1:
            deadline = head.enqueued_at + self.max_delay_s
            while not self._stopping:
                ready_steps = sum(1 for s in self._ready if s.pending and s.pending[0].kind == "step")
                remaining = deadline - time.perf_counter()
                if ready_steps >= self.max_batch or remaining <= 0:
                    break
                self._lock.wait(remaining)
            self._ready = deque(s for s in self._ready if s.pending and s.closed_reason is None)
            if not self._ready:
                return []
        batch: list[Job] = []
        for session in list(self._ready):
            job = session.pending[0]
            if job.kind == "call":
                if batch:
                    continue
                batch.append(job)
                break
            batch.append(job)
            if len(batch) == self.max_batch:
                break
        for job in batch:
            job.session.pending.popleft()
            job.session.in_flight = True
            self._ready.remove(job.session)
        return batch

    def _run(self, batch: list[Job]) -> None:
        # A request that gave up (its client left) cancelled its future: skip its work. The others can no longer
        # be cancelled from here on, so their answers cannot be refused.
        batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
        now = time.perf_counter()
        for job in batch:
            self.metrics.queue_wait_seconds.observe(now - job.enqueued_at)
        if batch and batch[0].kind == "call":
            self._run_call(batch[0], now)
        elif batch:
            self.metrics.batch_size.observe(len(batch))
            self._run_steps(batch, now)

    def _run_call(self, job: Job, started: float) -> None:
        try:
            value = job.call(self.tracker, job.session)
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the waiting request
            self._fail(job, exc)
            return
        if job.index is not None:  # a frame with new objects
            job.session.frames_done += 1
            value = FrameOutcome(value, 1, started - job.enqueued_at)
            self.metrics.observe_times(value.result.times)
        job.future.set_result(value)

    def _run_steps(self, batch: list[Job], started: float) -> None:
        states = [job.session.state for job in batch]
        try:
            results = self.tracker.step_batch(states, [job.frame for job in batch], keep_probs=False)
        except UserInputError as exc:
            if len(batch) == 1:
                self._fail(batch[0], exc)
                return
            for job in batch:  # checks run before any work: isolate the one at fault
                self._run_steps([job], started)
            return
        except Exception as exc:  # noqa: BLE001
            for job in batch:
                self._fail(job, exc)
            return
        for job, result in zip(batch, results):
            job.session.frames_done += 1
            self.metrics.observe_times(result.times)
            job.future.set_result(FrameOutcome(result, len(batch), started - job.enqueued_at))

    def _fail(self, job: Job, exc: BaseException) -> None:
        """User errors go back as 400; anything else evicts the session (its state may be half-updated), so its
        id answers 410 instead of serving from a damaged bank."""
        if isinstance(exc, (UserInputError, ServiceError)):
            if job.index is not None:
                with self._lock:  # before the answer: a client may retry the moment it has it
                    job.session.forget_refused(job.index)
            settle(job.future, error=exc)
            return
        log.error("device work failed; evicting the session", extra={"event": "worker_error",
                  "error": repr(exc)}, exc_info=exc)
        waiting = self.registry.close(job.session, CloseReason.ERROR)
        self.metrics.sessions_closed.labels(CloseReason.ERROR).inc()
        error = ServiceError(500, "device_error", "the device failed on this session's frame; the session was "
                             "closed, start a new one")
        for other in [job, *waiting]:
            settle(other.future, error=error)


def fail_jobs(jobs: list[Job], error: ServiceError) -> None:
    """Answer jobs that will never run (their session closed) with ``error``."""
    for job in jobs:
        settle(job.future, error=error)


def settle(future: Future, value: object = None, error: BaseException | None = None) -> None:
    """Answer a future that may already be answered or cancelled (its request gave up), without raising."""
    with suppress(InvalidStateError):  # cancel() may come from the event loop between any check and the answer
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)
