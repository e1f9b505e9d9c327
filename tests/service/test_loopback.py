"""A real uvicorn server on 127.0.0.1: many sessions at once with no lost, duplicated or cross-wired frames, bad
requests in the middle, and `kmnrt client-run` writing the same PNGs as the runtime."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from kmnrt.client import ServiceClient, ServiceClientError
from kmnrt.service.errors import ServiceError

SESSIONS = 16
FRAMES = 50  # 16 x 50 = 800 frames at once: about 15 s on 2 cores


@pytest.fixture(scope="module")
def server(tracker, loopback):
    from kmnrt.service.app import create_app
    from kmnrt.service.settings import ServiceSettings

    app = create_app(ServiceSettings(max_batch=8, max_delay_ms=2, warmup=False, max_sessions=SESSIONS + 2),
                     tracker=tracker)
    with loopback(app) as url:
        yield url


def test_concurrent_sessions_are_neither_lost_nor_cross_wired(server, videos, reference):
    clips = [videos(100 + s, FRAMES) for s in range(SESSIONS)]
    expected = [reference(clip) for clip in clips]
    start = threading.Barrier(SESSIONS)

    def run(number: int) -> list[np.ndarray]:
        clip = clips[number]
        with ServiceClient(server, timeout_s=120) as client:
            start.wait(60)
            session = client.create_session(clip.frames[0], clip.mask)
            answers = [session.first]
            for index in range(1, FRAMES):
                answers.append(client.send_frame(session.session_id, index, clip.frames[index]))
            info = client.get_session(session.session_id)
            client.delete_session(session.session_id)
        assert [a.frame_index for a in answers] == list(range(FRAMES))
        assert info["frames_done"] == FRAMES and info["frames_dropped"] == 0
        return [a.labels for a in answers], max(a.batch_size for a in answers)

    with ThreadPoolExecutor(SESSIONS) as pool:
        results = list(pool.map(run, range(SESSIONS)))
    for number, (masks, _) in enumerate(results):
        for index in range(FRAMES):
            assert np.array_equal(masks[index], expected[number][index]), f"session {number}, frame {index}"
    assert max(batch for _, batch in results) > 1  # frames of different sessions did share encoder calls
    metrics = httpx.get(f"{server}/metrics").text
    assert f'kmnrt_frames_total{{outcome="ok"}} {float(SESSIONS * FRAMES)}' in metrics
    assert "kmnrt_active_sessions 0.0" in metrics


def test_bad_requests_do_not_disturb_the_server(server, videos, reference):
    clip = videos(200, 4)
    with ServiceClient(server) as client:
        session = client.create_session(clip.frames[0], clip.mask)
        bad = [
            lambda: client.send_frame(session.session_id, 1, b"\xff\xd8\xff\xe0broken jpeg"),
            lambda: client.send_frame(session.session_id, 5, clip.frames[1]),
            lambda: client.send_frame(session.session_id, 1, clip.frames[1][:, :40]),
            lambda: client.send_frame("missing", 1, clip.frames[1]),
            lambda: client.create_session(clip.frames[0], np.zeros((3, 3), np.uint8)),
        ]
        for call in bad:
            with pytest.raises(ServiceClientError) as raised:
                call()
            assert 400 <= raised.value.status < 500
        response = httpx.post(f"{server}/v1/sessions", content=b"x" * 100, headers={"Content-Type": "text/plain"})
        assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"
        masks = [client.send_frame(session.session_id, i, clip.frames[i]).labels for i in range(1, 4)]
        expected = reference(clip)
        assert all(np.array_equal(m, e) for m, e in zip(masks, expected[1:]))
        assert client.ready()


def test_client_run_writes_what_kmnrt_run_writes(server, videos, tiny_bundle, tmp_path):
    """Same bundle, same backend, JPEG frames: `kmnrt client-run` and `kmnrt run` write equal PNGs."""
    from PIL import Image

    from kmnrt.cli import main
    from kmnrt.data import read_label_png, write_label_png

    clip = videos(300, 6)
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for index, frame in enumerate(clip.frames):
        Image.fromarray(frame).save(frames_dir / f"{index:05d}.jpg", quality=90)
    write_label_png(tmp_path / "mask.png", clip.mask)
    common = ["--input", str(frames_dir), "--mask", str(tmp_path / "mask.png")]
    assert main(["client-run", "--server", server, *common, "--out", str(tmp_path / "served"),
                 "--mask-format", "rle"]) == 0
    assert main(["run", "--bundle", str(tiny_bundle), "--backend", "onnxruntime", *common,
                 "--out", str(tmp_path / "local")]) == 0
    served = sorted((tmp_path / "served").glob("*.png"))
    assert [p.name for p in served] == [f"{i:05d}.png" for i in range(6)]
    for path in served:
        assert np.array_equal(read_label_png(path), read_label_png(tmp_path / "local" / path.name)), path.name
        assert path.read_bytes() == (tmp_path / "local" / path.name).read_bytes()


def test_shutdown_finishes_the_frame_in_flight(tracker, loopback, videos, reference):
    """Stopping the server while a frame waits for the device: the frame is answered, then sessions close."""
    from kmnrt.service.app import create_app
    from kmnrt.service.settings import ServiceSettings

    app = create_app(ServiceSettings(warmup=False), tracker=tracker)
    clip = videos(400, 2)
    answers = []
    with loopback(app) as url:
        client = ServiceClient(url)
        session = client.create_session(clip.frames[0], clip.mask)
        ctx = app.state.ctx
        release, running = threading.Event(), threading.Event()
        ctx.worker.submit_call(ctx.registry.get(session.session_id),
                               lambda tracker, s: (running.set(), release.wait(30)))
        assert running.wait(30)
        sender = threading.Thread(target=lambda: answers.append(client.send_frame(session.session_id, 1,
                                                                                  clip.frames[1])))
        sender.start()
        while not ctx.registry.get(session.session_id).pending:  # the frame is queued behind the held call
            sender.join(0.02)
        threading.Timer(0.5, release.set).start()
    sender.join(30)
    client.close()  # it outlives the server: the answer arrives while the server shuts down
    assert len(answers) == 1 and np.array_equal(answers[0].labels, reference(clip)[1])
    with pytest.raises(ServiceError) as raised:
        ctx.registry.get(session.session_id)
    assert (raised.value.status, raised.value.code) == (410, "session_server_shutdown")
    assert not ctx.worker.ready.is_set()


def test_a_stalled_upload_is_refused_and_its_connection_freed(tracker, loopback):
    """Headers and part of a body, then nothing (a stalled client, or slowloris): 408 after the idle timeout,
    the connection closed, the error counted; a body that keeps arriving is not cut off."""
    import socket
    import time

    from kmnrt.service.app import create_app
    from kmnrt.service.settings import ServiceSettings

    app = create_app(ServiceSettings(warmup=False, body_timeout_s=0.5), tracker=tracker)
    with loopback(app) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as raw:
            raw.sendall(b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                        b"Content-Type: multipart/form-data; boundary=B\r\n\r\n--B\r\n")
            started = time.monotonic()
            answer = b""
            while chunk := raw.recv(4096):  # until the server closes the connection
                answer += chunk
            waited = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408") and b'"code":"body_stalled"' in answer
        assert 0.4 < waited < 10
        assert 'kmnrt_errors_total{code="body_stalled"} 1.0' in httpx.get(f"{url}/metrics").text
        with socket.create_connection((host, int(port)), timeout=30) as raw:  # slow but steady: not stalled
            raw.sendall(b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n"
                        b"Content-Type: application/x-www-form-urlencoded\r\n\r\n")
            for byte in b"a=1&b=":
                time.sleep(0.3)
                raw.sendall(bytes([byte]))
            assert not raw.recv(4096).startswith(b"HTTP/1.1 408")


def _frames_and_mask(clip, folder) -> list[str]:
    from PIL import Image

    from kmnrt.data import write_label_png

    (folder / "frames").mkdir()
    for index, frame in enumerate(clip.frames):
        Image.fromarray(frame).save(folder / "frames" / f"{index:05d}.png")
    write_label_png(folder / "mask.png", clip.mask)
    return ["--input", str(folder / "frames"), "--mask", str(folder / "mask.png")]


def test_client_run_names_a_wrong_root_url(server, videos, tmp_path, capsys):
    from kmnrt.cli import main

    args = _frames_and_mask(videos(310, 2), tmp_path)
    assert main(["client-run", "--server", f"{server}/v1", *args, "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "server answered 404 not_found" in error and "give the service's root URL" in error
    assert not (tmp_path / "out").exists()


def test_client_run_names_the_frame_a_lost_session_failed_at(tracker, loopback, videos, tmp_path, capsys):
    """The session closed under a running client-run: its error names the frame and the masks written, and the
    clean-up's own failure (the session is gone) does not replace it."""
    from kmnrt.cli import main
    from kmnrt.service import ops
    from kmnrt.service.app import create_app
    from kmnrt.service.settings import ServiceSettings

    app = create_app(ServiceSettings(warmup=False), tracker=tracker)
    args = _frames_and_mask(videos(320, 40), tmp_path)
    codes = []
    with loopback(app) as url:
        ctx = app.state.ctx
        runner = threading.Thread(target=lambda: codes.append(main(["client-run", "--server", url, *args, "--out",
                                                                    str(tmp_path / "out")])))
        runner.start()
        while not any(session.frames_done >= 3 for session in ctx.registry.open_sessions()):
            assert runner.is_alive()
            runner.join(0.01)
        ops.close_session(ctx, ctx.registry.open_sessions()[0].id)
        runner.join(60)
    assert codes == [2]
    error = capsys.readouterr().err.strip().splitlines()[-1]
    written = len(list((tmp_path / "out").glob("*.png")))
    assert re.fullmatch(rf"error: frame {written} \({written:05d}\): server answered 410 session_closed_by_client: "
                        rf".+; the masks of the {written} frames before it are in {re.escape(str(tmp_path / 'out'))}",
                        error), error


