"""A whole ``kmnrt bench`` run: check the options, run every measurement (each in a fresh process by default),
and assemble the JSON document (schema in ``docs/benchmarks.md``).

Why fresh processes: peak RSS is a per-process high-water mark and freed memory can stay mapped, so measurements
sharing a process would see each other's memory. One process serves one backend and one object count N, for all
memory sizes T in ascending order (the session grows frame by frame instead of being refilled per T); the read's
memory probe and each throughput run get their own process too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from kmnrt.benchmarks.engines import BASELINE
from kmnrt.errors import KmnrtError, UserInputError

SCHEMA = "kmnrt-bench-v1"
VIDEO_LENGTH_WINDOWS = 10
GPU_BACKENDS = ("onnxruntime-cuda", "tensorrt")


@dataclass(frozen=True)
class BenchOptions:
    bundle: Path
    backends: tuple[str, ...] = (BASELINE, "torch", "onnxruntime")
    memory: tuple[int, ...] = (1, 5, 10, 20)
    objects: tuple[int, ...] = (1, 3)
    frames: int = 50
    warmup: int = 5
    input: Path | None = None
    device: str | None = None               # reference/torch device; None: cuda when a GPU backend is asked for
    sessions: tuple[int, ...] = ()          # throughput mode: K concurrent sessions (empty: off)
    throughput_point: tuple[int, int] | None = None  # (N, T) of the throughput runs; None: (min N, max T)
    video_length: int = 0                   # > 0: also the cost per frame along a video this long (min N)
    read_probe: bool = True
    isolate: bool = True
    progress: bool = True
    command: str = ""


@dataclass
class Task:
    kind: str                # latency | read_peak | throughput | video_length
    backend: str
    bundle: str
    device: str | None
    objects: int
    memories: list[int]
    frames: int = 0
    warmup: int = 0
    input: str | None = None
    sessions: list[int] = field(default_factory=list)
    progress: bool = True

    @property
    def label(self) -> str:
        if self.kind == "video_length":
            return f"{self.kind} {self.backend} N={self.objects} frames={self.frames}"
        extra = f" K={','.join(map(str, self.sessions))}" if self.sessions else ""
        return f"{self.kind} {self.backend} N={self.objects} T={','.join(map(str, self.memories))}{extra}"


def check_options(options: BenchOptions):
    """Every user error that can be found before any work: returns the bundle's manifest."""
    from kmnrt.export.manifest import load_manifest
    from kmnrt.runtime.backends.base import ALIASES, BACKENDS, backend_unavailable_reason

    manifest = load_manifest(options.bundle)
    if not options.backends:
        raise UserInputError("--backends is empty; name at least one of reference, " + ", ".join(BACKENDS))
    for backend in options.backends:
        if backend != BASELINE and ALIASES.get(backend, backend) not in BACKENDS:
            raise UserInputError(f"--backends: unknown backend {backend!r}; choose from {BASELINE}, "
                                 f"{', '.join(BACKENDS)}")
        reason = None if backend == BASELINE else backend_unavailable_reason(ALIASES.get(backend, backend), manifest)
        if reason:
            raise UserInputError(f"--backends: {backend} cannot run {options.bundle} here: {reason}; leave it out")
    twice = sorted({backend for backend in options.backends if options.backends.count(backend) > 1})
    if twice:
        raise UserInputError(f"--backends names {', '.join(twice)} twice; give each backend once")
    for value in options.memory:
        if not 1 <= value <= manifest.max_memory:
            raise UserInputError(f"--memory {value}: T must be between 1 and the bundle's max_memory "
                                 f"{manifest.max_memory}; export a bundle with a larger --max-memory for more")
    for value in options.objects:
        if not 1 <= value <= manifest.max_objects:
            raise UserInputError(f"--objects {value}: N must be between 1 and the bundle's max_objects "
                                 f"{manifest.max_objects}")
    if options.frames < 1:
        raise UserInputError(f"--frames {options.frames}: time at least 1 frame")
    if options.warmup < 0:
        raise UserInputError(f"--warmup {options.warmup} must not be negative")
    if any(k < 1 for k in options.sessions):
        raise UserInputError(f"--sessions {','.join(map(str, options.sessions))}: every K must be at least 1")
    if options.video_length < 0:
        raise UserInputError(f"--video-length {options.video_length} must not be negative")
    if options.throughput_point:
        n, t = options.throughput_point
        if not (1 <= n <= manifest.max_objects and 1 <= t <= manifest.max_memory):
            raise UserInputError(f"--throughput-at {n},{t}: N must be 1..{manifest.max_objects} and T "
                                 f"1..{manifest.max_memory} for this bundle")
    if options.device and options.device.split(":")[0] not in ("cpu", "cuda"):
        raise UserInputError(f"--device {options.device}: choose cpu or cuda[:INDEX]")
    if options.input is not None and not Path(options.input).exists():
        raise UserInputError(f"--input {options.input} does not exist; give a video, a folder of frames or a "
                             f"DAVIS sequence folder")
    return manifest


