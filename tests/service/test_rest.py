"""REST in process (TestClient): the session lifecycle, answers equal to the runtime's, and every client fault
answered with a 4xx JSON error while the server keeps serving."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest

from kmnrt.client import ServiceClient, ServiceClientError, encode_frame, encode_mask_png
from kmnrt.service.masks import rle_encode


def _png(frame: np.ndarray) -> bytes:
    return encode_frame(frame)


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]
    return body["error"]


def _create(http, video, **options):
    return http.post("/v1/sessions", files={"frame": ("f.png", _png(video.frames[0])),
                                            "mask": ("m.png", encode_mask_png(video.mask))},
                     data={"options": json.dumps(options)})


def _frame(http, session_id, index, frame):
    return http.post(f"/v1/sessions/{session_id}/frames", files={"frame": ("f.png", _png(frame))},
                     data={"frame_index": str(index)})


@pytest.mark.parametrize("mask_format", ["png", "rle", "raw"])
def test_session_masks_equal_the_runtime(make_client, videos, reference, mask_format):
    http = make_client()
    client = ServiceClient(http=http)
    video = videos(11, 8)
    expected = reference(video)
    session = client.create_session(video.frames[0], video.mask, mask_format=mask_format)
    assert np.array_equal(session.first.labels, video.mask)
    for index in range(1, 8):
        answer = client.send_frame(session.session_id, index, video.frames[index])
        assert answer.frame_index == index and not answer.cached
        assert np.array_equal(answer.labels, expected[index]), f"frame {index}"
    info = client.get_session(session.session_id)
    assert info["frames_done"] == 8 and info["next_frame_index"] == 8
    assert info["object_ids"] == sorted(int(i) for i in np.unique(video.mask) if i)
    assert info["frame_size"] == list(video.mask.shape) and info["bank_bytes"] > 0
    client.delete_session(session.session_id)
    _error(http.get(f"/v1/sessions/{session.session_id}"), 410, "session_closed_by_client")


def test_repeated_index_is_cached_and_order_is_enforced(make_client, videos):
    http = make_client()
    video = videos(12, 6)
    session_id = _create(http, video).json()["session_id"]
    first = _frame(http, session_id, 1, video.frames[1]).json()
    again = _frame(http, session_id, 1, video.frames[1]).json()
    assert again["cached"] and again["mask"] == first["mask"]
    _error(_frame(http, session_id, 3, video.frames[3]), 409, "frame_out_of_order")
    assert _frame(http, session_id, 2, video.frames[2]).status_code == 200
    for index in range(3, 6):
        _frame(http, session_id, index, video.frames[index])
    _error(_frame(http, session_id, 1, video.frames[1]), 409, "frame_too_old")


def test_client_faults_answer_4xx_and_the_server_keeps_serving(make_client, videos, reference):
    http = make_client(max_body_mb=0.05, max_frame_pixels=20_000)
    video = videos(13, 4)
    session_id = _create(http, video).json()["session_id"]
    jpeg_head = _png(video.frames[1])[:40]
    _error(http.post(f"/v1/sessions/{session_id}/frames", files={"frame": ("f.jpg", b"\xff\xd8garbage")},
                     data={"frame_index": "1"}), 400, "corrupt_image")
    _error(http.post(f"/v1/sessions/{session_id}/frames", files={"frame": ("f.png", jpeg_head)},
                     data={"frame_index": "1"}), 400, "corrupt_image")
    _error(_frame(http, session_id, 1, video.frames[1][:50]), 400, "wrong_frame_size")
    _error(_frame(http, session_id, 1, np.zeros((150, 150, 3), np.uint8)), 413, "frame_too_large")
    _error(http.post(f"/v1/sessions/{session_id}/frames", files={"frame": ("f.png", b"x" * 60_000)},
                     data={"frame_index": "1"}), 413, "body_too_large")
    assert 'kmnrt_errors_total{code="body_too_large"} 1.0' in http.get("/metrics").text  # from Content-Length
    _error(http.post(f"/v1/sessions/{session_id}/frames", data={"frame_index": "1"}), 422, "invalid_request")
    _error(http.post(f"/v1/sessions/{session_id}/frames", files={"frame": ("f.png", _png(video.frames[1]))},
                     data={"frame_index": "zero"}), 422, "invalid_request")
    _error(_frame(http, "no-such-session", 1, video.frames[1]), 404, "session_not_found")
    _error(http.get("/v1/nothing-here"), 404, "not_found")
    # every frame of the session refused above counts (a body refused before it is read is no frame yet)
    assert 'kmnrt_frames_total{outcome="rejected"} 4.0' in http.get("/metrics").text
    # bad masks at creation: ids missing from the mask, no object at all, wrong size, RGB, malformed RLE
    _error(_create(http, video, object_ids=[99]), 400, "invalid_input")
    assert _error(_create(http, video, object_ids=[]), 400, "invalid_input")["message"] == \
        "options: object_ids is empty: leave it out to track every object of the mask"
    as_file = http.post("/v1/sessions", files={"frame": ("f.png", _png(video.frames[0])), "mask": (
        "m.png", encode_mask_png(video.mask)), "options": ("opts.json", b"{}")})  # curl -F options=@opts.json
    assert "send options as a text field, not a file: curl -F 'options=<file.json'" in _error(
        as_file, 422, "invalid_request")["message"]
    empty = type(video)(video.frames, np.zeros_like(video.mask))
    _error(_create(http, empty), 400, "invalid_input")
    small = type(video)(video.frames, video.mask[:30])
    assert "give a mask of the frame's size" in _error(_create(http, small), 400, "invalid_mask")["message"]
    turned = type(video)(video.frames, np.ascontiguousarray(video.mask.T))
    assert "turned a quarter" in _error(_create(http, turned), 400, "invalid_mask")["message"]
    _error(http.post("/v1/sessions", files={"frame": ("f.png", _png(video.frames[0])),
                                            "mask": ("m.png", _png(video.frames[0]))}), 400, "invalid_mask")
    _error(http.post("/v1/sessions", files={"frame": ("f.png", _png(video.frames[0]))},
                     data={"mask_rle": json.dumps({"size": [60, 100], "objects": [{"id": 1, "counts": "0"}]})}),
           400, "invalid_mask")
    assert _error(_create(http, video, mask_format="gif"), 422, "invalid_request")["message"].startswith(
        "options: mask_format: ")
    broken = http.post("/v1/sessions", files={"frame": ("f.png", _png(video.frames[0])),
                                              "mask": ("m.png", encode_mask_png(video.mask))}, data={"options": "{"})
    assert _error(broken, 422, "invalid_request")["message"].startswith("options: Invalid JSON")
    # after all that, the session and the server still work, and the answers are the single-session ones
    expected = reference(video)
    for index in range(1, 4):
        answer = _frame(http, session_id, index, video.frames[index])
        assert answer.status_code == 200
    client = ServiceClient(http=http)
    assert np.array_equal(client.send_frame(session_id, 3, video.frames[3]).labels, expected[3])
    assert http.get("/v2/health/ready").status_code == 200


def test_rle_mask_input_and_objects_added_and_removed(make_client, videos, tracker):
    http = make_client(mask_format="rle")
    video = videos(14, 5)
    ids = [int(i) for i in np.unique(video.mask) if i]
    rle = {"size": list(video.mask.shape), "objects": [{"id": i, "counts": rle_encode(video.mask == i)}
                                                       for i in ids]}
    created = http.post("/v1/sessions", files={"frame": ("f.png", _png(video.frames[0]))},
                        data={"mask_rle": json.dumps(rle)})
    assert created.status_code == 201, created.text
    session_id = created.json()["session_id"]
    assert [o["id"] for o in created.json()["result"]["mask"]["objects"]] == ids
    new_mask = np.zeros_like(video.mask)
    new_mask[40:55, 70:95] = 9
    client = ServiceClient(http=http)
    unmasked = http.post(f"/v1/sessions/{session_id}/objects", files={"frame": ("f.png", _png(video.frames[1]))},
                         data={"frame_index": "1"})  # no mask: refused, not run as a plain frame
    assert "give exactly one of a PNG mask or an RLE mask" in _error(unmasked, 400, "invalid_mask")["message"]
    crowded = new_mask.copy()
    for k in range(6):  # more objects than the bundle holds: the runtime refuses the frame ...
        crowded[k * 2, :3] = 20 + k
    refusal = _error(http.post(
        f"/v1/sessions/{session_id}/objects", files={"frame": ("f.png", _png(video.frames[1])),
                                                     "mask": ("m.png", encode_mask_png(crowded))},
        data={"frame_index": "1"}), 400, "invalid_input")["message"]  # ... and frame 1 can be sent again
    assert "exceed the maximum" in refusal and "/" not in refusal  # the server's bundle path is not the client's
    added = client.add_objects(session_id, 1, video.frames[1], new_mask)
    assert added.object_ids == ids + [9]
    retried = client.add_objects(session_id, 1, video.frames[1], new_mask)  # a retry: the same answer
    assert retried.cached and np.array_equal(retried.labels, added.labels)
    other = new_mask.copy()
    other[:5, :5] = 11  # other objects at an index already sent would be ignored by the cached answer: refused
    with pytest.raises(ServiceClientError, match="frame_index 1 was already sent with other new objects; add the "
                       "objects with the next frame, index 2") as raised:
        client.add_objects(session_id, 1, video.frames[1], other)
    assert raised.value.code == "frame_already_sent" and raised.value.status == 409
    _error(_frame(http, session_id, 1, video.frames[1]), 409, "frame_already_sent")  # a plain frame there too
    # the same through the runtime directly
    state = tracker.start(video.frames[0], video.mask)
    assert np.array_equal(added.labels, tracker.add_objects(state, video.frames[1], new_mask).mask)
    info = client.remove_object(session_id, 9)
    assert info["object_ids"] == ids
    tracker.remove_object(state, 9)
    assert np.array_equal(client.send_frame(session_id, 2, video.frames[2]).labels,
                          tracker.step(state, video.frames[2]).mask)
    with pytest.raises(ServiceClientError, match="frame_index 2 was already sent as a plain frame; add the objects "
                       "with the next frame, index 3"):
        client.add_objects(session_id, 2, video.frames[2], new_mask)  # noticed late: the next frame carries them
    _error(http.delete(f"/v1/sessions/{session_id}/objects/42"), 404, "object_not_found")
    for object_id in ids[:-1]:
        client.remove_object(session_id, object_id)
    last = _error(http.delete(f"/v1/sessions/{session_id}/objects/{ids[-1]}"), 400, "invalid_input")
    assert last["message"].endswith(f"delete the session (DELETE /v1/sessions/{session_id})")


def test_ttl_expiry_answers_410(make_client, videos):
    http = make_client(ttl_s=0.3, reap_interval_s=0.05)
    video = videos(15, 3)
    session_id = _create(http, video).json()["session_id"]
    assert _frame(http, session_id, 1, video.frames[1]).status_code == 200
    deadline = time.monotonic() + 10
    while http.get(f"/v1/sessions/{session_id}").status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.4)  # a GET touches the session: sleep past the TTL between looks
    _error(_frame(http, session_id, 2, video.frames[2]), 410, "session_expired")
    metrics = http.get("/metrics").text
    assert 'kmnrt_sessions_closed_total{reason="expired"} 1.0' in metrics


def test_full_budget_answers_503_with_retry_after(make_client, videos, tracker):
    # half a session spare, on top of the device worker's batch buffers (max_batch 8 by default)
    http = make_client(memory_budget_mb=(2.5 * tracker.session_bytes() + tracker.batch_bytes(8)) / 2**20, ttl_s=60)
    video = videos(16, 2)
    assert http.get("/v2/health/ready").json()["max_sessions"] == 2
    first = _create(http, video).json()["session_id"]
    assert _create(http, video).status_code == 201
    response = _create(http, video)
    _error(response, 503, "capacity_full")
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    http.delete(f"/v1/sessions/{first}")
    assert _create(http, video).status_code == 201  # a closed session frees its slot


def test_token_is_required_when_set(make_client, videos):
    http = make_client(token="s3cret")
    video = videos(17, 2)
    response = _create(http, video)
    _error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == "Bearer"
    http.headers["Authorization"] = "Bearer wrong"
    _error(_create(http, video), 401, "unauthorized")
    assert http.get("/v2/health/live").status_code == 200  # probes stay open
    assert 'kmnrt_errors_total{code="unauthorized"} 2.0' in http.get("/metrics").text  # refused before any route
    client = ServiceClient(token="s3cret", http=http)
    assert client.create_session(video.frames[0], video.mask).session_id
    with pytest.raises(ServiceClientError) as raised:
        client.send_frame("unknown", 1, video.frames[1])
    assert raised.value.status == 404


def test_health_metrics_and_openapi(make_client, videos):
    http = make_client()
    assert http.get("/v2/health/live").json() == {"status": "live", "backend": None, "max_sessions": None,
                                                   "active_sessions": None}
    ready = http.get("/v2/health/ready").json()
    assert ready["status"] == "ready" and ready["backend"] == "onnxruntime" and ready["max_sessions"] > 0
    video = videos(18, 3)
    session_id = _create(http, video).json()["session_id"]
    for index in (1, 2):
        _frame(http, session_id, index, video.frames[index])
    _frame(http, session_id, 2, video.frames[2])
    metrics = http.get("/metrics").text
    for line in ('kmnrt_frames_total{outcome="ok"} 3.0', 'kmnrt_frames_total{outcome="cached"} 1.0',
                 "kmnrt_active_sessions 1.0", 'kmnrt_frame_stage_seconds_count{stage="read"} 2.0',
                 "kmnrt_batch_size_count 2.0", "kmnrt_queue_wait_seconds_count"):
        assert line in metrics, line
    assert session_id not in metrics
    labels = {name for line in metrics.splitlines() if "{" in line and not line.startswith("#")
              for name in re.findall(r'([a-z_]+)="', line)}
    assert labels <= {"stage", "outcome", "reason", "route", "code", "le"}, labels  # never a session id label
    paths = http.get("/openapi.json").json()["paths"]
    assert {"/v1/sessions", "/v1/sessions/{session_id}/frames", "/v1/sessions/{session_id}",
            "/v1/sessions/{session_id}/objects", "/v1/sessions/{session_id}/objects/{object_id}"} <= set(paths)


def test_latest_policy_accepts_gaps_but_not_going_back(make_client, videos, tracker):
    http = make_client()
    video = videos(19, 5)
    created = _create(http, video, queue_policy="latest").json()
    assert created["queue_policy"] == "latest"
    session_id = created["session_id"]
    assert _frame(http, session_id, 1, video.frames[1]).status_code == 200
    skipped = _frame(http, session_id, 4, video.frames[4])  # frames 2 and 3 never came (a camera skipped them)
    assert skipped.status_code == 200 and skipped.json()["frame_index"] == 4
    state = tracker.start(video.frames[0], video.mask)
    tracker.step(state, video.frames[1])
    expected = tracker.step(state, video.frames[4]).mask
    assert np.array_equal(ServiceClient(http=http).send_frame(session_id, 4, video.frames[4]).labels, expected)
    _error(_frame(http, session_id, 3, video.frames[3]), 409, "frame_too_old")
