"""``kmnrt serve`` (the session service) and ``kmnrt client-run`` (segment a video through a running service)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from kmnrt.errors import KmnrtError, UserInputError


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="serve a bundle over HTTP/WebSocket with per-video sessions",
        description="Serve an engine bundle: each video is a session whose memory bank stays on the device; "
        "frames of different sessions are batched through the query encoder. Every option can also be set "
        "with a KMNRT_<OPTION> environment variable (e.g. KMNRT_TOKEN, KMNRT_MAX_BATCH); options win. Binding "
        "anything but a loopback address requires --token. See docs/service.md.",
    )
    serve.add_argument("--bundle", type=Path, help="the exported bundle folder (env KMNRT_BUNDLE)")
    serve.add_argument("--backend", help="runtime backend: auto, onnxruntime, onnxruntime-cuda, tensorrt, torch "
                       "(default: auto)")
    serve.add_argument("--device", help="device for the backend, e.g. cuda:1 (default: the backend's)")
    serve.add_argument("--host", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: 8000)")
    serve.add_argument("--token", help="bearer token required on /v1 (required off loopback; env KMNRT_TOKEN "
                       "keeps it out of the process list)")
    serve.add_argument("--memory-budget-mb", type=float, help="device memory for sessions; the session capacity "
                       "is this, less the batch buffers of --max-batch frames, divided by one session's bank and "
                       "buffers (default: 2048)")
    serve.add_argument("--max-sessions", type=int, help="extra cap on sessions (default: 0 = budget only)")
    serve.add_argument("--ttl-s", type=float, help="idle seconds before a session expires (default: 300)")
    serve.add_argument("--queue-depth", type=int, help="frames a session may have waiting (default: 1)")
    serve.add_argument("--queue-policy", choices=("block", "latest"),
                       help="a session's full queue: block (429) or latest (drop the stale frame); default block")
    serve.add_argument("--max-batch", type=int, help="sessions per query-encoder call (default: 8; 1 = off)")
    serve.add_argument("--max-delay-ms", type=float, help="wait for a fuller batch at most this long (default: 2)")
    serve.add_argument("--max-body-mb", type=float, help="largest request body or binary WebSocket message; a "
                       "JSON message may be 4/3 of it, base64's growth (default: 16)")
    serve.add_argument("--body-timeout-s", type=float, help="a request body that stops arriving for this long is "
                       "refused with 408 and its connection freed (default: 30)")
    serve.add_argument("--max-frame-pixels", type=int, help="largest frame, width x height (default: 4096x2160)")
    serve.add_argument("--mask-format", choices=("png", "rle", "raw"), help="default mask format (default: png)")
    serve.add_argument("--reap-interval-s", type=float, help="how often idle sessions are looked for (default: 1)")
    serve.add_argument("--shutdown-grace-s", type=float,
                       help="on SIGTERM, wait this long for queued and in-flight frames (default: 30)")
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="default: info")
    serve.add_argument("--print-ws-schema", action="store_true",
                       help="print the JSON Schema of the WebSocket messages and exit")
    serve.set_defaults(handler=run_serve)

    client = subparsers.add_parser(
        "client-run",
        help="segment a video through a running `kmnrt serve`",
        description="Send a video's frames to a kmnrt service as one session and write the answers as indexed "
        "DAVIS-palette PNGs named like the frames (the same files `kmnrt run` writes for the same bundle).",
    )
    client.add_argument("--server", default="http://127.0.0.1:8000", help="service URL (default: %(default)s)")
    client.add_argument("--token", help="bearer token (default: env KMNRT_TOKEN)")
    client.add_argument("--input", type=Path, required=True, help="a folder of frames or a video file")
    client.add_argument("--mask", type=Path, required=True,
                        help="the first frame's index mask (PNG), or a folder of mask PNGs named like the frames "
                        "(later ones add objects that first appear there)")
    client.add_argument("--out", type=Path, required=True, help="output folder for the PNG masks")
    client.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    client.add_argument("--mask-format", choices=("png", "rle", "raw"), default="png",
                        help="mask format on the wire (default: png)")
    client.add_argument("--wait-s", type=float, default=60.0,
                        help="wait this long for a server that is still starting or warming up (default: 60; "
                        "0: do not wait)")
    client.set_defaults(handler=run_client)


def run_serve(args: argparse.Namespace) -> int:
    if args.print_ws_schema:
        from kmnrt.service.schemas import websocket_json_schema

        print(websocket_json_schema())
        return 0
    from kmnrt.service.app import capacity, create_app, largest_batch, load_tracker, make_server
    from kmnrt.service.logs import logging_config
    from kmnrt.service.settings import load_settings

    settings = load_settings({name: getattr(args, name) for name in vars(args) if name != "handler"})
    if settings.bundle is None:
        raise UserInputError("no bundle to serve: pass --bundle (or set KMNRT_BUNDLE) with the folder `kmnrt "
                             "export` wrote")
    if not settings.bundle.is_dir():
        raise UserInputError(f"bundle {settings.bundle} is not a folder: pass --bundle (or KMNRT_BUNDLE) with "
                             f"the folder `kmnrt export` wrote")
    check_can_listen(settings.host, settings.port)
    # Loaded here, not in the app's start-up: a bundle, backend or memory budget that cannot serve is then one
    # `error:` line, where uvicorn would log a traceback and exit 3.
    tracker = load_tracker(settings)
    try:
        capacity(settings, tracker.session_bytes(), tracker.batch_bytes(largest_batch(settings)))
        server = make_server(create_app(settings, tracker), settings.host, settings.port,
                             log_config=logging_config(settings.log_level))
        try:
            server.run()
        except KeyboardInterrupt:
            pass  # uvicorn drained, then re-raised the signal: a drained stop is a clean one (as uvicorn.run has it)
    finally:
        tracker.close()
    if not server.started:
        raise KmnrtError("the server did not start; its log above says why")
    return 0


def check_can_listen(host: str, port: int) -> None:
    """Bind the address once before anything loads. uvicorn binds only after the app has started (the bundle
    loaded, the engines warmed up), then logs a taken port and exits; a line up front says it plainly."""
    import errno
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise UserInputError(f"--host {host}: not an address this machine can bind ({exc.strerror}); give an IP "
                             f"address of this machine, 127.0.0.1 or 0.0.0.0") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserInputError(f"port {port} on {host} is already in use: stop whatever listens there or "
                                     f"choose another --port") from None
            raise UserInputError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def run_client(args: argparse.Namespace) -> int:
    from kmnrt.data import open_frames, read_masks
    from kmnrt.data.atomic import kept_if_written

    if args.wait_s < 0:
        raise UserInputError(f"--wait-s must be 0 or more seconds, got {args.wait_s:g}")
    source = open_frames(args.input, args.max_frames)
    frames = iter(source)
    try:
        first = next(frames)
    except StopIteration:
        raise UserInputError(f"{args.input} holds no frames") from None
    first_mask, later_masks = read_masks(args.mask, source.names, source.cut)
    with kept_if_written(args.out):  # a run that wrote nothing (no server, say) leaves no empty folder behind
        written = _segment_through_service(args, source, first, frames, first_mask, later_masks)
    print(f"wrote {written} masks to {args.out}", file=sys.stderr)
    return 0


def _segment_through_service(args: argparse.Namespace, source, first, frames, first_mask, later_masks) -> int:
    """One session for the whole video; -> the number of masks written. A failure names the frame it happened at
    and what was written; closing the session after it must not replace that error with its own."""
    from tqdm import tqdm

    from kmnrt.client import ServiceClient, ServiceClientError
    from kmnrt.data import output_folder, write_label_png

    output_folder(args.out)
    with ServiceClient(args.server, token=args.token) as client:
        if args.wait_s > 0 and not client.ready():
            print(f"waiting up to {args.wait_s:g} s for {args.server} to be ready", file=sys.stderr)
            client.wait_ready(args.wait_s)
        first_name, first_frame = first
        session = client.create_session(first_frame, first_mask, mask_format=args.mask_format)
        written, name, failed = 0, first_name, True
        try:
            write_label_png(args.out / f"{first_name}.png", session.first.labels)
            written = 1
            for index, (name, frame) in enumerate(tqdm(frames, desc="frames", unit="frame", file=sys.stderr,
                                                       initial=1, total=len(source)), start=1):
                if index in later_masks:
                    answer = client.add_objects(session.session_id, index, frame, later_masks[index])
                else:
                    answer = client.send_frame(session.session_id, index, frame)
                write_label_png(args.out / f"{name}.png", answer.labels)
                written += 1
            failed = False
        except ServiceClientError as exc:
            raise KmnrtError(f"frame {written} ({name}): {exc}; the masks of the {written} frames before it are "
                             f"in {args.out}") from None
        finally:  # after a failure the session may be gone too: its error, not the clean-up's, is the one to see
            with contextlib.suppress(*((ServiceClientError,) if failed else ())):
                client.delete_session(session.session_id)
    return written
