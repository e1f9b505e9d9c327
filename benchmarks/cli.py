"""``kmnrt bench``: latency per stage and end to end, memory, and throughput of a bundle's backends next to the
reference baseline, measured in one run on real frames; ``kmnrt bench --report JSON`` rebuilds the tables/plot."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from datetime import date
from pathlib import Path

from kmnrt.errors import UserInputError

DESCRIPTION = """\
Benchmark a bundle. Every backend and the baseline `reference` (the reference tracker run the way STM's
evaluation code runs: fp32 eager PyTorch, memory concatenated anew each frame) are measured in the same run, at
every memory size T (frames read per step) and object count N, on real frames (the shared DAVIS sequence by
default). Warm-up frames are excluded; the device is synchronised before every clock read. Reported: median,
p90, p99 per stage (query encode, read, decode, memorize, plus pre/post) and end to end, each backend's speed-up
over the baseline, peak RSS (CPU) or device memory (GPU), and the memory read's peak as a multiple of the
affinity size N*T*(h*w)^2*4 bytes. --sessions adds a throughput run (K sessions through step_batch);
--video-length adds the cost per frame along one long video.

Without --json the results go to benchmarks/results/<device>-<date>.json (-2, -3, ... when the day's name is taken)
with .md and .png next to it."""

BACKEND_HELP = "reference,torch,onnxruntime[,onnxruntime-cuda,tensorrt]"
DEFAULT_MEMORY = (1, 5, 10, 20)
DEFAULT_OBJECTS = (1, 3)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmark a bundle's backends against the reference baseline",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, metavar="DIR", help="the bundle (engines/NAME) to benchmark")
    parser.add_argument("--backends", default="reference,torch,onnxruntime", metavar="LIST",
                        help=f"comma-separated: {BACKEND_HELP} (default: %(default)s)")
    parser.add_argument("--memory", metavar="T,..", help="memory sizes T, frames per read (default: 1,5,10,20 "
                        "within the bundle's max_memory, and max_memory itself when it is smaller than 20)")
    parser.add_argument("--objects", metavar="N,..", help="object counts (default: 1,3 within the bundle's "
                        "max_objects)")
    parser.add_argument("--frames", type=int, default=50, help="timed frames per configuration (default: 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed frames before them (default: 5)")
    parser.add_argument("--input", type=Path, metavar="VIDEO|FRAMES_DIR|SEQUENCE",
                        help="frames to run on (default: ../shared/data/vos/davis2016_bmx-trees)")
    parser.add_argument("--device", help="device of reference and torch: cpu or cuda[:i] (default: cuda when a GPU "
                                         "backend is benchmarked, else cpu)")
    parser.add_argument("--sessions", default="", metavar="K,..",
                        help="throughput mode: K concurrent sessions (e.g. 1,2,4) through step_batch vs sequential")
    parser.add_argument("--throughput-at", metavar="N,T", help="objects and memory of the throughput runs "
                                                               "(default: the smallest N and the largest T)")
    parser.add_argument("--video-length", type=int, default=0, metavar="FRAMES",
                        help="also run one video this long per backend (smallest N) with memory built as a real "
                        "video builds it (every mem_every-th frame): cost per frame and T along the video, where the "
                        "runtime's bank stops growing at max memory and the baseline's does not (default: off)")
    parser.add_argument("--no-read-probe", action="store_true", help="skip the memory read's peak-memory probe")
    parser.add_argument("--in-process", action="store_true",
                        help="run everything in this process (faster to start; peak RSS then mixes configurations)")
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="results JSON")
    parser.add_argument("--markdown", type=Path, metavar="OUT.md", help="markdown report (default: next to the JSON)")
    parser.add_argument("--plot", type=Path, metavar="OUT.png", help="plot (default: next to the JSON)")
    parser.add_argument("--report", type=Path, metavar="JSON",
                        help="only (re)build the markdown and plot from this results JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run_bench)


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    """'1,5,10' -> (1, 5, 10); anything else is a user error naming the option."""
    values = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            values.append(int(item))
        except ValueError:
            raise UserInputError(f"{option}: {item!r} is not a whole number; give a comma-separated list such "
                                 f"as 1,5,10") from None
    return tuple(values)


def parse_backends(text: str) -> tuple[str, ...]:
    from kmnrt.runtime.backends.base import ALIASES

    return tuple(ALIASES.get(b, b) for b in (part.strip() for part in text.split(",")) if b)


def default_paths(args: argparse.Namespace, device_name: str) -> tuple[Path, Path, Path]:
    """--json/--markdown/--plot as given; without --json, the device's and day's name in benchmarks/results, with
    -2, -3, ... when an earlier run of the day holds it (the first may be committed results)."""
    json_path = args.json
    if json_path is None:
        stem = Path("benchmarks") / "results" / f"{device_name}-{date.today().isoformat()}"
        json_path, number = stem.with_suffix(".json"), 2
        while any(json_path.with_suffix(s).exists() for s in (".json", ".md", ".png")):
            json_path, number = stem.with_name(f"{stem.name}-{number}.json"), number + 1
    return (json_path, args.markdown or json_path.with_suffix(".md"), args.plot or json_path.with_suffix(".png"))


def check_writable(path: Path, option: str) -> None:
    """Found now, not when the first measurement is saved (minutes to hours into a run)."""
    from kmnrt.data.atomic import output_folder

    if path.is_dir():
        raise UserInputError(f"{option} {path} is a folder; give a file name")
    output_folder(path.parent, option)
    try:
        tempfile.TemporaryFile(dir=path.parent).close()
    except OSError as exc:
        raise UserInputError(f"{option} {path}: cannot write in {path.parent} ({exc.strerror}); choose a writable "
                             f"location") from None


def run_bench(args: argparse.Namespace) -> int:
    from kmnrt.benchmarks.report import load_results, terminal_summary, write_report

    if args.report:
        document = load_results(args.report)
        markdown = args.markdown or args.report.with_suffix(".md")
        plot = args.plot or args.report.with_suffix(".png")
        for path in write_report(document, markdown, plot):
            print(f"wrote {path}")
        print(terminal_summary(document))
        return 0
    from kmnrt.benchmarks.environment import device_name, gpu_info
    from kmnrt.benchmarks.suite import run_benchmark
    from kmnrt.data.atomic import atomic_output

    options = options_from_args(args)
    json_path, markdown, plot = default_paths(args, device_name(gpu_info()))
    for option, path in (("--json", json_path), ("--markdown", markdown), ("--plot", plot)):
        check_writable(path, option)

    saved: list[bool] = []

    def save(document: dict) -> None:
        with atomic_output(json_path) as tmp:
            tmp.write_text(json.dumps(document, indent=2))
        saved.append(True)

    try:
        document = run_benchmark(options, save)
    except KeyboardInterrupt:
        if saved:  # the JSON holds what was measured; the .md and .png beside it are not this run's
            print(f"the measurements so far are in {json_path}; render them with: kmnrt bench --report "
                  f"{json_path}", file=sys.stderr)
        raise
    print(f"wrote {json_path}")
    written = write_report(document, markdown, plot)
    for path in written:
        print(f"wrote {path}")
    print(terminal_summary(document))
    if markdown in written:
        print(f"per-stage times, percentiles and the read's memory: {markdown}")
    return 0


def options_from_args(args: argparse.Namespace):
    from kmnrt.benchmarks.suite import BenchOptions

    if args.bundle is None:
        raise UserInputError("--bundle is required (a folder written by `kmnrt export`), or use --report JSON")
    point = None
    if args.throughput_at and not args.sessions:
        raise UserInputError("--throughput-at sets where the throughput run of --sessions measures; give --sessions "
                             "too (e.g. --sessions 1,2,4)")
    if args.throughput_at:
        point = parse_ints(args.throughput_at, "--throughput-at")
        if len(point) != 2:
            raise UserInputError(f"--throughput-at {args.throughput_at}: give N,T (two numbers)")
    memory, objects = (tuple(sorted(set(values))) for values in bundle_sizes(args))  # each configuration once
    if not memory or not objects:
        raise UserInputError("--memory and --objects each need at least one value")
    if args.device is not None and args.device.startswith("cuda"):  # other names get their own message later
        import torch

        if not torch.cuda.is_available():
            raise UserInputError(f"--device {args.device}: no CUDA device is available to PyTorch here; use "
                                 f"--device cpu or leave it out")
    return BenchOptions(
        bundle=args.bundle, backends=parse_backends(args.backends), memory=memory, objects=objects,
        frames=args.frames, warmup=args.warmup, input=args.input, device=args.device,
        sessions=parse_ints(args.sessions, "--sessions"), throughput_point=point, video_length=args.video_length,
        read_probe=not args.no_read_probe, isolate=not args.in_process, progress=not args.no_progress,
        command=effective_command(args, memory, objects))


def bundle_sizes(args: argparse.Namespace) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """--memory and --objects as given, or the defaults the bundle can run: a bundle exported for 16 memory
    frames is benchmarked at 1, 5, 10 and 16, not refused for the default's 20."""
    memory = parse_ints(args.memory, "--memory") if args.memory is not None else None
    objects = parse_ints(args.objects, "--objects") if args.objects is not None else None
    if memory is None or objects is None:
        from kmnrt.export.manifest import load_manifest

        manifest = load_manifest(args.bundle, verify=False)  # the run verifies the files; here only the limits
        memory = memory if memory is not None else _within(DEFAULT_MEMORY, manifest.max_memory)
        objects = objects if objects is not None else _within(DEFAULT_OBJECTS, manifest.max_objects)
    return memory, objects


def _within(defaults: tuple[int, ...], limit: int) -> tuple[int, ...]:
    kept = tuple(value for value in defaults if value <= limit)
    return kept if limit >= defaults[-1] else (*kept, limit)


def effective_command(args: argparse.Namespace, memory: tuple[int, ...], objects: tuple[int, ...]) -> str:
    """The command with every setting spelled out (defaults included), to reproduce the run."""
    words = ["kmnrt", "bench", "--bundle", str(args.bundle), "--backends", args.backends,
             "--memory", ",".join(map(str, memory)), "--objects", ",".join(map(str, objects)),
             "--frames", str(args.frames), "--warmup", str(args.warmup)]
    for flag, value in (("--input", args.input), ("--device", args.device), ("--sessions", args.sessions),
                        ("--throughput-at", args.throughput_at), ("--video-length", args.video_length),
                        ("--json", args.json)):
        if value:
            words += [flag, str(value)]
    words += [flag for flag, on in (("--no-read-probe", args.no_read_probe), ("--in-process", args.in_process)) if on]
    return shlex.join(words)