def test_websocket_limits_and_shutdown_over_a_real_server(tracker, loopback, videos):
    """uvicorn cuts WebSocket messages itself only far above the protocol's limit, so a message over that limit
    gets the protocol's 413 error and the session goes on; a JSON frame may be base64's 4/3 of a binary one; a
    session the server's shutdown ends is counted as such."""
    import base64
    import json

    from websockets.sync.client import connect

    from kmnrt.client import encode_frame, encode_mask_png
    from kmnrt.service.app import create_app
    from kmnrt.service.settings import ServiceSettings

    limit = 20_000
    app = create_app(ServiceSettings(warmup=False, max_body_mb=limit / 2**20), tracker=tracker)
    clip = videos(330, 3)
    noise = encode_frame(np.random.default_rng(0).integers(0, 256, clip.frames[1].shape, dtype=np.uint8))
    assert len(noise) <= limit < len(base64.b64encode(noise))  # a frame REST takes, base64 makes it larger
    server = loopback(app)
    url = server.__enter__()
    with connect(url.replace("http", "ws") + "/v1/stream", max_size=None) as ws:
        ws.send(json.dumps({"type": "start", "frame": base64.b64encode(encode_frame(clip.frames[0])).decode(),
                            "mask": base64.b64encode(encode_mask_png(clip.mask)).decode()}))
        assert json.loads(ws.recv())["type"] == "started"
        ws.send(b"x" * (limit + 1))
        error = json.loads(ws.recv())
        assert error["error"]["code"] == "body_too_large" and not error["fatal"]
        assert f"a binary message of {limit + 1} bytes exceeds the server's limit of {limit} bytes" in \
            error["error"]["message"]
        ws.send(json.dumps({"type": "frame", "frame_index": 1, "frame": base64.b64encode(noise).decode()}))
        assert json.loads(ws.recv())["type"] == "masks"
        ws.send(encode_frame(clip.frames[2]))
        assert json.loads(ws.recv())["type"] == "masks"
        # the server stops under the open session, while its next frame waits behind work on the device (the
        # handler then waits for that answer, not on the socket)
        ctx, release, running = app.state.ctx, threading.Event(), threading.Event()
        ctx.worker.submit_call(ctx.registry.open_sessions()[0], lambda tracker, s: (running.set(), release.wait(30)))
        assert running.wait(30)
        ws.send(encode_frame(clip.frames[2]))
        threading.Timer(0.5, release.set).start()
        server.__exit__()
    metrics = app.state.ctx.metrics.render().decode()
    assert 'kmnrt_sessions_closed_total{reason="server_shutdown"} 1.0' in metrics
    assert 'kmnrt_errors_total{code="body_too_large"} 1.0' in metrics
