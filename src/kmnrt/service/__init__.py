"""The session service: ``kmnrt serve`` (FastAPI + uvicorn) around one device worker that owns the tracker.

Modules: ``settings`` (typed settings from the CLI and ``KMNRT_*``), ``app`` (lifespan, errors, limits, auth,
health, metrics), ``routes`` (REST) and ``stream`` (WebSocket) over ``ops`` (the shared session operations),
``sessions`` (registry, TTL, capacity, frame-order rules), ``worker`` (the device thread and its cross-session
batcher), ``masks`` (image and mask codecs), ``schemas`` (wire models), ``metrics``, ``logs``, ``loadgen``
(throughput measurement). Nothing here is imported by ``import kmnrt``.
"""
