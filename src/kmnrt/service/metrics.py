"""Prometheus metrics of one service instance, in its own registry (no process-global state, so several apps can
live in one test process). No metric is labelled by session id: label values are small fixed sets."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kmnrt.runtime.timing import STAGES as RUNTIME_STAGES

STAGES = (*RUNTIME_STAGES, "total")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass
class ServiceMetrics:
    registry: CollectorRegistry
    stage_seconds: Histogram      # device time per stage of a frame
    queue_wait_seconds: Histogram
    request_seconds: Histogram    # end to end in the server, per route kind
    batch_size: Histogram
    frames: Counter               # by outcome
    sessions_closed: Counter      # by reason
    active_sessions: Gauge
    max_sessions: Gauge
    bank_bytes: Gauge
    errors: Counter               # answered errors by code

    @classmethod
    def create(cls) -> ServiceMetrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            stage_seconds=Histogram("kmnrt_frame_stage_seconds", "Device time of one frame per stage",
                                    ["stage"], buckets=LATENCY_BUCKETS, registry=registry),
            queue_wait_seconds=Histogram("kmnrt_queue_wait_seconds", "Time a frame waited for the device worker",
                                         buckets=LATENCY_BUCKETS, registry=registry),
            request_seconds=Histogram("kmnrt_request_seconds", "Request time in the server", ["route"],
                                      buckets=LATENCY_BUCKETS, registry=registry),
            batch_size=Histogram("kmnrt_batch_size", "Sessions per query-encoder call",
                                 buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32), registry=registry),
            frames=Counter("kmnrt_frames", "Frames by outcome (ok, cached, dropped, rejected, failed)",
                           ["outcome"], registry=registry),
            sessions_closed=Counter("kmnrt_sessions_closed", "Closed sessions by reason", ["reason"],
                                    registry=registry),
            active_sessions=Gauge("kmnrt_active_sessions", "Open sessions", registry=registry),
            max_sessions=Gauge("kmnrt_max_sessions", "Session capacity from the memory budget", registry=registry),
            bank_bytes=Gauge("kmnrt_bank_bytes", "Device bytes held by the open sessions' banks and buffers",
                             registry=registry),
            errors=Counter("kmnrt_errors", "Error answers by code", ["code"], registry=registry),
        )

    def observe_times(self, times: dict[str, float]) -> None:
        for stage in STAGES:
            if stage in times:
                self.stage_seconds.labels(stage).observe(times[stage])

    def render(self) -> bytes:
        return generate_latest(self.registry)


def count_error(app, code: str) -> None:
    """``kmnrt_errors_total{code}`` + 1; ``app``: the FastAPI app (``request.app``, or an ASGI scope's ``app`` in
    the middlewares, which answer before any route)."""
    ctx = getattr(getattr(app, "state", None), "ctx", None)
    if ctx is not None:
        ctx.metrics.errors.labels(code).inc()
