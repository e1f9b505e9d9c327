"""`kmnrt serve` / `kmnrt client-run` command lines, and the WebSocket schema copy in docs/service.md."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kmnrt.cli import main
from kmnrt.client import ServiceClient
from kmnrt.errors import UserInputError
from kmnrt.service.schemas import websocket_json_schema

DOCS = Path(__file__).resolve().parents[2] / "docs" / "service.md"


def test_print_ws_schema_matches_the_docs(capsys):
    assert main(["serve", "--print-ws-schema"]) == 0
    printed = capsys.readouterr().out
    schema = json.loads(printed)
    kinds = {ref.rsplit("/", 1)[-1] for ref in re.findall(r'"\$ref": "([^"]+)"', printed)}
    assert {"WsStart", "WsFrame", "WsAddObjects", "WsClose", "WsStarted", "WsMasks", "WsDropped",
            "WsError"} <= kinds
    assert set(schema) == {"client_to_server", "server_to_client"}
    block = re.search(r"<!-- ws-schema:begin -->\n```json\n(.*?)```\n<!-- ws-schema:end -->", DOCS.read_text(),
                      re.S)
    assert block, "docs/service.md lost its schema block"
    assert json.loads(block.group(1)) == json.loads(websocket_json_schema()), \
        "docs/service.md's schema is stale: paste `kmnrt serve --print-ws-schema` into it"


def test_serve_refuses_public_bind_without_token_and_missing_bundle(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("KMNRT_TOKEN", raising=False)
    assert main(["serve", "--bundle", str(tmp_path), "--host", "0.0.0.0"]) == 2
    assert "requires a token" in capsys.readouterr().err
    monkeypatch.setenv("KMNRT_MAX_BATCH", "lots")
    assert main(["serve", "--bundle", str(tmp_path)]) == 2
    assert "KMNRT_MAX_BATCH='lots'" in capsys.readouterr().err
    monkeypatch.delenv("KMNRT_MAX_BATCH")
    assert main(["serve", "--bundle", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_client_run_reports_an_unreachable_server(capsys, tmp_path):
    import numpy as np
    from PIL import Image

    from kmnrt.data import write_label_png

    (tmp_path / "frames").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "frames" / "00000.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[:4, :4] = 1
    write_label_png(tmp_path / "mask.png", mask)
    run = ["client-run", "--server", "http://127.0.0.1:9", "--input", str(tmp_path / "frames"), "--mask",
           str(tmp_path / "mask.png"), "--out", str(tmp_path / "out")]
    assert main([*run, "--wait-s", "0.3"]) == 2  # waits for a server that may still be starting, then says so
    error = capsys.readouterr().err
    assert "waiting up to 0.3 s for http://127.0.0.1:9 to be ready" in error
    assert error.strip().endswith("error: no server answered at http://127.0.0.1:9 within 0.3 s: is `kmnrt serve` "
                                  "running there? (--server)")
    assert main([*run, "--wait-s", "0"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: POST /v1/sessions: no answer from http://127.0.0.1:9") and "kmnrt serve" in error
    assert not (tmp_path / "out").exists()  # nothing written: no empty folder left behind


def test_serve_names_a_taken_port_and_an_invalid_one_before_loading_anything(capsys, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--bundle", str(tmp_path), "--port", str(port)]) == 2
    assert f"port {port} on 127.0.0.1 is already in use" in capsys.readouterr().err
    assert main(["serve", "--bundle", str(tmp_path), "--port", "70000"]) == 2
    assert "port must be between 0 and 65535, got 70000" in capsys.readouterr().err


def test_a_service_url_without_scheme_or_with_a_bad_port_is_named():
    with pytest.raises(UserInputError, match=r"'localhost:8000' needs http:// or https:// .* e\.g\. http://localhost"):
        ServiceClient("localhost:8000")
    for url, reason in (("http://[::1", "Invalid IPv6 URL"), ("http://h:99999", "Port out of range")):
        with pytest.raises(UserInputError, match=f"malformed \\({re.escape(reason)}"):
            ServiceClient(url)
    ServiceClient("https://example.org:8443/base").close()  # a good one opens nothing yet


def test_kmnrt_serve_as_a_process_serves_and_stops_cleanly_on_sigterm(tiny_bundle, videos, reference, tmp_path):
    """The command itself, not an app in a thread: bundle loaded up front, JSON logs, a session, a clean stop."""
    import signal
    import socket
    import subprocess
    import sys

    import numpy as np

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "kmnrt", "serve", "--bundle", str(tiny_bundle), "--backend",
                               "onnxruntime", "--port", str(port)], stderr=log)
    try:
        with ServiceClient(f"http://127.0.0.1:{port}") as client:
            client.wait_ready(timeout_s=60)
            video = videos(seed=3, length=4)
            session = client.create_session(video.frames[0], video.mask)
            answer = client.send_frame(session.session_id, 1, video.frames[1])
            assert np.array_equal(answer.labels, reference(video)[1])
        server.send_signal(signal.SIGTERM)
        # uvicorn drains, then re-raises the signal, which kmnrt turns into KeyboardInterrupt and uvicorn.run
        # swallows: a drained stop exits 0, as docs/service.md says
        assert server.wait(timeout=30) == 0
    finally:
        server.kill()
        log.close()
    entries = [json.loads(line) for line in (tmp_path / "serve.log").read_text().splitlines()]
    assert {"loaded", "ready", "session_created"} <= {entry.get("event") for entry in entries}
    closed = [entry for entry in entries if entry.get("event") == "session_closed"]
    assert [(entry["session"], entry["reason"]) for entry in closed] == [(session.session_id, "server_shutdown")]
    assert "Application shutdown complete." in [entry["message"] for entry in entries]
    assert [entry["drained"] for entry in entries if entry.get("event") == "stopped"] == [True]
