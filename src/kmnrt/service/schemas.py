"""The wire schemas: REST bodies (also in the OpenAPI document) and the WebSocket messages (whose JSON Schema
``kmnrt serve --print-ws-schema`` prints and docs/service.md reproduces, since OpenAPI cannot describe them)."""

from __future__ import annotations

import json
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

MaskFormat = Literal["png", "rle", "raw"]
QueuePolicy = Literal["block", "latest"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SessionOptions(_Strict):
    """Options of a new session (all optional; the server's settings give the defaults)."""

    mask_format: MaskFormat | None = Field(None, description="format of the masks in answers")
    object_ids: list[Annotated[int, Field(ge=1, le=255)]] | None = Field(
        None, description="track only these ids of the first mask (default: every id in it)")
    ttl_s: float | None = Field(None, gt=0, description="idle seconds before the session expires (at most the "
                                "server's ttl_s)")
    queue_policy: QueuePolicy | None = Field(None, description="when the session's frame queue is full: 'block' "
                                             "answers 429, 'latest' drops the stale waiting frame")


class ObjectRle(_Strict):
    id: int = Field(ge=1, le=255, description="object id (label value)")
    counts: str = Field(description="COCO compressed RLE counts string, column-major")


class MaskRle(_Strict):
    """An index mask given as per-object COCO RLE."""

    size: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] = Field(description="[height, width]")
    objects: list[ObjectRle]


class MaskPayload(BaseModel):
    """A frame's index mask in the session's format: ``png``/``raw`` carry base64 ``data`` (palette PNG, or
    zlib-compressed row-major uint8), ``rle`` carries ``objects`` (one COCO RLE per tracked object)."""

    format: MaskFormat
    size: tuple[int, int] = Field(description="[height, width]")
    data: str | None = None
    objects: list[ObjectRle] | None = None


class FrameResult(BaseModel):
    session_id: str
    frame_index: int
    object_ids: list[int]
    mask: MaskPayload | None = Field(description="null only when the frame was dropped")
    dropped: bool = Field(False, description="true when the 'latest' policy dropped this frame for a newer one")
    cached: bool = Field(False, description="true when this answers a repeated frame_index")
    batch_size: int = Field(1, description="frames of different sessions that shared the query-encoder call")
    times_ms: dict[str, float] = Field(default_factory=dict, description="per-stage device time and queue wait")


class SessionCreated(BaseModel):
    session_id: str
    expires_at: float = Field(description="unix time the session expires if idle")
    ttl_s: float
    mask_format: MaskFormat
    queue_policy: QueuePolicy
    result: FrameResult = Field(description="frame 0: the given mask, as the tracker holds it")


class SessionInfo(BaseModel):
    session_id: str
    created_at: float
    last_active_at: float
    expires_at: float
    ttl_s: float
    next_frame_index: int = Field(description="the frame_index the next frame must carry (block policy)")
    frames_done: int
    frames_dropped: int
    waiting_frames: int
    object_ids: list[int]
    frame_size: tuple[int, int] = Field(description="[height, width] of this session's frames")
    memory_frames: int = Field(description="frames in the memory bank")
    bank_bytes: int
    mask_format: MaskFormat
    queue_policy: QueuePolicy


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable reason, e.g. session_expired, frame_out_of_order")
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["live", "ready", "not_ready", "failed", "stopping"]
    backend: str | None = None
    max_sessions: int | None = None
    active_sessions: int | None = None


# --- WebSocket /v1/stream -----------------------------------------------------------------------------------------

class WsStart(_Strict):
    """First client message: creates the session. ``frame``: base64 JPEG/PNG; the mask as base64 PNG
    (``mask``) or per-object RLE (``mask_rle``)."""

    type: Literal["start"]
    frame: str
    mask: str | None = None
    mask_rle: MaskRle | None = None
    options: SessionOptions = Field(default_factory=SessionOptions)


class WsFrame(_Strict):
    """A frame of the session (base64 JPEG/PNG). A binary WebSocket message is also a frame: its bytes are the
    image and its index is the next one."""

    type: Literal["frame"]
    frame_index: int = Field(ge=1)
    frame: str


class WsAddObjects(_Strict):
    """The next frame, with new objects that first appear in it (``mask`` base64 PNG or ``mask_rle``)."""

    type: Literal["add_objects"]
    frame_index: int = Field(ge=1)
    frame: str
    mask: str | None = None
    mask_rle: MaskRle | None = None


class WsClose(_Strict):
    """Ends the session (closing the socket does the same)."""

    type: Literal["close"]


WsClientMessage = Annotated[Union[WsStart, WsFrame, WsAddObjects, WsClose], Field(discriminator="type")]


class WsStarted(BaseModel):
    type: Literal["started"] = "started"
    session: SessionCreated


class WsMasks(BaseModel):
    type: Literal["masks"] = "masks"
    result: FrameResult


class WsDropped(BaseModel):
    """A frame the ``latest`` policy dropped because a newer one arrived before it ran."""

    type: Literal["dropped"] = "dropped"
    frame_index: int


class WsError(BaseModel):
    """A refused message; the session goes on unless ``fatal`` (then the server closes the socket)."""

    type: Literal["error"] = "error"
    error: ErrorDetail
    fatal: bool = False


WsServerMessage = Annotated[Union[WsStarted, WsMasks, WsDropped, WsError], Field(discriminator="type")]

CLIENT_MESSAGES = TypeAdapter(WsClientMessage)


def websocket_json_schema() -> str:
    """The JSON Schema of the WebSocket messages, both directions, as a pretty-printed document."""
    schema = {
        "client_to_server": TypeAdapter(WsClientMessage).json_schema(),
        "server_to_client": TypeAdapter(WsServerMessage).json_schema(),
    }
    return json.dumps(schema, indent=2)
