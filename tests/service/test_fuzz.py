"""Property fuzz (hypothesis) of the REST and WebSocket inputs: whatever arrives, the answer is never a 5xx, every
error is the JSON error shape, and the server keeps serving."""

from __future__ import annotations

import base64
import io
import json
from urllib.parse import quote

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from kmnrt.client import encode_frame, encode_mask_png

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])


def _image(width: int, height: int, mode: str, fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 4, shape, dtype=np.uint8) * (1 if mode != "RGB" else 60), mode).save(
        buffer, format=fmt)
    return buffer.getvalue()


images = st.one_of(
    st.binary(max_size=300),
    st.builds(_image, st.just(100), st.just(60), st.sampled_from(["RGB", "L"]), st.sampled_from(["PNG", "JPEG"]),
              st.integers(0, 5)),  # the session's frame size: these get past decoding
    st.builds(_image, st.integers(1, 120), st.integers(1, 70), st.sampled_from(["RGB", "L"]),
              st.sampled_from(["PNG", "JPEG"]), st.integers(0, 5)),
    st.builds(lambda data, cut: data[:cut], st.builds(_image, st.just(100), st.just(60), st.just("RGB"),
                                                      st.just("PNG"), st.just(0)), st.integers(0, 400)),
)
json_texts = st.one_of(st.text(max_size=60), st.builds(json.dumps, st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["mask_format", "object_ids", "ttl_s", "queue_policy", "size", "objects", "id", "counts",
                         "x"]), children, max_size=4), max_leaves=10)))


def _check(response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str)


@pytest.fixture
def fuzz_app(make_client, videos):
    http = make_client(max_body_mb=0.2, max_frame_pixels=50_000, memory_budget_mb=10_000, ttl_s=600)
    video = videos(70, 2)
    created = http.post("/v1/sessions", files={"frame": ("f.png", encode_frame(video.frames[0])),
                                               "mask": ("m.png", encode_mask_png(video.mask))})
    return http, created.json()["session_id"], video


@FUZZ
@given(frame=images, mask=st.one_of(st.none(), images), mask_rle=st.one_of(st.none(), json_texts),
       options=st.one_of(st.none(), json_texts))
def test_fuzz_create(fuzz_app, frame, mask, mask_rle, options):
    http, _, _ = fuzz_app
    files = {"frame": ("f", frame)}
    if mask is not None:
        files["mask"] = ("m", mask)
    data = {k: v for k, v in {"mask_rle": mask_rle, "options": options}.items() if v is not None}
    response = http.post("/v1/sessions", files=files, data=data)
    _check(response)
    if response.status_code == 201:
        assert http.delete(f"/v1/sessions/{response.json()['session_id']}").status_code == 204


@FUZZ
@given(frame=images, index=st.one_of(st.integers(-3, 5), st.text(max_size=5)), with_mask=st.booleans(),
       mask=images, object_id=st.integers(-2, 300))
def test_fuzz_frames_and_objects(fuzz_app, frame, index, with_mask, mask, object_id):
    http, session_id, video = fuzz_app
    route = "objects" if with_mask else "frames"
    files = {"frame": ("f", frame), **({"mask": ("m", mask)} if with_mask else {})}
    _check(http.post(f"/v1/sessions/{session_id}/{route}", files=files, data={"frame_index": str(index)}))
    _check(http.delete(f"/v1/sessions/{session_id}/objects/{object_id}"))
    _check(http.get(f"/v1/sessions/{session_id}"))


@FUZZ
@given(path_id=st.text(min_size=1, max_size=30).map(lambda text: quote(text, safe="")),
       method=st.sampled_from(["GET", "DELETE", "POST", "PUT"]), body=st.binary(max_size=200))
def test_fuzz_unknown_sessions_and_methods(fuzz_app, path_id, method, body):
    http, _, _ = fuzz_app
    _check(http.request(method, f"/v1/sessions/{path_id}", content=body))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(st.one_of(
    json_texts,
    st.builds(lambda frame, index: json.dumps({"type": "frame", "frame_index": index,
                                               "frame": base64.b64encode(frame).decode()}),
              images, st.integers(-1, 4)),
    st.binary(max_size=100)), min_size=1, max_size=4))
def test_fuzz_stream(fuzz_app, messages):
    http, _, video = fuzz_app
    with http.websocket_connect("/v1/stream") as ws:
        ws.send_json({"type": "start", "frame": base64.b64encode(encode_frame(video.frames[0])).decode(),
                      "mask": base64.b64encode(encode_mask_png(video.mask)).decode()})
        assert ws.receive_json()["type"] == "started"
        for message in messages:
            if isinstance(message, bytes):
                ws.send_bytes(message)
            else:
                ws.send_text(message)
            answer = ws.receive_json()
            assert answer["type"] in ("masks", "error", "dropped")
            if answer["type"] == "error":
                assert not answer["error"]["code"].startswith("internal")
                if answer["fatal"]:
                    break
    assert http.get("/v2/health/ready").status_code == 200
