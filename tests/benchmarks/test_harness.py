"""The harness: the JSON schema, the speed-ups, fixed memory sizes, and the baseline's fidelity (no timings)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kmnrt.benchmarks.baseline import ReferenceEngine
from kmnrt.benchmarks.engines import RuntimeEngine, settle_memory, timed_step
from kmnrt.benchmarks.inputs import BenchInput, load_input, mask_with_objects
from kmnrt.benchmarks.measure import frame_stream
from kmnrt.benchmarks.read_peak import affinity_bytes
from kmnrt.benchmarks.stats import END_TO_END, MAIN_STAGES, PERCENTILES, summarize
from kmnrt.benchmarks.suite import BenchOptions, plan_tasks, run_task

BACKENDS = ("reference", "torch", "onnxruntime")


def test_document_has_every_configuration_stage_and_percentile(bench_document: dict) -> None:
    doc = bench_document
    assert doc["schema"] == "kmnrt-bench-v1" and doc["complete"] is True
    assert doc["environment"]["physical_cores"] >= 1 and doc["environment"]["versions"]["torch"]
    assert doc["bundle"]["input_size"] == [64, 112]
    assert doc["input"]["masks"].startswith("centre box")
    configurations = {(r["backend"], r["objects"], r["memory"]) for r in doc["results"]}
    assert configurations == {(b, n, t) for b in BACKENDS for n in (1, 2) for t in (1, 3)}
    for result in doc["results"]:
        assert result["frames"] == 3 and result[END_TO_END]["samples"] == 3
        for stage in MAIN_STAGES:
            summary = result["stages"][stage]
            assert set(PERCENTILES) <= set(summary) and summary["samples"] == 3
            assert 0 <= summary["median_ms"] <= summary["p90_ms"] <= summary["p99_ms"] <= summary["max_ms"]
        e2e = result[END_TO_END]
        assert 0 < e2e["min_ms"] <= e2e["median_ms"] <= e2e["p99_ms"] <= e2e["max_ms"]
        assert result["fps"] == pytest.approx(1000.0 / e2e["median_ms"])
        assert result["memory_bytes"]["peak_rss"] >= result["memory_bytes"]["rss_start"] > 0
    json.dumps(doc)  # the document is plain JSON


def test_speedups_are_against_the_same_runs_baseline(bench_document: dict) -> None:
    results = bench_document["results"]
    baseline = {(r["objects"], r["memory"]): r for r in results if r["backend"] == "reference"}
    for result in results:
        base = baseline[(result["objects"], result["memory"])]
        expected = base[END_TO_END]["median_ms"] / result[END_TO_END]["median_ms"]
        assert result["speedup"][END_TO_END] == pytest.approx(expected)
        for stage in MAIN_STAGES:
            assert result["speedup"][stage] == pytest.approx(
                base["stages"][stage]["median_ms"] / result["stages"][stage]["median_ms"])
        if result["backend"] == "reference":
            assert result["speedup"][END_TO_END] == pytest.approx(1.0)


def test_read_probe_reports_multiples_of_the_affinity_size(bench_document: dict) -> None:
    probes = bench_document["read_memory"]
    assert {(p["backend"], p["objects"], p["memory"]) for p in probes} == \
        {(b, n, t) for b in BACKENDS for n in (1, 2) for t in (1, 3)}
    for probe in probes:
        assert probe["positions"] == 4 * 7  # 64x112 input -> 4x7 feature cells
        assert probe["affinity_bytes"] == probe["objects"] * probe["memory"] * 28 * 28 * 4
        assert probe["peak_bytes"] >= 0
        assert probe["multiple"] == pytest.approx(probe["peak_bytes"] / probe["affinity_bytes"])
    assert affinity_bytes(1, 20, 30 * 54) == 20 * 1620 ** 2 * 4  # paper size: 210 MB per object


def test_throughput_compares_batched_and_sequential(bench_document: dict) -> None:
    runs = bench_document["throughput"]
    assert {(r["backend"], r["sessions"]) for r in runs} == {(b, k) for b in ("torch", "onnxruntime") for k in (1, 2)}
    for run in runs:
        assert (run["objects"], run["memory"]) == (1, 3)  # default point: smallest N, largest T
        assert run["batched"]["latency"]["samples"] == run["rounds"]
        assert run["sequential"]["latency"]["samples"] == run["rounds"] * run["sessions"]
        assert run["speedup"] == pytest.approx(run["batched"]["fps"] / run["sequential"]["fps"])
    assert any("reference" in note for note in bench_document["notes"])


@pytest.mark.parametrize("backend", ["reference", "onnxruntime"])
@pytest.mark.parametrize("memory", [1, 2, 4])
def test_memory_is_held_at_exactly_t(tiny_bundle: Path, frames_dir: Path, backend: str, memory: int) -> None:
    bench_input = load_input(frames_dir, 12)
    engine = ReferenceEngine.from_bundle(tiny_bundle) if backend == "reference" else \
        RuntimeEngine(tiny_bundle, backend)
    stream = frame_stream(bench_input)
    state = engine.start(next(stream), bench_input.object_mask(1))
    settle_memory(engine, state, memory, stream)
    for _ in range(3):
        assert engine.memory_frames(state) == memory
        elapsed, stages = timed_step(engine, state, next(stream), memory)
        assert elapsed > 0 and set(MAIN_STAGES) <= set(stages)
    assert engine.memory_frames(state) == memory
    assert engine.permanent_frames(state) == max(1, memory - 1)
    engine.close()


def test_baseline_segments_like_the_reference_tracker(tiny_bundle: Path, frames_dir: Path) -> None:
    """Every frame memorised (fill) is the reference tracker with mem_every=1: the masks must agree."""
    from kmnrt.model.reference import ReferenceTracker, TrackerConfig

    bench_input = load_input(frames_dir, 6)
    frames, mask = bench_input.frames[:5], bench_input.object_mask(2)
    engine = ReferenceEngine.from_bundle(tiny_bundle)
    reference = list(ReferenceTracker(engine.model, TrackerConfig(mem_every=1)).track(frames, mask))
    state = engine.start(frames[0], mask)
    for index, frame in enumerate(frames[1:], start=1):
        engine.fill(state, [frame])
        np.testing.assert_array_equal(state.mask, reference[index].labels)
    assert engine.memory_frames(state) == 5


def test_object_masks_are_split_to_the_requested_count() -> None:
    annotation = np.zeros((20, 30), np.uint8)
    annotation[5:15, 4:24] = 255  # DAVIS 2016 style: one object with value 255
    for objects in (1, 2, 3, 5):
        mask = mask_with_objects(annotation, objects)
        assert sorted(np.unique(mask)) == list(range(objects + 1))
        assert ((mask > 0) == (annotation > 0)).all()  # the same pixels, divided
    two = np.zeros((8, 8), np.uint8)
    two[1:3, 1:3], two[5:7, 5:7] = 7, 9
    assert sorted(np.unique(mask_with_objects(two, 1))) == [0, 1]  # the first object only


def test_frames_are_replayed_back_and_forth() -> None:
    frames = [np.full((2, 2, 3), i, np.uint8) for i in range(4)]
    replay = BenchInput("test", frames, np.ones((2, 2), np.uint8), "test")
    assert [int(replay.frame(i)[0, 0, 0]) for i in range(10)] == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]


def test_summary_percentiles_in_milliseconds() -> None:
    summary = summarize([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert summary["median_ms"] == pytest.approx(50.5)
    assert summary["p90_ms"] == pytest.approx(90.1)
    assert summary["p99_ms"] == pytest.approx(99.01)
    assert summary["samples"] == 100


def test_a_task_runs_in_its_own_process(tiny_bundle: Path, frames_dir: Path) -> None:
    options = BenchOptions(bundle=tiny_bundle, backends=("onnxruntime",), memory=(2,), objects=(1,), frames=2,
                           warmup=0, input=frames_dir, read_probe=False, progress=False)
    [task] = plan_tasks(options)
    result = run_task(task, isolate=True)
    [latency] = result["results"]
    assert (latency["backend"], latency["memory"], latency[END_TO_END]["samples"]) == ("onnxruntime", 2, 2)
    assert latency["memory_bytes"]["peak_rss_scope"] == "timed steps"


def test_a_long_video_holds_the_runtimes_memory_at_capacity_while_the_baseline_grows(bench_document: dict) -> None:
    runs = {r["backend"]: r for r in bench_document["video_length"]}
    assert set(runs) == {"reference", "torch", "onnxruntime"}
    max_memory = bench_document["bundle"]["max_memory"]
    for run in runs.values():
        windows = run["windows"]
        assert len(windows) == 10 and windows[0]["first_frame"] == 1 and windows[-1]["last_frame"] == 60
        assert all(w["median_ms"] > 0 for w in windows)
        memory = [w["memory_frames"] for w in windows]
        assert memory == sorted(memory)  # never shrinks
    for backend in ("torch", "onnxruntime"):
        assert runs[backend]["windows"][-1]["memory_frames"] == max_memory
    # first frame + frames 5, 10, ..., 55 + the previous frame, concatenated without a cap
    assert runs["reference"]["windows"][-1]["memory_frames"] == 1 + 11 + 1 > max_memory


def test_a_folder_of_sequences_is_benchmarked_on_its_first_and_says_so(shared_vos: Path, capsys) -> None:
    """--input may be a DAVIS tree or a folder of sequence folders (the shared test data): one video is measured,
    named in the terminal and in the results' source."""
    bench_input = load_input(shared_vos, 3)
    names = sorted(path.name for path in shared_vos.iterdir() if (path / "JPEGImages").is_dir())
    assert bench_input.describe()["source"] == f"{shared_vos} (sequence {names[0]})"
    assert bench_input.describe()["masks"].startswith("annotation ")
    assert (f"--input {shared_vos} holds {len(names)} sequences; benchmarking the first, {names[0]}"
            in capsys.readouterr().err)
