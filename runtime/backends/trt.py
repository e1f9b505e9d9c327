"""TensorRT runner (TensorRT 10 API): deserialised plans, named tensor addresses, one CUDA stream.

Each graph's plan gets one execution context. A call sets the input shapes (N and T change between calls), points
every input and output at the torch buffer (``set_tensor_address(name, tensor.data_ptr())``) and queues the
engine on the runner's stream with ``execute_async_v3``: no copies, no host synchronisation. Plans are only valid
for the GPU, TensorRT version and driver they were built with; the manifest records them and the runner refuses a
mismatch with a message saying to rebuild, instead of failing deep inside TensorRT.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from kmnrt.errors import BundleError
from kmnrt.export.graphs import GRAPH_NAMES
from kmnrt.runtime.backends.base import BaseRunner, check_graph_io, cuda_device

if TYPE_CHECKING:
    from kmnrt.export.manifest import Manifest


def plan_incompatibility(manifest: Manifest, device: torch.device) -> str | None:
    """Why this machine cannot run the bundle's plans (TensorRT version or GPU differ), or ``None``.

    Compares the manifest's ``tensorrt`` record with the installed TensorRT and the GPU's compute capability (a
    plan runs on any GPU of the same capability; the exporter's ``check_plan_compatibility`` also wants the same
    GPU name, since it is about to rebuild anyway).
    """
    import tensorrt as trt

    record = manifest.tensorrt or {}
    built_version = record.get("version")
    if built_version and built_version != trt.__version__:
        return (f"its plans were built with TensorRT {built_version}, this machine has {trt.__version__}; "
                f"rebuild them here with `kmnrt export`")
    capability = record.get("compute_capability")
    if capability:
        here = ".".join(str(v) for v in torch.cuda.get_device_capability(device))
        if str(capability) != here:
            return (f"its plans were built for compute capability {capability} ({record.get('gpu', 'unknown GPU')}), "
                    f"this GPU ({torch.cuda.get_device_name(device)}) is {here}; rebuild them here with `kmnrt export`")
    return None


class TrtRunner(BaseRunner):
    """The bundle's four TensorRT plans on one GPU."""

    name = "tensorrt"

    def __init__(self, bundle_dir: Path, manifest: Manifest, device: str | torch.device | None = None):
        torch_device = cuda_device(device)
        super().__init__(torch_device, torch.cuda.Stream(torch_device))
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest
        self.engines: dict = {}
        self.contexts: dict = {}
        self.inputs: dict[str, set[str]] = {}
        self._lock = threading.Lock()  # an execution context runs one call at a time
        self._runtime = None

    def activate_impl(self) -> None:
        import tensorrt as trt

        problem = plan_incompatibility(self.manifest, self.device)
        if problem:
            raise BundleError(f"bundle {self.bundle_dir} cannot run with TensorRT here: {problem}")
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with torch.cuda.device(self.device):
            for graph in GRAPH_NAMES:
                record = self.manifest.graphs[graph]
                path = self.bundle_dir / record.plan
                engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
                if engine is None:
                    raise BundleError(f"TensorRT could not deserialise {path} (built for another TensorRT or GPU?); "
                                      f"rebuild the bundle here with `kmnrt export`")
                names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
                inputs = {n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
                shapes = {n: tuple(engine.get_tensor_shape(n)) for n in names}  # -1: a dynamic dim
                check_graph_io(graph, record.inputs, {n: shapes[n] for n in inputs}, str(path))
                check_graph_io(graph, record.outputs, {n: shapes[n] for n in names if n not in inputs}, str(path))
                not_fp32 = [n for n in names if engine.get_tensor_dtype(n) != trt.float32]
                if not_fp32:  # the runtime's buffers are fp32; fp16 bundles keep fp32 graph inputs and outputs
                    raise BundleError(f"{path}: tensors {not_fp32} are not float32; rebuild the bundle with "
                                      f"`kmnrt export`")
                self.engines[graph] = engine
                self.contexts[graph] = engine.create_execution_context()
                self.inputs[graph] = inputs

    def deactivate_impl(self) -> None:
        self.contexts.clear()  # contexts before engines before the runtime
        self.engines.clear()
        self._runtime = None

    def infer_impl(self, graph: str, inputs: Mapping[str, Tensor], outputs: Mapping[str, Tensor]) -> None:
        with self._lock:
            context = self.contexts[graph]
            for name, tensor in inputs.items():
                if not context.set_input_shape(name, tuple(tensor.shape)):
                    raise ValueError(f"{graph}.{name}: shape {tuple(tensor.shape)} is outside the plan's "
                                     f"optimisation profile (see the TensorRT log above)")
                context.set_tensor_address(name, tensor.data_ptr())
            for name, tensor in outputs.items():
                expected = tuple(context.get_tensor_shape(name))
                if expected != tuple(tensor.shape):
                    raise ValueError(f"{graph}.{name}: the engine computes shape {expected}, the buffer is "
                                     f"{tuple(tensor.shape)}")
                context.set_tensor_address(name, tensor.data_ptr())
            if not context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT failed to enqueue {graph} (see the TensorRT log above)")

    def describe(self) -> str:
        import tensorrt as trt

        return f"tensorrt {trt.__version__} on {self.device} ({torch.cuda.get_device_name(self.device)})"
