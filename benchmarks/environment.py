"""What a benchmark ran on: CPU model and cores, memory, GPU and driver, library versions; and the device's short
name used in result file names (``benchmarks/results/<device>-<date>.json``)."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import torch

from kmnrt.versions import package_versions

PACKAGES = ("kmn-rt", "torch", "onnxruntime", "onnxruntime-gpu", "onnx", "numpy", "tensorrt", "opencv-python-headless")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_total_bytes() -> int | None:
    try:
        match = re.search(r"^MemTotal:\s+(\d+)\s+kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def gpu_info() -> dict | None:
    if not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    info = {"name": props.name, "memory_bytes": props.total_memory,
            "compute_capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "driver": None}
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
            info["driver"] = out.strip().splitlines()[index] if out.strip() else None
        except (OSError, subprocess.SubprocessError, IndexError):
            pass
    return info


def describe_environment() -> dict:
    from kmnrt.runtime.backends.base import physical_cores

    gpu = gpu_info()
    return {"cpu": cpu_model(), "physical_cores": physical_cores(), "logical_cpus": _logical_cpus(),
            "torch_threads": torch.get_num_threads(), "memory_bytes": memory_total_bytes(), "gpu": gpu,
            "platform": platform.platform(), "versions": package_versions(PACKAGES), "device_name": device_name(gpu)}


def device_name(gpu: dict | None) -> str:
    """A short file-name-safe device name: ``nvidia-h100-80gb-hbm3`` or ``cpu-amd-epyc-2c``."""
    if gpu:
        return _slug(gpu["name"])
    from kmnrt.runtime.backends.base import physical_cores

    return f"cpu-{_slug(cpu_model())}-{physical_cores()}c"


def _logical_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _slug(text: str) -> str:
    text = re.sub(r"\(R\)|\(TM\)|CPU|Processor|@.*$", "", text, flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "device"
