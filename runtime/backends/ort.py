"""ONNX Runtime runner, CPU or CUDA, with IO binding of torch buffers (one code path for both).

Every input and output is bound by pointer (``IOBinding.bind_input/bind_output`` with the tensor's
``data_ptr()``), so ONNX Runtime reads the bank and writes the features in place: no numpy round trip, no copy.
With CUDA the session runs on the runner's torch stream (``user_compute_stream``) and ``Run`` does not
synchronise the device (run option ``disable_synchronize_execution_providers``): the graphs and the tracker's
torch work queue on one stream, in order.

Session options follow the measurements in ``docs/export-notes.md`` §3/§6: ``ORT_ENABLE_ALL``, intra-op threads
= physical cores; for the memory read, memory patterns and the CPU arena off (otherwise the process keeps the
read's peak resident and grows on the second run); subnormals flushed to zero (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from kmnrt.errors import BundleError, UserInputError
from kmnrt.export.graphs import GRAPH_NAMES
from kmnrt.runtime.backends.base import BaseRunner, check_graph_io, cuda_device, parse_device, physical_cores

if TYPE_CHECKING:
    from kmnrt.export.manifest import Manifest

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64,
                 torch.int32: np.int32}
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def flushing_subnormals() -> bool:
    """Whether this thread flushes float32 subnormals to zero (x86 FTZ/DAZ): a one-element product in torch runs
    on the calling thread."""
    return bool((torch.tensor(1.0e-39) * 1.0).eq(0).item())


@contextmanager
def subnormals_flushed() -> Iterator[None]:
    """This thread flushes subnormals to zero inside the block, and gets its own mode back after it.

    KMN's Gaussian drives many attention weights into float32's subnormals, which x86 CPUs process about a hundred
    times slower, and the exported read keeps the plain softmax (model/memory_read.py). ONNX Runtime's
    ``session.set_denormal_as_zero`` sets FTZ/DAZ on its pool threads, but the calling thread computes a share of
    every run too, and ONNX Runtime sets that thread's mode only when it creates a session, and leaves it set: the
    runs would be slow on any other thread (the service runs on its device worker), and the caller's own
    arithmetic would change behind its back.
    """
    was_flushing = flushing_subnormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if not was_flushing:
            torch.set_flush_denormal(False)


class OrtRunner(BaseRunner):
    """The bundle's four ONNX graphs in ONNX Runtime sessions."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, cuda: bool = False,
                 device: str | torch.device | None = None, threads: int | None = None):
        self.cuda = cuda
        self.name = "onnxruntime-cuda" if cuda else "onnxruntime"
        torch_device = cuda_device(device) if cuda else torch.device("cpu")
        if not cuda and device is not None and parse_device(device, "cpu").type != "cpu":
            raise UserInputError(f"backend onnxruntime runs on the cpu, not {device}; use onnxruntime-cuda for a GPU")
        super().__init__(torch_device, torch.cuda.Stream(torch_device) if cuda else None)
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest
        self.threads = threads or physical_cores()
        self.sessions: dict = {}
        self._run_options = None

    def activate_impl(self) -> None:
        import onnxruntime as ort

        providers = self._providers(ort)
        self._run_options = ort.RunOptions()
        if self.cuda:
            self._run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        for graph in GRAPH_NAMES:
            record = self.manifest.graphs.get(graph)
            if record is None:
                raise BundleError(f"bundle {self.bundle_dir} has no graph {graph!r} in its manifest")
            path = self.bundle_dir / record.onnx
            try:
                with subnormals_flushed():  # undoes what creating the session does to this thread's mode
                    session = ort.InferenceSession(str(path), self._session_options(ort, graph), providers=providers)
            except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
                raise BundleError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0]}") from None
            if self.cuda and CUDA_PROVIDER not in session.get_providers():
                raise UserInputError(
                    f"ONNX Runtime did not enable {CUDA_PROVIDER} for {path.name} (providers in use: "
                    f"{', '.join(session.get_providers())}); refusing to fall back to the CPU silently. Check that "
                    f"onnxruntime-gpu matches the installed CUDA and cuDNN, or choose --backend onnxruntime")
            check_graph_io(graph, record.inputs, {i.name: i.shape for i in session.get_inputs()}, str(path))
            check_graph_io(graph, record.outputs, {o.name: o.shape for o in session.get_outputs()}, str(path))
            self.sessions[graph] = session

    def _providers(self, ort) -> list:
        if not self.cuda:
            return [CPU_PROVIDER]
        if CUDA_PROVIDER not in ort.get_available_providers():
            raise UserInputError(f"this onnxruntime has no {CUDA_PROVIDER} (available: "
                                 f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu")
        options = {"device_id": str(self.device.index), "user_compute_stream": str(self.stream.cuda_stream),
                   "arena_extend_strategy": "kSameAsRequested"}
        return [(CUDA_PROVIDER, options), CPU_PROVIDER]

    def _session_options(self, ort, graph: str):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about unused initialisers etc. are noise for users
        # ORT's idle threads spin after each run by default, taking the cores from the torch work between graphs
        # (measured: the frame-size post-processing 10x slower); the graphs here are called back to back anyway.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # subnormals flushed to zero on ORT's pool threads; on the calling thread by subnormals_flushed, per run
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
        if graph == "memory_read":
            options.enable_mem_pattern = False  # T changes with every memory frame: patterns never repeat
            options.enable_cpu_mem_arena = False  # the arena keeps the read's peak resident
        return options

    def deactivate_impl(self) -> None:
        self.sessions.clear()
        self._run_options = None

    def infer_impl(self, graph: str, inputs: Mapping[str, Tensor], outputs: Mapping[str, Tensor]) -> None:
        session = self.sessions[graph]
        binding = session.io_binding()  # per call: cheap, and keeps concurrent sessions of one runner apart
        device_type = "cuda" if self.cuda else "cpu"
        device_id = self.device.index or 0
        for name, tensor in inputs.items():
            binding.bind_input(name, device_type, device_id, _NUMPY_DTYPES[tensor.dtype], tuple(tensor.shape),
                               tensor.data_ptr())
        for name, tensor in outputs.items():
            binding.bind_output(name, device_type, device_id, _NUMPY_DTYPES[tensor.dtype], tuple(tensor.shape),
                                tensor.data_ptr())
        if self.cuda:
            session.run_with_iobinding(binding, self._run_options)
            return
        with subnormals_flushed():
            session.run_with_iobinding(binding, self._run_options)

    def describe(self) -> str:
        providers = next(iter(self.sessions.values())).get_providers() if self.sessions else []
        return f"{self.name} on {self.device} (providers: {', '.join(providers)}; {self.threads} threads)"
