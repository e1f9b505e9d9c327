"""A real uvicorn server on 127.0.0.1: many sessions at once with no lost, duplicated or cross-wired frames, bad
requests in the middle, and `kmnrt client-run` writing the same PNGs as the runtime."""

from __future__ import annotations

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
