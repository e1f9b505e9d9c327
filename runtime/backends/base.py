"""The runner protocol every backend implements, and the loader that builds a runner from a bundle.

In the style of Polygraphy's runners: a runner is activated (sessions or engines loaded), runs graphs, and is
deactivated; it is also a context manager. Unlike Polygraphy's ``infer(feed_dict) -> outputs``, a runner here
writes into **preallocated** output tensors, and its inputs are device tensors (torch tensors on the runner's
device), so features and the memory bank never leave the device between calls.

Backends (``BACKENDS``): ``onnxruntime`` (CPU) and ``onnxruntime-cuda`` (ONNX Runtime with IO binding),
``tensorrt`` (plans, ``execute_async_v3``) and ``torch`` (the model's own modules: reference and fallback);
``ort-cpu``/``ort-cuda``/``trt`` are accepted as aliases. ``auto`` picks TensorRT, then ONNX Runtime CUDA, then
ONNX Runtime CPU, from what the machine and the bundle offer, and says why it skipped the faster ones.
onnxruntime and tensorrt are imported only when their runner is built.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from kmnrt.errors import BundleError, UserInputError

if TYPE_CHECKING:
    from kmnrt.export.manifest import Manifest

BACKENDS = ("torch", "onnxruntime", "onnxruntime-cuda", "tensorrt")
ALIASES = {"ort-cpu": "onnxruntime", "ort-cuda": "onnxruntime-cuda", "trt": "tensorrt"}
BACKEND_CHOICES = ("auto", *BACKENDS, *ALIASES)
AUTO_ORDER = ("tensorrt", "onnxruntime-cuda", "onnxruntime")


class BaseRunner(ABC):
    """The runner protocol: ``activate`` / ``infer`` / ``deactivate``, and ``with runner:``.

    Attributes:
        name: the backend, one of :data:`BACKENDS`.
        device: where the inputs and outputs live (``cpu`` or ``cuda:i``).
        stream: the CUDA stream the runner's work is queued on (``None`` on the CPU). The tracker queues its own
            torch work on the same stream, so no host synchronisation is needed between graphs.
    """

    name: str = "base"

    def __init__(self, device: torch.device, stream: torch.cuda.Stream | None = None):
        self.device = torch.device(device)
        self.stream = stream
        self.is_active = False
        self.selection = f"backend {self.name}"  # how the backend was chosen (with `auto`: what was skipped, why)

    def activate(self) -> None:
        if not self.is_active:
            self.activate_impl()
            self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def __enter__(self) -> BaseRunner:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def infer(self, graph: str, inputs: Mapping[str, Tensor], outputs: Mapping[str, Tensor]) -> None:
        """Run ``graph``; ``outputs`` are preallocated contiguous tensors of the exact output shapes, written in
        place. Returns when the work is queued (CUDA) or done (CPU)."""
        if not self.is_active:
            raise RuntimeError(f"{self.name} runner is not active: call activate() or use it in a `with` block")
        for name, tensor in (*inputs.items(), *outputs.items()):
            if not tensor.is_contiguous() or tensor.device != self.device:
                raise ValueError(f"{graph}.{name}: runner buffers must be contiguous tensors on {self.device}, "
                                 f"got {'non-contiguous ' if not tensor.is_contiguous() else ''}{tensor.device}")
        self.infer_impl(graph, inputs, outputs)

    @abstractmethod
    def activate_impl(self) -> None: ...

    @abstractmethod
    def deactivate_impl(self) -> None: ...

    @abstractmethod
    def infer_impl(self, graph: str, inputs: Mapping[str, Tensor], outputs: Mapping[str, Tensor]) -> None: ...

    def describe(self) -> str:
        """One line for logs: backend, device and, where it matters, the providers or the engine."""
        return f"{self.name} on {self.device}"


def physical_cores() -> int:
    """Physical CPU cores this process may use (ONNX Runtime's intra-op threads; hyper-threads do not help)."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        pairs, physical_id = set(), "0"
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "physical id":
                    physical_id = value.strip()
                elif key.strip() == "core id":
                    pairs.add((physical_id, value.strip()))
        cores = len(pairs) or allowed
    except OSError:
        cores = allowed
    return max(1, min(cores, allowed))


def parse_device(device: str | torch.device | None, default: str) -> torch.device:
    """``device`` (``default`` when None) as a torch.device; a name torch does not know is a user error."""
    try:
        return torch.device(device or default)
    except (RuntimeError, TypeError, ValueError):
        raise UserInputError(f"device {device!r} is not one torch knows: give cpu, cuda or cuda:N") from None


def cuda_device(device: str | torch.device | None) -> torch.device:
    """The CUDA device a GPU backend uses, checked to exist."""
    device = parse_device(device, "cuda")
    if not torch.cuda.is_available():
        raise UserInputError("no CUDA device is available to PyTorch (the runtime keeps its GPU buffers in torch "
                             "tensors); install a CUDA build of torch, or use the onnxruntime backend")
    if device.type != "cuda":
        raise UserInputError(f"a GPU backend needs a cuda device, got {device}")
    return torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())


