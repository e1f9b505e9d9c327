"""Structured logs: one JSON object per line on stderr (time, level, logger, message and the record's extras)."""

from __future__ import annotations

import json
import logging
import time

# Attributes every LogRecord has; anything else was passed with ``extra=`` and belongs in the JSON.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName", "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class NoWebSocketAccess(logging.Filter):
    """Drops the access lines uvicorn and websockets log for every WebSocket connection at info level
    ('"WebSocket /v1/stream" [accepted]', 'connection open', 'connection closed'): ``access_log=False`` covers
    HTTP only, and the metrics count connections' errors instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        return not (str(record.msg).startswith('%s - "WebSocket ') or record.msg in ("connection open",
                                                                                     "connection closed"))


def logging_config(level: str) -> dict:
    """A ``logging.config.dictConfig`` document: JSON lines on stderr for ``kmnrt.service`` and uvicorn at
    ``level`` (uvicorn applies it at start-up; access logs stay off, metrics count requests instead), and for the
    multipart parser at error level (a malformed upload is the client's 4xx answer, not a warning to operators)."""
    loggers = {name: {"handlers": ["stderr"], "level": level.upper(), "propagate": False}
               for name in ("kmnrt.service", "uvicorn", "uvicorn.error")}
    loggers["uvicorn.error"]["filters"] = ["no_websocket_access"]
    loggers["python_multipart"] = {"handlers": ["stderr"], "level": "ERROR", "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "filters": {"no_websocket_access": {"()": NoWebSocketAccess}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "loggers": loggers,
    }
