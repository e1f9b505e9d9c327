"""WebSocket /v1/stream in process: start, JSON and binary frames, add objects, errors that keep the session."""

from __future__ import annotations

import base64

import numpy as np
from starlette.websockets import WebSocketDisconnect

from kmnrt.client import encode_frame, encode_mask_png
from kmnrt.service.masks import decode_labels


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_stream_session_equals_the_runtime(make_client, videos, reference, tracker):
    http = make_client()
    video = videos(21, 7)
    expected = reference(video)
    with http.websocket_connect("/v1/stream") as ws:
        ws.send_json({"type": "start", "frame": _b64(encode_frame(video.frames[0])),
                      "mask": _b64(encode_mask_png(video.mask)), "options": {"mask_format": "raw"}})
        started = ws.receive_json()
        assert started["type"] == "started"
        session_id = started["session"]["session_id"]
        assert np.array_equal(decode_labels(started["session"]["result"]["mask"]), video.mask)
        for index in range(1, 4):  # JSON frames
            ws.send_json({"type": "frame", "frame_index": index, "frame": _b64(encode_frame(video.frames[index]))})
            answer = ws.receive_json()
            assert answer["type"] == "masks" and answer["result"]["frame_index"] == index
            assert np.array_equal(decode_labels(answer["result"]["mask"]), expected[index])
        ws.send_json({"type": "frame", "frame_index": 9, "frame": _b64(encode_frame(video.frames[4]))})
        error = ws.receive_json()
        assert error == {"type": "error", "fatal": False,
                         "error": {"code": "frame_out_of_order", "message": error["error"]["message"]}}
        ws.send_json({"type": "frame", "frame_index": 4, "frame": "%%%"})
        assert ws.receive_json()["error"]["code"] == "invalid_input"
        ws.send_text("{not json")
        error = ws.receive_json()["error"]
        assert error["code"] == "invalid_message"
        assert error["message"].startswith("the message does not match the protocol: Invalid JSON")
        metrics = http.get("/metrics").text
        assert 'kmnrt_errors_total{code="invalid_message"} 1.0' in metrics
        assert 'kmnrt_frames_total{outcome="rejected"} 2.0' in metrics  # out of order, bad base64; not the JSON
        for index in range(4, 7):  # binary frames take the next index
            ws.send_bytes(encode_frame(video.frames[index]))
            answer = ws.receive_json()
            assert answer["result"]["frame_index"] == index
            assert np.array_equal(decode_labels(answer["result"]["mask"]), expected[index])
        assert http.get(f"/v1/sessions/{session_id}").json()["frames_done"] == 7
        ws.send_json({"type": "close"})
        try:
            ws.receive_json()
        except WebSocketDisconnect:
            pass
    assert http.get(f"/v1/sessions/{session_id}").json()["error"]["code"] == "session_closed_by_client"


def test_stream_add_objects_and_disconnect_deletes(make_client, videos, tracker):
    http = make_client()
    video = videos(22, 3)
    new_mask = np.zeros_like(video.mask)
    new_mask[5:20, 5:25] = 8
    with http.websocket_connect("/v1/stream") as ws:
        ws.send_json({"type": "start", "frame": _b64(encode_frame(video.frames[0])),
                      "mask": _b64(encode_mask_png(video.mask))})
        session_id = ws.receive_json()["session"]["session_id"]
        ws.send_json({"type": "add_objects", "frame_index": 1, "frame": _b64(encode_frame(video.frames[1]))})
        error = ws.receive_json()  # no mask: not quietly a plain frame, and frame 1 is still to come
        assert error["error"]["code"] == "invalid_mask" and not error["fatal"]
        assert "give exactly one of a PNG mask or an RLE mask" in error["error"]["message"]
        ws.send_json({"type": "add_objects", "frame_index": 1, "frame": _b64(encode_frame(video.frames[1])),
                      "mask": _b64(encode_mask_png(new_mask))})
        answer = ws.receive_json()["result"]
        state = tracker.start(video.frames[0], video.mask)
        direct = tracker.add_objects(state, video.frames[1], new_mask)
        assert answer["object_ids"] == direct.object_ids and 8 in answer["object_ids"]
        assert np.array_equal(decode_labels(answer["mask"]), direct.mask)
    assert http.get(f"/v1/sessions/{session_id}").status_code == 410  # socket closed = session deleted


def test_stream_bad_start_is_a_fatal_error(make_client, videos):
    http = make_client()
    with http.websocket_connect("/v1/stream") as ws:
        ws.send_json({"type": "frame", "frame_index": 1, "frame": ""})
        message = ws.receive_json()
        assert message["fatal"] and message["error"]["code"] == "invalid_input"
    with http.websocket_connect("/v1/stream") as ws:
        ws.send_json({"type": "start", "frame": _b64(b"not an image"), "mask": _b64(b"")})
        assert ws.receive_json()["error"]["code"] == "corrupt_image"
    assert http.get("/v2/health/ready").status_code == 200