def torch_device(options: BenchOptions) -> str:
    """Where the baseline and the torch backend run: --device, else cuda when a GPU backend is benchmarked."""
    import torch

    if options.device:
        return options.device
    wants_gpu = any(b in GPU_BACKENDS or b in ("ort-cuda", "trt") for b in options.backends)
    return "cuda" if wants_gpu and torch.cuda.is_available() else "cpu"


def plan_tasks(options: BenchOptions) -> list[Task]:
    device = torch_device(options)
    common = {"bundle": str(options.bundle), "input": str(options.input) if options.input else None,
              "progress": options.progress}
    memories = sorted(set(options.memory))

    def device_of(backend: str) -> str | None:
        if backend in (BASELINE, "torch"):
            return device
        return device if backend in (*GPU_BACKENDS, "ort-cuda", "trt") and device.startswith("cuda") else None

    tasks = [Task("latency", b, device=device_of(b), objects=n, memories=memories, frames=options.frames,
                  warmup=options.warmup, **common) for n in options.objects for b in options.backends]
    if options.read_probe:
        tasks += [Task("read_peak", b, device=device_of(b), objects=n, memories=memories, **common)
                  for n in options.objects for b in options.backends]
    if options.sessions:
        n, t = options.throughput_point or (min(options.objects), max(options.memory))
        tasks += [Task("throughput", b, device=device_of(b), objects=n, memories=[t], frames=options.frames,
                       warmup=options.warmup, sessions=sorted(set(options.sessions)), **common)
                  for b in options.backends if b != BASELINE]
    if options.video_length:
        tasks += [Task("video_length", b, device=device_of(b), objects=min(options.objects), memories=[],
                       frames=options.video_length, **common) for b in options.backends]
    return tasks


def needed_frames(task: Task) -> int:
    """Frames one task steps through (the input is replayed back and forth beyond what is loaded)."""
    if task.kind == "video_length":
        return task.frames + 1
    per_t = task.warmup + task.frames + 3
    return 1 + max(task.memories) + len(task.memories) * per_t


def execute_task(task: Task) -> dict:
    """Run one task in this process."""
    from kmnrt.benchmarks.engines import open_engine
    from kmnrt.benchmarks.inputs import load_input
    from kmnrt.benchmarks.measure import measure_latency, measure_throughput, measure_video_length
    from kmnrt.benchmarks.read_peak import probe_read_peak
    from kmnrt.benchmarks.stats import rss_bytes

    if task.kind == "read_peak":
        return {"read_memory": probe_read_peak(task.backend, task.bundle, task.objects, task.memories, task.device)}
    bench_input = load_input(task.input, needed_frames(task))
    engine = open_engine(task.backend, task.bundle, task.device, natural_memory=task.kind == "video_length")
    try:
        if task.kind == "video_length":
            return {"engine": engine.describe(), "video_length": [measure_video_length(
                engine, bench_input, task.objects, task.frames, VIDEO_LENGTH_WINDOWS, task.progress)]}
        loaded = rss_bytes()
        if task.kind == "latency":
            results = measure_latency(engine, bench_input, task.objects, task.memories, task.frames, task.warmup,
                                      task.progress)
            for result in results:
                result["memory_bytes"]["rss_loaded"] = loaded
            return {"engine": engine.describe(), "results": results}
        return {"engine": engine.describe(), "throughput": measure_throughput(
            engine, bench_input, task.objects, task.memories[0], task.sessions, task.frames, task.warmup,
            task.progress)}
    finally:
        engine.close()


