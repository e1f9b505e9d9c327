"""The service's structured logs: one JSON object per line, extras as fields, exceptions included."""

from __future__ import annotations

import json
import logging
import logging.config
import re
import sys

from kmnrt.service.logs import JsonFormatter, logging_config


def _record(**extra) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "kmnrt.service", "levelno": logging.INFO, "levelname": "INFO",
                                    "msg": "session %s closed", "args": ("abc",), "created": 0.25, "msecs": 250.0})
    record.__dict__.update(extra)
    return record


def test_a_record_is_one_json_line_with_its_extras():
    line = JsonFormatter().format(_record(event="session_closed", reason="ttl", session_bytes=1024))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry == {"time": "1970-01-01T00:00:00.250Z", "level": "info", "logger": "kmnrt.service",
                     "message": "session abc closed", "event": "session_closed", "reason": "ttl",
                     "session_bytes": 1024}


def test_exceptions_and_objects_json_cannot_hold_are_kept_as_text():
    try:
        raise ValueError("device lost")
    except ValueError:
        record = _record(event="worker_error", where=object())
        record.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(record))
    assert "ValueError: device lost" in entry["exception"] and entry["where"].startswith("<object object")


def test_the_config_sends_service_and_uvicorn_logs_as_json_at_the_level(capsys):
    logging.config.dictConfig(logging_config("warning"))
    try:
        logging.getLogger("kmnrt.service").info("hidden")
        logging.getLogger("uvicorn.error").warning("port taken", extra={"event": "bind_failed"})
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1
        entry = json.loads(lines[0])
        assert entry["logger"] == "uvicorn.error" and entry["event"] == "bind_failed"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    finally:
        _reset_loggers()


def test_websocket_access_lines_and_multipart_warnings_stay_out_of_the_log(capsys):
    """access_log=False covers HTTP only: uvicorn and websockets log every WebSocket connection at info; and the
    multipart parser warns of a malformed upload (answered 400) with a bare line of its own."""
    logging.config.dictConfig(logging_config("info"))
    try:
        error_log = logging.getLogger("uvicorn.error")
        error_log.info('%s - "WebSocket %s" [accepted]', "127.0.0.1:5", "/v1/stream")
        error_log.info("connection open")
        error_log.info("connection closed")
        logging.getLogger("python_multipart.multipart").warning("Expected boundary character 45, got 103")
        error_log.info("Uvicorn running on %s", "http://127.0.0.1:8000")
        error_log.warning("connection closed")  # the filter drops info lines only
        lines = [json.loads(line) for line in capsys.readouterr().err.strip().splitlines()]
        assert [entry["message"] for entry in lines] == ["Uvicorn running on http://127.0.0.1:8000",
                                                         "connection closed"]
    finally:
        _reset_loggers()


def _reset_loggers() -> None:
    """Undo ``logging_config`` (dictConfig changes process-wide loggers)."""
    for name in ("kmnrt.service", "uvicorn", "uvicorn.error", "python_multipart"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.filters.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
