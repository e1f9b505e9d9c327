"""The session operations both transports (REST, WebSocket) share: decode inputs, check them against the session,
queue device work, and shape answers. Decoding and encoding run in the thread pool, never on the event loop."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from starlette.concurrency import run_in_threadpool

from kmnrt.errors import UserInputError
from kmnrt.framing import mask_size_mismatch
from kmnrt.service.errors import ServiceError, bad_input
from kmnrt.service.masks import decode_frame, decode_mask_png, encode_labels, rle_objects_to_labels
from kmnrt.service.schemas import MaskRle, SessionOptions
from kmnrt.service.sessions import CloseReason, Session, session_info
from kmnrt.service.worker import DROPPED, FrameOutcome, fail_jobs

if TYPE_CHECKING:
    from kmnrt.service.app import ServiceContext
    from kmnrt.service.metrics import ServiceMetrics
    from kmnrt.service.sessions import Job

log = logging.getLogger("kmnrt.service")


async def create_session(ctx: ServiceContext, frame_bytes: bytes, mask_png: bytes | None, mask_rle: MaskRle | None,
                         options: SessionOptions) -> dict:
    """A new session from its first frame and index mask. -> ``SessionCreated`` fields."""
    settings = ctx.settings
    if options.object_ids == []:  # the runtime's own message speaks of its Python API (None)
        raise bad_input("options: object_ids is empty: leave it out to track every object of the mask")
    frame = await run_in_threadpool(decode_frame, frame_bytes, settings.max_frame_pixels, "frame 0")
    mask = await _decode_mask(ctx, mask_png, mask_rle, frame.shape[:2], "mask of frame 0")
    session = ctx.registry.reserve(frame.shape[:2], options.mask_format or settings.mask_format,
                                   options.queue_policy or settings.queue_policy, options.ttl_s)
    object_ids = options.object_ids

    def start(tracker, session: Session):
        state = tracker.new_state()
        result = tracker.add_objects(state, frame, mask, object_ids, keep_probs=False)
        session.state = state
        return FrameOutcome(result, 1, 0.0)

    try:
        outcome = await asyncio.wrap_future(ctx.worker.submit_call(session, start))
    except BaseException:
        ctx.registry.forget(session)
        raise
    ctx.metrics.frames.labels("ok").inc()
    log.info("session created", extra={"event": "session_created", "session": session.id,
                                       "objects": outcome.result.object_ids, "frame_size": list(frame.shape[:2])})
    result = await _frame_result(session, 0, outcome, cached=False)
    return {"session_id": session.id, "expires_at": session.expires_at, "ttl_s": session.ttl_s,
            "mask_format": session.mask_format, "queue_policy": session.queue_policy, "result": result}


@dataclass(frozen=True)
class NewObjects:
    """The mask of an ``add_objects`` request, as sent: exactly one of the two must be given."""

    png: bytes | None = None
    rle: MaskRle | None = None


async def run_frame(ctx: ServiceContext, session_id: str, index: int, frame_bytes: bytes,
                    new_objects: NewObjects | None = None) -> dict:
    """Frame ``index`` of a session (with ``new_objects``: the mask of objects that first appear in it).
    -> ``FrameResult``."""
    session, future, cached = await queue_frame(ctx, session_id, index, frame_bytes, new_objects)
    return await frame_answer(ctx, session, index, future, cached)


async def queue_frame(ctx: ServiceContext, session_id: str, index: int, frame_bytes: bytes,
                      new_objects: NewObjects | None = None) -> tuple[Session, Future, bool]:
    """Decode and check a frame, then queue it (its index is checked in the order of these calls' ends).
    -> (session, future of the outcome, whether it repeats an earlier index). A frame refused here (bad image or
    mask, wrong size, index or queue) counts as ``rejected``."""
    session = ctx.registry.get(session_id)  # an unknown or closed session is no frame of one
    with rejections_counted(ctx):
        return session, *await _checked_and_queued(ctx, session, index, frame_bytes, new_objects)


@contextmanager
def rejections_counted(ctx: ServiceContext) -> Iterator[None]:
    """A frame of a session refused in this block (its image or mask, their encoding, size, index or a full queue)
    counts as ``rejected``; a session that is gone or a server that cannot serve is no fault of the frame."""
    try:
        yield
    except (ServiceError, UserInputError) as exc:
        if not (isinstance(exc, ServiceError) and exc.status in (410, 503)):
            ctx.metrics.frames.labels("rejected").inc()
        raise


async def _checked_and_queued(ctx: ServiceContext, session: Session, index: int, frame_bytes: bytes,
                              new_objects: NewObjects | None) -> tuple[Future, bool]:
    where = f"frame {index}"
    frame = await run_in_threadpool(decode_frame, frame_bytes, ctx.settings.max_frame_pixels, where)
    if frame.shape[:2] != session.frame_size:
        h, w = session.frame_size
        raise bad_input(f"{where} is {frame.shape[1]}x{frame.shape[0]}, but this session's frames are {w}x{h} "
                        f"(width x height)", "wrong_frame_size")
    if new_objects is None:
        return ctx.worker.submit_frame(session, index, frame)
    mask = await _decode_mask(ctx, new_objects.png, new_objects.rle, session.frame_size, f"mask of {where}")

    def call(tracker, session: Session):
        return tracker.add_objects(session.state, frame, mask, keep_probs=False)

    # the digest tells a retry of this request (the cached answer) from other objects at an index already sent
    digest = await run_in_threadpool(lambda: hashlib.sha256(mask.tobytes()).hexdigest())  # MBs: not on the loop
    return ctx.worker.submit_frame(session, index, frame, call, digest)


async def frame_answer(ctx: ServiceContext, session: Session, index: int, future: Future, cached: bool) -> dict:
    """Wait for a queued frame and shape its ``FrameResult`` (``dropped`` if the latest policy dropped it)."""
    outcome = await asyncio.wrap_future(future)
    session.last_active_at = ctx.registry.clock()  # the idle clock starts when the answer leaves
    if outcome is DROPPED:
        return {"session_id": session.id, "frame_index": index, "object_ids": [], "mask": None, "dropped": True}
    ctx.metrics.frames.labels("cached" if cached else "ok").inc()
    return await _frame_result(session, index, outcome, cached)


async def remove_object(ctx: ServiceContext, session_id: str, object_id: int) -> dict:
    session = ctx.registry.get(session_id)

    def remove(tracker, session: Session):
        if object_id not in session.state.object_ids:
            raise ServiceError(404, "object_not_found", f"object {object_id} is not tracked in session "
                               f"{session.id} (tracked: {session.state.object_ids})")
        if session.state.object_ids == [object_id]:  # the runtime's own message speaks of its Python API
            raise bad_input(f"object {object_id} is the last object of session {session.id}; to stop tracking it, "
                            f"delete the session (DELETE /v1/sessions/{session.id})")
        tracker.remove_object(session.state, object_id)

    await asyncio.wrap_future(ctx.worker.submit_call(session, remove))
    return session_info(session)


def close_session(ctx: ServiceContext, session_id: str, reason: str = CloseReason.CLIENT) -> None:
    session = ctx.registry.get(session_id)
    record_close(ctx.metrics, session_id, reason, ctx.registry.close(session, reason),
                 ServiceError(410, f"session_{reason}", f"session {session_id} was closed before this frame ran"))


def record_close(metrics: ServiceMetrics, session_id: str, reason: str, waiting: list[Job],
                 error: ServiceError) -> None:
    """What every close does after the registry dropped the session, whatever closed it (client, expiry, error,
    shutdown): its waiting frames are answered with ``error``, and the close is counted and logged."""
    fail_jobs(waiting, error)
    metrics.sessions_closed.labels(reason).inc()
    log.info("session closed", extra={"event": "session_closed", "session": session_id, "reason": reason})


async def _decode_mask(ctx: ServiceContext, mask_png: bytes | None, mask_rle: MaskRle | None,
                       frame_size: tuple[int, int], where: str) -> np.ndarray:
    if (mask_png is None) == (mask_rle is None):
        raise bad_input(f"{where}: give exactly one of a PNG mask or an RLE mask", "invalid_mask")
    if mask_rle is not None:
        if tuple(mask_rle.size) != tuple(frame_size):
            raise bad_input(f"{where}: RLE size {list(mask_rle.size)} differs from the frame's [height, width] "
                            f"{list(frame_size)}", "invalid_mask")
        objects = [o.model_dump() for o in mask_rle.objects]
        return await run_in_threadpool(rle_objects_to_labels, objects, tuple(frame_size), where)
    mask = await run_in_threadpool(decode_mask_png, mask_png, ctx.settings.max_frame_pixels, where)
    if mask.shape != tuple(frame_size):
        raise bad_input(mask_size_mismatch(where, mask.shape, frame_size), "invalid_mask")
    return mask


async def _frame_result(session: Session, index: int, outcome: FrameOutcome, cached: bool) -> dict:
    result = outcome.result
    mask = await run_in_threadpool(encode_labels, result.mask, result.object_ids, session.mask_format)
    times = {stage: round(seconds * 1000, 3) for stage, seconds in result.times.items()}
    times["queue_wait"] = round(outcome.queue_wait_s * 1000, 3)
    return {"session_id": session.id, "frame_index": index, "object_ids": result.object_ids, "mask": mask,
            "cached": cached, "batch_size": outcome.batch_size, "times_ms": times}