def test_stream_requires_token(make_client, videos):
    http = make_client(token="t0ken")
    try:
        with http.websocket_connect("/v1/stream") as ws:
            ws.receive_json()
        raise AssertionError("the handshake should have been refused")
    except WebSocketDisconnect as exc:
        assert exc.code == 1008
    assert 'kmnrt_errors_total{code="unauthorized"} 1.0' in http.get("/metrics").text  # counted as over REST
    with http.websocket_connect("/v1/stream", headers={"Authorization": "Bearer t0ken"}) as ws:
        ws.send_json({"type": "close"})


def test_latest_policy_drops_stale_frames_and_answers_the_rest_in_order(make_client, videos, tracker, reference):
    """A camera bursts frames faster than the device takes them. Deterministic, no sleeps: with ``max_batch`` 2
    and a long ``max_delay_ms`` the worker holds session A's waiting frame until a second session's frame comes to
    share the batch (the service's own batching rule), so A's burst piles up behind it and the ``latest`` policy
    drops each stale frame as the next arrives; B's frame then releases the batch."""
    http = make_client(max_batch=2, max_delay_ms=60_000, queue_depth=1)
    clip_a, clip_b = videos(23, 7), videos(24, 3)
    with http.websocket_connect("/v1/stream") as a, http.websocket_connect("/v1/stream") as b:
        a.send_json({"type": "start", "frame": _b64(encode_frame(clip_a.frames[0])),
                     "mask": _b64(encode_mask_png(clip_a.mask)),
                     "options": {"queue_policy": "latest", "mask_format": "raw"}})
        started_a = a.receive_json()["session"]
        assert started_a["queue_policy"] == "latest"
        b.send_json({"type": "start", "frame": _b64(encode_frame(clip_b.frames[0])),
                     "mask": _b64(encode_mask_png(clip_b.mask)), "options": {"mask_format": "raw"}})
        started_b = b.receive_json()["session"]
        id_a, id_b = started_a["session_id"], started_b["session_id"]

        for index in range(1, 6):  # the burst: frames 1..5 while nothing of A can run
            a.send_json({"type": "frame", "frame_index": index, "frame": _b64(encode_frame(clip_a.frames[index]))})
        # each newer frame pushed the waiting one out: answered `dropped`, in order, before anything ran
        assert [a.receive_json() for _ in range(4)] == [{"type": "dropped", "frame_index": i} for i in range(1, 5)]
        info = http.get(f"/v1/sessions/{id_a}").json()
        assert (info["frames_done"], info["frames_dropped"], info["waiting_frames"]) == (1, 4, 1)
        assert 'kmnrt_frames_total{outcome="dropped"} 4.0' in http.get("/metrics").text

        answers_a, answers_b = [], []
        for index_a, index_b in ((5, 1), (6, 2)):  # B's frame fills the batch: A's newest frame runs with it
            if index_a == 6:
                a.send_bytes(encode_frame(clip_a.frames[6]))  # binary: takes the next index, 6
            b.send_json({"type": "frame", "frame_index": index_b, "frame": _b64(encode_frame(clip_b.frames[index_b]))})
            answers_a.append(a.receive_json())
            answers_b.append(b.receive_json())
        a.send_json({"type": "close"})
        b.send_json({"type": "close"})

    # the frames that ran were answered in order, to their own socket, with their own session's masks
    state = tracker.start(clip_a.frames[0], clip_a.mask)
    expected_a = [tracker.step(state, clip_a.frames[i], keep_probs=False).mask for i in (5, 6)]  # 1-4 never ran
    expected_b = reference(clip_b)
    for answer, index, mask in zip(answers_a, (5, 6), expected_a):
        result = answer["result"]
        assert answer["type"] == "masks" and (result["session_id"], result["frame_index"]) == (id_a, index)
        assert result["batch_size"] == 2 and np.array_equal(decode_labels(result["mask"]), mask)
    for answer, index in zip(answers_b, (1, 2)):
        result = answer["result"]
        assert answer["type"] == "masks" and (result["session_id"], result["frame_index"]) == (id_b, index)
        assert result["batch_size"] == 2 and np.array_equal(decode_labels(result["mask"]), expected_b[index])
    metrics = http.get("/metrics").text
    for line in ('kmnrt_frames_total{outcome="dropped"} 4.0', 'kmnrt_frames_total{outcome="ok"} 6.0',
                 "kmnrt_batch_size_count 2.0", "kmnrt_batch_size_sum 4.0"):
        assert line in metrics, line
