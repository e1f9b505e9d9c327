"""Session records and the registry: admission against the memory budget, frame-index rules, idle expiry, and
tombstones so that a closed id answers 410 with its reason instead of being silently recreated or forgotten.

One lock (``registry.lock``, a Condition the device worker shares) guards every record: admission of a frame (index
check, queue policy) and the worker's scheduling happen atomically with respect to each other.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kmnrt.service.errors import ServiceError

if TYPE_CHECKING:
    from kmnrt.runtime.state import SessionState

RECENT_FRAMES = 4  # answers kept per session for repeated frame indices (retries after a lost response)


class CloseReason:
    CLIENT = "closed_by_client"
    EXPIRED = "expired"
    ERROR = "evicted_after_error"
    SHUTDOWN = "server_shutdown"


@dataclass
class Job:
    """One unit of device work for a session: a ``step`` (batchable frame) or a ``call`` (anything else, alone)."""

    session: Session
    kind: str                                  # "step" | "call"
    future: Future
    enqueued_at: float
    frame: Any = None                          # [H, W, 3] uint8 for steps
    call: Callable[..., Any] | None = None     # call(tracker, session) -> value, for calls
    index: int | None = None                   # the client's frame_index


@dataclass
class Session:
    """One video: its device state and the bookkeeping the service needs around it."""

    id: str
    frame_size: tuple[int, int]
    mask_format: str
    queue_policy: str
    ttl_s: float
    created_at: float
    last_active_at: float
    state: SessionState | None = None
    next_index: int = 1           # the frame_index the next frame must carry (frame 0 creates the session)
    frames_done: int = 1
    frames_dropped: int = 0
    pending: deque[Job] = field(default_factory=deque)
    in_flight: bool = False
    closed_reason: str | None = None
    # the last answers by frame_index: (future, the digest of the objects it added, None for a plain frame)
    recent: OrderedDict[int, tuple[Future, str | None]] = field(default_factory=OrderedDict)

    @property
    def expires_at(self) -> float:
        return self.last_active_at + self.ttl_s

    @property
    def busy(self) -> bool:
        return self.in_flight or bool(self.pending)

    def admit_frame(self, index: int, queue_depth: int,
                    objects: str | None = None) -> tuple[Future | None, list[Job]]:
        """Check a frame's index and the queue policy (lock held); ``objects``: a digest of the mask of the objects
        the frame adds, None for a plain frame. -> (the earlier future if ``index`` repeats a recent frame, jobs
        the ``latest`` policy dropped to make room). Raises 409/429 ServiceErrors."""
        if index in self.recent:
            earlier, added = self.recent[index]
            if added != objects:  # not a retry: the earlier answer would ignore (or hold) other objects
                sent = "as a plain frame" if added is None else "with other new objects" if objects else \
                    "with new objects"
                raise ServiceError(409, "frame_already_sent", f"frame_index {index} was already sent {sent}; "
                                   f"{'add the objects with' if objects else 'send'} the next frame, index "
                                   f"{self.next_index}")
            return earlier, []
        if index < self.next_index:
            raise ServiceError(409, "frame_too_old", f"frame_index {index} lies behind this session, which takes "
                               f"{self.next_index} next; an earlier index can only repeat one of the last "
                               f"{RECENT_FRAMES} answered frames")
        if self.queue_policy == "block" and index != self.next_index:
            raise ServiceError(409, "frame_out_of_order", f"frame_index {index} skips frames: this session expects "
                               f"{self.next_index} next (frames must arrive in order, one index after another)")
        dropped: list[Job] = []
        if len(self.pending) >= queue_depth:
            if self.queue_policy == "block":
                raise ServiceError(429, "queue_full", f"{len(self.pending)} frame(s) of this session are already "
                                   f"waiting behind the one in flight; wait for an answer before sending more",
                                   {"Retry-After": "1"})
            stale = [job for job in self.pending if job.kind == "step"]
            if not stale:
                raise ServiceError(429, "queue_full", "this session's queue holds only object changes; retry",
                                   {"Retry-After": "1"})
            self.pending.remove(stale[0])
            dropped.append(stale[0])
            self.frames_dropped += 1
        return None, dropped

    def remember(self, index: int, future: Future, objects: str | None = None) -> None:
        self.next_index = index + 1
        self.recent[index] = (future, objects)
        while len(self.recent) > RECENT_FRAMES:
            self.recent.popitem(last=False)

    def forget_refused(self, index: int) -> None:
        """Frame ``index`` was refused by the runtime (a user error, e.g. too many objects): unless a later frame
        was admitted meanwhile, it did not happen, so its index is free for a corrected retry (lock held)."""
        if self.next_index == index + 1:
            self.recent.pop(index, None)
            self.next_index = index


class SessionRegistry:
    """Open sessions, their capacity, idle expiry and the tombstones of closed ones."""

    def __init__(self, max_sessions: int, max_ttl_s: float, tombstones: int,
                 clock: Callable[[], float] = time.time):
        self.lock = threading.Condition()
        self.max_sessions = max_sessions
        self.max_ttl_s = max_ttl_s
        self.clock = clock
        self._open: dict[str, Session] = {}
        self._closed: OrderedDict[str, str] = OrderedDict()   # id -> reason
        self._tombstones = tombstones

    def __len__(self) -> int:
        return len(self._open)

    def reserve(self, frame_size: tuple[int, int], mask_format: str, queue_policy: str,
                ttl_s: float | None) -> Session:
        """A new session record holding a capacity slot (its state comes from the worker), or 503 when full."""
        with self.lock:
            if len(self._open) >= self.max_sessions:
                raise ServiceError(503, "capacity_full", f"all {self.max_sessions} session slots of the device "
                                   f"memory budget are taken; retry later or close idle sessions",
                                   {"Retry-After": str(self.retry_after())})
            now = self.clock()
            ttl = min(ttl_s or self.max_ttl_s, self.max_ttl_s)
            session = Session(secrets.token_urlsafe(16), frame_size, mask_format, queue_policy, ttl, now, now)
            self._open[session.id] = session
            return session

    def forget(self, session: Session) -> None:
        """Drop a session whose creation failed: it never existed for the client, so no tombstone."""
        with self.lock:
            self._open.pop(session.id, None)

    def get(self, session_id: str) -> Session:
        """The open session, touched (its idle clock restarts); 410 with the reason if closed, else 404."""
        with self.lock:
            session = self._open.get(session_id)
            if session is not None:
                session.last_active_at = self.clock()
                return session
            reason = self._closed.get(session_id)
        if reason is not None:
            raise ServiceError(410, f"session_{reason}", f"session {session_id} is gone: {reason.replace('_', ' ')}"
                               f"; start a new session with the current frame and mask")
        raise ServiceError(404, "session_not_found", f"no session {session_id} exists on this server")

    def close(self, session: Session, reason: str) -> list[Job]:
        """Close a session (lock taken here): its waiting jobs are returned for the caller to fail, its id keeps
        answering 410 ``reason``, and its device state is released once an in-flight frame finishes."""
        with self.lock:
            return self._close_locked(session, reason)

    def _close_locked(self, session: Session, reason: str) -> list[Job]:
        if self._open.pop(session.id, None) is None:
            return []
        session.closed_reason = reason
        waiting = list(session.pending)
        session.pending.clear()
        if not session.in_flight:
            session.state = None
        self._closed[session.id] = reason
        while len(self._closed) > self._tombstones:
            self._closed.popitem(last=False)
        self.lock.notify_all()
        return waiting

    def expired(self, now: float | None = None) -> list[tuple[Session, list[Job]]]:
        """Close every idle session past its TTL (busy ones are not idle). -> [(session, waiting jobs)]."""
        now = self.clock() if now is None else now
        with self.lock:
            stale = [s for s in self._open.values() if not s.busy and s.expires_at <= now]
            return [(s, self._close_locked(s, CloseReason.EXPIRED)) for s in stale]

    def open_sessions(self) -> list[Session]:
        with self.lock:
            return list(self._open.values())

    def retry_after(self) -> int:
        """Seconds until the first idle session would expire (at least 1): the Retry-After of a 503."""
        now = self.clock()
        waits = [s.expires_at - now for s in self._open.values()]
        return max(1, int(min(waits, default=1.0) + 0.999))


def session_info(session: Session) -> dict:
    """The ``SessionInfo`` fields of a session (call with the registry lock held or accept a racy snapshot)."""
    state = session.state
    return {
        "session_id": session.id,
        "created_at": session.created_at,
        "last_active_at": session.last_active_at,
        "expires_at": session.expires_at,
        "ttl_s": session.ttl_s,
        "next_frame_index": session.next_index,
        "frames_done": session.frames_done,
        "frames_dropped": session.frames_dropped,
        "waiting_frames": len(session.pending),
        "object_ids": state.object_ids if state is not None else [],
        "frame_size": list(session.frame_size),
        "memory_frames": state.memory_frames if state is not None else 0,
        "bank_bytes": state.bank_bytes if state is not None else 0,
        "mask_format": session.mask_format,
        "queue_policy": session.queue_policy,
    }
