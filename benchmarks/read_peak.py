"""The memory read's peak memory as a multiple of the affinity size A = N * T * (h*w)^2 * 4 bytes.

The read is run alone (meant for a process of its own, which ``kmnrt bench`` gives it): the backend's runner (the
runtime's session options for the read) or, for the baseline, the model's read with the memory stacked from a list
as the baseline does. The inputs (seeded Gaussian features; the read's memory use does not depend on their values)
are allocated first; then the RSS high-water mark is reset, the read runs twice (ONNX Runtime can grow on the
second run), and the peak is the high-water mark minus the RSS before the runs. On CUDA the peak is torch's
allocator peak over what was allocated before (ONNX Runtime and TensorRT allocate outside it: see ``device_used``).
"""

from __future__ import annotations

import gc
from pathlib import Path

import torch

from kmnrt.benchmarks.engines import BASELINE
from kmnrt.benchmarks.stats import peak_rss_bytes, reset_peak_rss, rss_bytes

RUNS = 2


def affinity_bytes(objects: int, memory: int, positions: int) -> int:
    """N * T * (h*w)^2 * 4: one fp32 affinity of every memory position with every query position."""
    return objects * memory * positions * positions * 4


def probe_read_peak(backend: str, bundle: str | Path, objects: int, memories: list[int],
                    device: str | None = None, seed: int = 0) -> list[dict]:
    from kmnrt.export.manifest import load_manifest
    from kmnrt.model.memory_read import MemoryRead
    from kmnrt.runtime.backends.base import load_runner

    manifest = load_manifest(bundle, verify=False)
    config = manifest.model_config
    h, w = manifest.input_size[0] // 16, manifest.input_size[1] // 16
    runner, reference_read = None, None
    if backend == BASELINE:
        target = torch.device(device or "cpu")
        reference_read = MemoryRead(manifest.read_config).eval()
    else:
        runner = load_runner(bundle, manifest, backend, device)
        target = runner.device
    results = []
    try:
        for memory in sorted(memories):
            generator = torch.Generator().manual_seed(seed)
            frames_k = [torch.randn(objects, config.key_dim, h, w, generator=generator).to(target)
                        for _ in range(memory)]
            frames_v = [torch.randn(objects, config.value_dim, h, w, generator=generator).to(target)
                        for _ in range(memory)]
            query_key = torch.randn(1, config.key_dim, h, w, generator=generator).to(target)
            valid = torch.ones(memory, objects, device=target)
            if runner is not None:
                inputs = {"memory_key": torch.stack(frames_k), "memory_value": torch.stack(frames_v),
                          "memory_valid": valid, "query_key": query_key}
                output = torch.zeros(objects, config.value_dim, h, w, device=target)
                del frames_k, frames_v

                def run() -> None:
                    runner.infer("memory_read", inputs, {"read": output})
            else:
                def run() -> None:
                    with torch.inference_mode():
                        reference_read(torch.stack(frames_k), torch.stack(frames_v), query_key, valid)
            gc.collect()
            results.append(_measure(run, target, backend, objects, memory, h * w))
            del run
            gc.collect()
    finally:
        if runner is not None:
            runner.deactivate()
    return results


def _measure(run, device: torch.device, backend: str, objects: int, memory: int, positions: int) -> dict:
    affinity = affinity_bytes(objects, memory, positions)
    record = {"backend": backend, "device": str(device), "objects": objects, "memory": memory,
              "positions": positions, "affinity_bytes": affinity}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(RUNS):
            run()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        free, total = torch.cuda.mem_get_info(device)
        record.update(peak_bytes=peak, measured_by="torch.cuda.max_memory_allocated", device_used=total - free)
    else:
        # Reset first, then read the baseline: the other way round, memory freed between the two readings put the
        # high-water mark under the baseline, and a read that allocates little measured a negative peak.
        if not reset_peak_rss() or (before := rss_bytes()) is None:
            record.update(peak_bytes=None, measured_by="unavailable (needs Linux /proc/self/clear_refs)")
            return record
        for _ in range(RUNS):
            run()
        peak = peak_rss_bytes() - before
        record.update(peak_bytes=peak, measured_by=f"RSS high-water over {RUNS} runs minus RSS before")
    record["multiple"] = record["peak_bytes"] / affinity
    return record
