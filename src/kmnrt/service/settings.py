"""The service's settings: one typed, frozen object built once from defaults, ``KMNRT_*`` variables and the CLI.

Precedence: command-line option > environment variable ``KMNRT_<FIELD>`` (upper case) > default. The object is
passed down explicitly (app, registry, worker); nothing reads the environment anywhere else.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from kmnrt.errors import UserInputError

ENV_PREFIX = "KMNRT_"
MASK_FORMATS = ("png", "rle", "raw")
QUEUE_POLICIES = ("block", "latest")


@dataclass(frozen=True)
class ServiceSettings:
    """Everything the service can be configured with (field ``name`` <- env ``KMNRT_NAME`` <- ``--name``).

    Attributes:
        bundle: the engine bundle folder the worker loads.
        backend: runtime backend (``auto``, ``onnxruntime``, ``onnxruntime-cuda``, ``tensorrt``, ``torch``).
        device: device for the runtime (``None``: the backend's default).
        host, port: where to listen. Any address but loopback requires ``token``.
        token: bearer token every ``/v1`` call must carry (``Authorization: Bearer <token>``); ``None`` = no auth.
        memory_budget_mb: device memory for session banks and the worker's batch buffers; ``max_sessions`` is
            derived from it (docs/service.md, Capacity).
        max_sessions: an extra cap on sessions (0 = only the memory budget decides).
        ttl_s: idle seconds after which a session expires (a client can ask for less, never more).
        reap_interval_s: how often the reaper looks for idle sessions.
        queue_depth: frames a session may have waiting (not counting the one in flight).
        queue_policy: default policy when that queue is full: ``block`` (429) or ``latest`` (drop the stale one).
        max_batch: most sessions' frames per query-encoder call (1 disables cross-session batching).
        max_delay_ms: how long the worker waits for more sessions' frames before running a partial batch.
        max_body_mb: largest request body (and binary WebSocket message; JSON ones may be 4/3 of it) accepted.
        body_timeout_s: a request body that stops arriving for this long is refused (408), its connection freed.
        max_frame_pixels: largest frame (width x height) accepted.
        mask_format: default mask format of answers.
        tombstones: how many closed session ids keep answering 410 with their reason (oldest forgotten first).
        shutdown_grace_s: how long a shutdown waits for queued and in-flight frames.
        warmup: run a few frames through the engines before reporting ready.
        log_level: ``debug``, ``info``, ``warning`` or ``error``.
    """

    bundle: Path | None = None
    backend: str = "auto"
    device: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    memory_budget_mb: float = 2048.0
    max_sessions: int = 0
    ttl_s: float = 300.0
    reap_interval_s: float = 1.0
    queue_depth: int = 1
    queue_policy: str = "block"
    max_batch: int = 8
    max_delay_ms: float = 2.0
    max_body_mb: float = 16.0
    body_timeout_s: float = 30.0
    max_frame_pixels: int = 4096 * 2160
    mask_format: str = "png"
    tombstones: int = 10000
    shutdown_grace_s: float = 30.0
    warmup: bool = True
    log_level: str = "info"

    def __post_init__(self) -> None:
        problems = []
        if self.queue_policy not in QUEUE_POLICIES:
            problems.append(f"queue_policy must be one of {QUEUE_POLICIES}, got {self.queue_policy!r}")
        if self.mask_format not in MASK_FORMATS:
            problems.append(f"mask_format must be one of {MASK_FORMATS}, got {self.mask_format!r}")
        for name in ("queue_depth", "max_batch", "max_frame_pixels"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            problems.append(f"port must be between 0 and 65535, got {self.port}")
        for name in ("memory_budget_mb", "ttl_s", "reap_interval_s", "max_body_mb", "body_timeout_s"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_delay_ms < 0 or self.max_sessions < 0:
            problems.append("max_delay_ms and max_sessions must not be negative")
        if self.log_level not in ("debug", "info", "warning", "error"):
            problems.append(f"log_level must be debug, info, warning or error, got {self.log_level!r}")
        if not is_loopback(self.host) and not self.token:
            problems.append(f"binding {self.host} (not a loopback address) requires a token: pass --token or set "
                            f"{ENV_PREFIX}TOKEN, so that no one on the network can use the service unauthenticated")
        if problems:
            raise UserInputError("service settings: " + "; ".join(problems))

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def memory_budget_bytes(self) -> int:
        return int(self.memory_budget_mb * 1024 * 1024)


def load_settings(cli: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> ServiceSettings:
    """Defaults, then ``KMNRT_*`` from ``environ`` (default ``os.environ``), then the non-``None`` ``cli`` values."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}  # field -> where its value came from, for the error message
    for spec in fields(ServiceSettings):
        raw = environ.get(ENV_PREFIX + spec.name.upper())
        if raw is not None and raw != "":
            values[spec.name] = _parse(spec.name, raw, ServiceSettings.__dataclass_fields__[spec.name].type)
            origins[spec.name] = f"{ENV_PREFIX}{spec.name.upper()}={raw!r}"
    for name, value in (cli or {}).items():
        if value is not None and name in ServiceSettings.__dataclass_fields__:
            values[name] = value
            origins[name] = "--" + name.replace("_", "-")
    if isinstance(values.get("bundle"), str):
        values["bundle"] = Path(values["bundle"])
    try:
        return ServiceSettings(**values)
    except UserInputError as error:
        named = [origin for name, origin in origins.items() if re.search(rf"\b{name}\b", str(error))]
        if not named:
            raise
        raise UserInputError(f"{error} (set by {', '.join(named)})") from None


def _parse(name: str, raw: str, annotation: str) -> Any:
    """A ``KMNRT_*`` string as the field's type (annotations are strings under ``from __future__``)."""
    try:
        if annotation.startswith("bool"):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes", "on")
        if annotation.startswith("int"):
            return int(raw)
        if annotation.startswith("float"):
            return float(raw)
        if annotation.startswith("Path"):
            return Path(raw)
        return raw
    except ValueError:
        raise UserInputError(f"environment variable {ENV_PREFIX}{name.upper()}={raw!r} is not a valid "
                             f"{annotation.split(' ')[0]}") from None


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
