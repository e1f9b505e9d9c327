"""The measurements of one engine: per-frame latency at fixed (N, T), and throughput of K sessions.

Latency: for each T (ascending, one session grown frame by frame), ``warmup`` steps are run and discarded, then
``frames`` steps are timed: end to end with a device synchronisation before both clock reads, per stage as the
engine reports (the runtime: CUDA events or perf_counter; the baseline: synchronised perf_counter). Process RSS is
read before the timed steps and its high-water mark is reset there, so ``peak_rss`` is the peak *during* the timed
steps; on CUDA, torch's allocator peak is reset at the same point.

Video length: one session runs a long video with memory built as a real video builds it (every ``mem_every``-th
frame permanent): the runtime's bank stops growing at the bundle's max memory and overwrites in place; the
baseline's grows without bound, as in STM's evaluation. Per window of frames: the median and p90 end to end, the
memory frames T read, and the process RSS at the window's end.

Throughput: K sessions, each on its own stretch of the frames, step together through ``Tracker.step_batch``
(one query-encoder call for all K frames), then one after the other through ``step``, on the same sessions.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections.abc import Iterator

import torch
from tqdm import tqdm

from kmnrt.benchmarks.baseline import synchronize
from kmnrt.benchmarks.engines import Engine, settle_memory, timed_step
from kmnrt.benchmarks.inputs import BenchInput
from kmnrt.benchmarks.stats import END_TO_END, peak_rss_bytes, reset_peak_rss, rss_bytes, summarize, \
    summarize_stages

SESSION_OFFSET = 17  # frames between the starting points of throughput sessions


def frame_stream(bench_input: BenchInput, offset: int = 0) -> Iterator:
    return (bench_input.frame(i) for i in itertools.count(offset))


def measure_latency(engine: Engine, bench_input: BenchInput, objects: int, memories: list[int], frames: int,
                    warmup: int, progress: bool = True) -> list[dict]:
    """One result per T (see the module docstring)."""
    mask = bench_input.object_mask(objects)
    stream = frame_stream(bench_input)
    state = engine.start(next(stream), mask)
    results = []
    for memory in sorted(memories):  # ascending: the session only grows (settle_memory refuses to shrink it)
        settle_memory(engine, state, memory, stream)
        for _ in range(warmup):
            timed_step(engine, state, next(stream), memory)
        rss_start = rss_bytes()
        peak_reset = reset_peak_rss()
        _reset_device_peak(engine.device)
        totals, stages = [], []
        bar = tqdm(range(frames), desc=f"{engine.name} N={objects} T={memory}", file=sys.stderr, leave=False,
                   disable=not progress or None, unit="frame")
        for _ in bar:
            elapsed, times = timed_step(engine, state, next(stream), memory)
            totals.append(elapsed)
            stages.append(times)
        end_to_end = summarize(totals)
        results.append({
            "backend": engine.name, "device": str(engine.device), "objects": objects, "memory": memory,
            "frames": frames, "warmup": warmup, END_TO_END: end_to_end, "stages": summarize_stages(stages),
            "fps": 1000.0 / end_to_end["median_ms"],
            "memory_bytes": {"rss_start": rss_start, "peak_rss": peak_rss_bytes(),
                             "peak_rss_scope": "timed steps" if peak_reset else "whole process",
                             **_device_memory(engine.device)},
        })
    return results


def measure_video_length(engine: Engine, bench_input: BenchInput, objects: int, length: int, windows: int,
                         progress: bool = True) -> dict:
    """Cost per frame along one video of ``length`` frames after the first, in ``windows`` equal windows."""
    mask = bench_input.object_mask(objects)
    stream = frame_stream(bench_input)
    state = engine.start(next(stream), mask)
    size = max(1, math.ceil(length / windows))
    rows, totals = [], []
    bar = tqdm(range(1, length + 1), desc=f"{engine.name} N={objects} video of {length}", file=sys.stderr,
               leave=False, disable=not progress or None, unit="frame")
    for index in bar:
        memory = engine.memory_frames(state)  # what this step reads
        synchronize(engine.device)
        start = time.perf_counter()
        engine.step(state, next(stream))
        synchronize(engine.device)
        totals.append(time.perf_counter() - start)
        if len(totals) == size or index == length:
            summary = summarize(totals)
            rows.append({"first_frame": index - len(totals) + 1, "last_frame": index, "memory_frames": memory,
                         "median_ms": summary["median_ms"], "p90_ms": summary["p90_ms"], "rss_bytes": rss_bytes()})
            totals = []
    return {"backend": engine.name, "device": str(engine.device), "objects": objects, "length": length,
            "windows": rows}


def measure_throughput(engine: Engine, bench_input: BenchInput, objects: int, memory: int, sessions: list[int],
                       frames: int, warmup: int, progress: bool = True) -> list[dict]:
    """For each K: aggregate frames per second and per-frame latency, batched (step_batch) vs sequential."""
    if not hasattr(engine, "step_batch"):
        raise ValueError(f"{engine.name} has no batched step")
    mask = bench_input.object_mask(objects)
    results = []
    for count in sessions:
        streams = [frame_stream(bench_input, k * SESSION_OFFSET) for k in range(count)]
        states = [engine.start(next(s), mask) for s in streams]
        for state, stream in zip(states, streams):
            settle_memory(engine, state, memory, stream)
        rounds = max(1, math.ceil(frames / count))
        for _ in range(warmup):
            _batched_round(engine, states, streams, memory)
        bar = tqdm(total=2 * rounds * count, desc=f"{engine.name} K={count} N={objects} T={memory}",
                   file=sys.stderr, leave=False, disable=not progress or None, unit="frame")
        batched = []
        for _ in range(rounds):
            batched.append(_batched_round(engine, states, streams, memory))
            bar.update(count)
        sequential = []
        for _ in range(rounds):
            for state, stream in zip(states, streams):
                sequential.append(timed_step(engine, state, next(stream), memory)[0])
                bar.update(1)
        bar.close()
        batched_fps = count * rounds / sum(batched)
        sequential_fps = count * rounds / sum(sequential)
        results.append({
            "backend": engine.name, "device": str(engine.device), "objects": objects, "memory": memory,
            "sessions": count, "rounds": rounds,
            "batched": {"fps": batched_fps, "latency": summarize(batched)},
            "sequential": {"fps": sequential_fps, "latency": summarize(sequential)},
            "speedup": batched_fps / sequential_fps,
        })
    return results


def _batched_round(engine: Engine, states: list, streams: list[Iterator], memory: int) -> float:
    """One step_batch over all sessions: its wall seconds (every frame of the round is done when it returns)."""
    frames = [next(s) for s in streams]
    synchronize(engine.device)
    start = time.perf_counter()
    engine.step_batch(states, frames)
    synchronize(engine.device)
    elapsed = time.perf_counter() - start
    if memory == 1:
        for state in states:
            engine.drop_temporary(state)
    return elapsed


def _reset_device_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _device_memory(device: torch.device) -> dict:
    """torch's allocator peak since the reset, and the device's used memory now (it includes ONNX Runtime's and
    TensorRT's own allocations, which torch's counter does not see)."""
    if device.type != "cuda":
        return {}
    free, total = torch.cuda.mem_get_info(device)
    return {"device_peak_allocated": torch.cuda.max_memory_allocated(device), "device_used": total - free}
