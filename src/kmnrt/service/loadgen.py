"""Throughput of the service under concurrent sessions, to measure what cross-session batching buys.

    python -m kmnrt.service.loadgen --bundle engines/tiny --sessions 16 --frames 30 --max-batch 1 8

starts the service in-process on 127.0.0.1 once per ``--max-batch`` value (the same tracker), runs ``--sessions``
clients at once, each sending ``--frames`` synthetic frames in order, and prints frames/s and the mean batch
size. ``--server URL`` measures a running server instead. The frames are random noise at ``--size``: the work per
frame is the model's, whatever the picture.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def synthetic_clip(seed: int, frames: int, size: tuple[int, int]) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    clip = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(frames)]
    mask = np.zeros(size, np.uint8)
    mask[size[0] // 4: size[0] // 2, size[1] // 4: size[1] // 2] = 1
    return clip, mask


def measure(url: str, sessions: int, frames: int, size: tuple[int, int]) -> dict:
    """Run ``sessions`` clients at once against ``url``. -> frames/s over the frames after each first frame."""
    from kmnrt.client import ServiceClient

    clips = [synthetic_clip(seed, frames, size) for seed in range(sessions)]
    barrier = threading.Barrier(sessions)
    batch_sizes: list[int] = []

    def run(number: int) -> None:
        clip, mask = clips[number]
        with ServiceClient(url, timeout_s=600) as client:
            session = client.create_session(clip[0], mask)
            barrier.wait()
            for index in range(1, frames):
                batch_sizes.append(client.send_frame(session.session_id, index, clip[index]).batch_size)
            client.delete_session(session.session_id)

    started = time.perf_counter()
    with ThreadPoolExecutor(sessions) as pool:
        list(pool.map(run, range(sessions)))
    elapsed = time.perf_counter() - started
    count = sessions * (frames - 1)
    return {"sessions": sessions, "frames": count, "seconds": round(elapsed, 3),
            "frames_per_s": round(count / elapsed, 2), "mean_batch": round(float(np.mean(batch_sizes)), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kmnrt.service.loadgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", help="serve this bundle in-process (one run per --max-batch)")
    parser.add_argument("--backend", default="auto",
                        help="runtime backend of the in-process server, as kmnrt run's (default: %(default)s)")
    parser.add_argument("--server", help="measure a running server at this URL instead")
    parser.add_argument("--sessions", type=int, default=16,
                        help="concurrent sessions, one client thread each (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=30, help="frames per session (default: %(default)s)")
    parser.add_argument("--size", type=int, nargs=2, default=(480, 854), metavar=("H", "W"),
                        help="frame size of the generated videos (default: 480 854)")
    parser.add_argument("--max-batch", type=int, nargs="+", default=[1, 8],
                        help="the in-process server's --max-batch values, one run each (default: 1 8)")
    parser.add_argument("--max-delay-ms", type=float, default=2.0,
                        help="the in-process server's --max-delay-ms (default: %(default)s)")
    args = parser.parse_args(argv)
    size = tuple(args.size)
    if args.server:
        print(json.dumps(measure(args.server, args.sessions, args.frames, size)))
        return 0
    if not args.bundle:
        parser.error("give --bundle (in-process server) or --server URL")
    from kmnrt.runtime.tracker import Tracker
    from kmnrt.service.app import create_app
    from kmnrt.service.settings import ServiceSettings

    tracker = Tracker.from_bundle(args.bundle, backend=args.backend)
    for max_batch in args.max_batch:
        settings = ServiceSettings(max_batch=max_batch, max_delay_ms=args.max_delay_ms,
                                   max_sessions=args.sessions + 1, memory_budget_mb=10**6)
        with serve_in_thread(create_app(settings, tracker=tracker)) as url:
            result = measure(url, args.sessions, args.frames, size)
        print(json.dumps({"backend": tracker.backend, "device": str(tracker.device), "max_batch": max_batch,
                          **result}), flush=True)
    tracker.close()
    return 0


class serve_in_thread:
    """``with serve_in_thread(app) as url``: a real uvicorn server on 127.0.0.1 (an ephemeral port) in a thread,
    returned once ``/v2/health/ready`` answers 200 (``wait_ready=False``: once it listens, e.g. to watch the
    warm-up); it shuts down gracefully on exit (the app's lifespan drains its worker). uvicorn is set up as
    ``kmnrt serve`` sets it up (:func:`kmnrt.service.app.make_server`)."""

    def __init__(self, app, wait_ready: bool = True, timeout_s: float = 120):
        from kmnrt.service.app import make_server

        self.server = make_server(app, "127.0.0.1", 0, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.wait_ready = wait_ready
        self.timeout_s = timeout_s

    def __enter__(self) -> str:
        from kmnrt.client import ServiceClient, ServiceClientError

        self.thread.start()
        deadline = time.monotonic() + self.timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"
        if self.wait_ready:
            try:
                with ServiceClient(url) as client:
                    client.wait_ready(max(deadline - time.monotonic(), 1.0), interval_s=0.02)
            except ServiceClientError as exc:
                self.__exit__()
                raise RuntimeError(f"the server did not get ready: {exc}") from exc
        return url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(60)


if __name__ == "__main__":
    from kmnrt.errors import exit_status

    sys.exit(exit_status(main))