def backend_unavailable_reason(backend: str, manifest: Manifest) -> str | None:
    """Why ``backend`` cannot run this bundle on this machine, or ``None`` if it can."""
    import importlib.util

    if backend == "torch":
        return None if manifest.weights else "the bundle has no weights file"
    if backend in ("onnxruntime", "onnxruntime-cuda") and importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed (pip install onnxruntime, or onnxruntime-gpu for CUDA)"
    if backend == "onnxruntime-cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return (f"this onnxruntime build has no CUDAExecutionProvider (available: "
                    f"{', '.join(onnxruntime.get_available_providers())}); install onnxruntime-gpu")
        if not torch.cuda.is_available():
            return "PyTorch sees no CUDA device"
    if backend == "tensorrt":
        if importlib.util.find_spec("tensorrt") is None:
            return "tensorrt is not installed"
        if not torch.cuda.is_available():
            return "PyTorch sees no CUDA device"
        missing = [name for name, record in manifest.graphs.items() if not record.plan]
        if missing:
            return f"the bundle has no TensorRT plans (for {', '.join(missing)}); export it with --engine tensorrt"
    return None


def resolve_backend(backend: str, manifest: Manifest) -> tuple[str, list[str]]:
    """``auto`` -> the first usable of :data:`AUTO_ORDER`; a named backend (or alias) is checked. Returns (backend,
    notes on the ones skipped, for the user)."""
    if backend not in BACKEND_CHOICES:
        raise UserInputError(f"unknown backend {backend!r}: choose one of {', '.join(BACKEND_CHOICES)}")
    backend = ALIASES.get(backend, backend)
    if backend != "auto":
        reason = backend_unavailable_reason(backend, manifest)
        if reason:
            raise UserInputError(f"backend {backend} cannot run this bundle here: {reason}")
        return backend, []
    skipped = []
    for candidate in AUTO_ORDER:
        reason = backend_unavailable_reason(candidate, manifest)
        if reason is None:
            return candidate, skipped
        skipped.append(f"{candidate}: {reason}")
    raise UserInputError("no backend can run this bundle here: " + "; ".join(skipped))


def load_runner(bundle_dir: str | os.PathLike, manifest: Manifest, backend: str = "auto",
                device: str | torch.device | None = None) -> BaseRunner:
    """Build and activate the runner of ``backend`` (or ``auto``) for the bundle in ``bundle_dir``."""
    bundle_dir = Path(bundle_dir)
    name, skipped = resolve_backend(backend, manifest)
    if backend == "auto" and name == "onnxruntime" and device is not None and parse_device(device, "cpu").type != "cpu":
        raise UserInputError(f"--device {device} asks for a GPU, but no GPU backend can run this bundle here ("
                             + "; ".join(skipped) + "); leave --device out to run on the CPU")
    if name in ("onnxruntime", "onnxruntime-cuda"):
        from kmnrt.runtime.backends.ort import OrtRunner

        runner: BaseRunner = OrtRunner(bundle_dir, manifest, cuda=name == "onnxruntime-cuda", device=device)
    elif name == "tensorrt":
        from kmnrt.runtime.backends.trt import TrtRunner

        runner = TrtRunner(bundle_dir, manifest, device=device)
    else:
        from kmnrt.runtime.backends.pytorch import TorchRunner

        runner = TorchRunner.from_bundle(bundle_dir, manifest, device=device)
    if backend == "auto":
        runner.selection = f"auto chose {name}" + (f" (skipped {'; '.join(skipped)})" if skipped else "")
    runner.activate()
    return runner


def check_graph_io(graph: str, expected: list[dict], found: dict[str, Sequence], where: str) -> None:
    """A graph file whose inputs or outputs are not the manifest's (``expected``: its tensor records; ``found``:
    the file's tensor names and shapes) is a damaged or foreign bundle: a graph of another size or config would
    otherwise fail at its first frame with the engine's own error. A manifest's symbolic dims (N, T, ...) match any
    dim; its numbers only the same number."""
    if sorted(t["name"] for t in expected) != sorted(found):
        raise BundleError(f"{where}: graph {graph} has tensors {sorted(found)}, the manifest says "
                          f"{sorted(t['name'] for t in expected)}; rebuild the bundle with `kmnrt export`")
    for tensor in expected:
        shape = [d if isinstance(d, int) and d >= 0 else "?" for d in found[tensor["name"]]]
        wanted = list(tensor["shape"])
        if len(shape) != len(wanted) or any(isinstance(w, int) and w != d for w, d in zip(wanted, shape)):
            raise BundleError(f"{where}: tensor {tensor['name']} of graph {graph} has shape {shape}, the manifest "
                              f"says {wanted} (a graph of another bundle?); rebuild the bundle with `kmnrt export`")
