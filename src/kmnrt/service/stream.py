"""WebSocket ``/v1/stream``: one connection = one session.

The first message (``start``) creates the session; then each frame message (JSON ``frame``/``add_objects``, or a
binary message holding the image bytes, which takes the next index) gets one answer (``masks``, ``dropped`` or
``error``), in order; ``close`` or closing the socket deletes the session. With the ``block`` policy the server
reads the next message only after answering the previous one, so TCP pushes back on a fast sender; with
``latest`` it keeps reading and the worker drops stale frames.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from kmnrt.errors import UserInputError
from kmnrt.service import ops
from kmnrt.service.errors import ServiceError, bad_input, validation_problems
from kmnrt.service.masks import b64decode
from kmnrt.service.metrics import count_error
from kmnrt.service.schemas import CLIENT_MESSAGES, WsAddObjects, WsClose, WsFrame, WsStart
from kmnrt.service.sessions import CloseReason

if TYPE_CHECKING:
    from kmnrt.service.app import ServiceContext

stream_router = APIRouter()


def json_message_limit(body_limit: int) -> int:
    """The largest JSON message: base64 makes a frame 4/3 of its bytes, so a frame that fits a REST body (and a
    binary message) fits a JSON message too, with room for the fields around it."""
    return body_limit * 4 // 3 + 64 * 1024


def transport_message_limit(body_limit: int) -> int:
    """uvicorn's ``ws_max_size``: above the limits checked here, so that a message over them gets this protocol's
    413 ``body_too_large`` error, not a bare close; beyond it the connection is closed (1009, message too big)."""
    return 2 * json_message_limit(body_limit)


@stream_router.websocket("/v1/stream")
async def stream(ws: WebSocket) -> None:
    ctx: ServiceContext = ws.app.state.ctx
    await ws.accept()
    session_id: str | None = None
    outbox: asyncio.Queue = asyncio.Queue()
    sender: asyncio.Task | None = None
    try:
        try:
            start = await _receive(ws, ctx)
            if not isinstance(start, WsStart):
                raise bad_input("the first message must be a 'start' message that creates the session")
            created = await ops.create_session(ctx, b64decode(start.frame, "frame"), _optional_b64(start.mask),
                                               start.mask_rle, start.options)
        except (ServiceError, UserInputError) as exc:
            await _send_error(ws, exc, fatal=True)
            await ws.close(code=1008)
            return
        session_id = created["session_id"]
        await ws.send_json({"type": "started", "session": created})
        sender = asyncio.create_task(_send_answers(ws, outbox))
        block = created["queue_policy"] == "block"
        while not sender.done():
            try:
                message = await _receive(ws, ctx)
                if isinstance(message, WsClose):
                    break
                queued = await _queue(ctx, session_id, message)
            except (ServiceError, UserInputError) as exc:
                await outbox.put(exc)
                if _is_gone(exc):
                    break
                continue
            done = asyncio.get_running_loop().create_future()
            await outbox.put((queued, done))
            if block:
                await done  # answer sent: read the next message
        await outbox.put(None)
        await sender
    except WebSocketDisconnect:
        pass
    finally:
        if sender is not None and not sender.done():
            sender.cancel()
        if session_id is not None:
            # a stopping server closes every socket (code 1012) and with it the session, waiting for a frame or not
            reason = CloseReason.SHUTDOWN if ctx.stopping else CloseReason.CLIENT
            try:
                ops.close_session(ctx, session_id, reason)
            except ServiceError:
                pass  # already expired or evicted
        if ws.client_state.name == "CONNECTED":
            try:
                await ws.close()
            except RuntimeError:
                pass  # the peer went away first


async def _receive(ws: WebSocket, ctx: ServiceContext):
    """The next message: bytes (a binary frame) or a parsed client message."""
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    data = message.get("bytes")
    text = message.get("text")
    size = len(data if data is not None else (text or "").encode())
    limit = ctx.settings.max_body_bytes if data is not None else json_message_limit(ctx.settings.max_body_bytes)
    if size > limit:
        raise ServiceError(413, "body_too_large", f"a {'binary' if data is not None else 'JSON'} message of {size} "
                           f"bytes exceeds the server's limit of {limit} bytes")
    if data is not None:
        return data
    try:
        return CLIENT_MESSAGES.validate_json(text or "")
    except ValidationError as exc:
        raise ServiceError(422, "invalid_message", "the message does not match the protocol: "
                           f"{validation_problems(exc.errors())}") from None


async def _queue(ctx: ServiceContext, session_id: str, message):
    if isinstance(message, (bytes, bytearray)):
        index = ctx.registry.get(session_id).next_index
        return index, await ops.queue_frame(ctx, session_id, index, bytes(message))
    if isinstance(message, (WsFrame, WsAddObjects)):
        with ops.rejections_counted(ctx):  # base64 that does not decode is a refused frame too
            frame = b64decode(message.frame, "frame")
            new_objects = (ops.NewObjects(_optional_b64(message.mask), message.mask_rle)
                           if isinstance(message, WsAddObjects) else None)
        return message.frame_index, await ops.queue_frame(ctx, session_id, message.frame_index, frame, new_objects)
    raise bad_input("a session is already running on this connection: send frames, add_objects or close")


async def _send_answers(ws: WebSocket, outbox: asyncio.Queue) -> None:
    """Answers in the order messages arrived; stops on None or after a fatal error."""
    ctx: ServiceContext = ws.app.state.ctx
    while True:
        item = await outbox.get()
        if item is None:
            return
        if isinstance(item, Exception):
            await _send_error(ws, item, fatal=_is_gone(item))
            if _is_gone(item):
                await ws.close(code=1008)
                return
            continue
        (index, (session, future, cached)), done = item
        try:
            answer = await ops.frame_answer(ctx, session, index, future, cached)
            if answer.get("dropped"):
                await ws.send_json({"type": "dropped", "frame_index": index})
            else:
                await ws.send_json({"type": "masks", "result": answer})
        except (ServiceError, UserInputError) as exc:
            await _send_error(ws, exc, fatal=_is_gone(exc))
            if _is_gone(exc):
                await ws.close(code=1008)
                return
        finally:
            done.set_result(None)


def _is_gone(exc: Exception) -> bool:
    return isinstance(exc, ServiceError) and exc.status == 410


async def _send_error(ws: WebSocket, exc: Exception, fatal: bool) -> None:
    if isinstance(exc, ServiceError):
        code, message = exc.code, exc.message
    else:
        code, message = "invalid_input", str(exc)
    count_error(ws.app, code)
    await ws.send_json({"type": "error", "error": {"code": code, "message": message}, "fatal": fatal})


def _optional_b64(text: str | None) -> bytes | None:
    return None if text is None else b64decode(text, "mask")