def run_task(task: Task, isolate: bool) -> dict:
    """Run one task, in a fresh Python process when ``isolate`` (its output and progress bars pass through)."""
    if not isolate:
        return execute_task(task)
    with tempfile.TemporaryDirectory(prefix="kmnrt-bench-") as tmp:
        task_file, result_file = Path(tmp) / "task.json", Path(tmp) / "result.json"
        task_file.write_text(json.dumps(asdict(task)))
        status = subprocess.run([sys.executable, "-m", "kmnrt.benchmarks.worker", str(task_file),
                                 str(result_file)]).returncode
        result = json.loads(result_file.read_text()) if result_file.is_file() else None
    if result and "error" in result:
        raise UserInputError(f"{task.label}: {result['error']}")
    if status != 0 or result is None:
        raise KmnrtError(f"the benchmark process for {task.label} failed with exit status {status} "
                         f"(its traceback is printed above)")
    return result


def run_benchmark(options: BenchOptions, save: Callable[[dict], None] | None = None) -> dict:
    """Everything ``kmnrt bench`` measures, as the JSON document. ``save`` gets the document after every task
    (``complete`` false until the last), so an interrupted long run keeps what it measured."""
    from kmnrt.benchmarks.environment import describe_environment
    from kmnrt.benchmarks.inputs import load_input

    manifest = check_options(options)
    tasks = plan_tasks(options)
    bench_input = load_input(options.input, max(needed_frames(t) for t in tasks))
    document = {
        "schema": SCHEMA, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": options.command, "environment": describe_environment(),
        "bundle": {"path": str(options.bundle), "config": manifest.model_config.name,
                   "input_size": list(manifest.input_size), "max_objects": manifest.max_objects,
                   "max_memory": manifest.max_memory, "precision": manifest.precision, "read": manifest.read,
                   "engine": manifest.engine, "checkpoint": manifest.checkpoint},
        "settings": {"backends": list(options.backends), "baseline": BASELINE, "memory": sorted(set(options.memory)),
                     "objects": list(options.objects), "frames": options.frames, "warmup": options.warmup,
                     "device": torch_device(options), "isolated_processes": options.isolate,
                     "sessions": list(options.sessions), "video_length": options.video_length},
        "input": bench_input.describe(), "engines": {}, "results": [], "read_memory": [], "throughput": [],
        "video_length": [], "notes": [], "complete": False,
    }
    if options.sessions and BASELINE in options.backends:
        document["notes"].append("throughput: the reference baseline has no batched step; it is not in that table")
    for index, task in enumerate(tasks, start=1):
        print(f"[{index}/{len(tasks)}] {task.label}", file=sys.stderr, flush=True)
        result = run_task(task, options.isolate)
        if "engine" in result:
            document["engines"][task.backend] = result["engine"]
        for key in ("results", "read_memory", "throughput", "video_length"):
            document[key] += result.get(key, [])
        add_speedups(document)
        document["complete"] = index == len(tasks)
        if save:
            save(document)
    return document


def add_speedups(document: dict) -> None:
    """``speedup`` per result: the same run's baseline median over this median, per stage and end to end."""
    from kmnrt.benchmarks.stats import speedups

    baseline = {(r["objects"], r["memory"]): r for r in document["results"] if r["backend"] == BASELINE}
    for result in document["results"]:
        reference = baseline.get((result["objects"], result["memory"]))
        result["speedup"] = speedups(result, reference) if reference else None
