"""REST routes ``/v1/sessions...``: multipart uploads in (frames as JPEG/PNG files), JSON out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from pydantic import BaseModel, ValidationError

from kmnrt.service import ops
from kmnrt.service.errors import ServiceError, validation_problems
from kmnrt.service.schemas import ErrorBody, FrameResult, MaskRle, SessionCreated, SessionInfo, SessionOptions
from kmnrt.service.sessions import session_info

router = APIRouter(prefix="/v1/sessions", tags=["sessions"], responses={
    404: {"model": ErrorBody, "description": "unknown session"},
    410: {"model": ErrorBody, "description": "session expired, evicted or closed (the code says which)"},
})

FrameFile = Annotated[UploadFile, File(description="the frame, a JPEG or PNG file")]
MaskFile = Annotated[UploadFile | None, File(description="index mask PNG (pixel values = object ids)")]
MaskRleField = Annotated[str | None, Form(description="index mask as JSON MaskRle (instead of a PNG)")]
FrameIndex = Annotated[int, Form(ge=1, description="the frame's index in the video (frame 0 created the session)")]


@router.post("", status_code=201, response_model=SessionCreated,
             responses={503: {"model": ErrorBody, "description": "no capacity; see Retry-After"}})
async def create_session(request: Request, frame: FrameFile, mask: MaskFile = None, mask_rle: MaskRleField = None,
                         options: Annotated[str | None, Form(description="JSON SessionOptions")] = None) -> dict:
    """Start a session: the first frame and its index mask (a PNG or per-object RLE) -> frame 0's masks."""
    parsed = _parse_json(SessionOptions, options, "options") if options else SessionOptions()
    with request.app.state.ctx.metrics.request_seconds.labels("create_session").time():
        return await ops.create_session(request.app.state.ctx, await frame.read(), await _read(mask),
                                        _parse_json(MaskRle, mask_rle, "mask_rle"), parsed)


@router.post("/{session_id}/frames", response_model=FrameResult,
             responses={409: {"model": ErrorBody, "description": "frame index out of order or too old"},
                        429: {"model": ErrorBody, "description": "the session's queue is full (block policy)"}})
async def post_frame(request: Request, session_id: str, frame: FrameFile, frame_index: FrameIndex) -> dict:
    """The next frame -> its masks. A repeated ``frame_index`` returns the earlier answer (``cached: true``)."""
    with request.app.state.ctx.metrics.request_seconds.labels("frame").time():
        return await ops.run_frame(request.app.state.ctx, session_id, frame_index, await frame.read())


@router.get("/{session_id}", response_model=SessionInfo)
async def get_session(request: Request, session_id: str) -> dict:
    return session_info(request.app.state.ctx.registry.get(session_id))


@router.post("/{session_id}/objects", response_model=FrameResult)
async def add_objects(request: Request, session_id: str, frame: FrameFile, frame_index: FrameIndex,
                      mask: MaskFile = None, mask_rle: MaskRleField = None) -> dict:
    """The next frame with new objects that first appear in it (ids already tracked are ignored)."""
    with request.app.state.ctx.metrics.request_seconds.labels("add_objects").time():
        with ops.rejections_counted(request.app.state.ctx):  # a malformed mask is a refused frame too
            new_objects = ops.NewObjects(await _read(mask), _parse_json(MaskRle, mask_rle, "mask_rle"))
        return await ops.run_frame(request.app.state.ctx, session_id, frame_index, await frame.read(), new_objects)


@router.delete("/{session_id}/objects/{object_id}", response_model=SessionInfo)
async def remove_object(request: Request, session_id: str, object_id: int) -> dict:
    return await ops.remove_object(request.app.state.ctx, session_id, object_id)


@router.delete("/{session_id}", status_code=204, response_class=Response)
async def delete_session(request: Request, session_id: str) -> Response:
    """Close the session now: its memory is freed and its id answers 410 ``session_closed_by_client``."""
    ops.close_session(request.app.state.ctx, session_id)
    return Response(status_code=204)


async def _read(upload: UploadFile | None) -> bytes | None:
    return None if upload is None else await upload.read()


def _parse_json(model: type[BaseModel], text: str | None, field: str):
    if text is None:
        return None
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        raise ServiceError(422, "invalid_request", f"{field}: {validation_problems(exc.errors())}") from None
