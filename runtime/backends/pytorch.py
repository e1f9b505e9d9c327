"""PyTorch runner: the graph wrapper modules of :mod:`kmnrt.export.graphs` called directly (reference, fallback).

It computes exactly what the exported graphs compute (the same modules are exported), writing each result into
the preallocated output with ``copy_``. It runs on the CPU or a CUDA device; on CUDA its work is queued on the
runner's stream like the other GPU backends.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from kmnrt.errors import BundleError
from kmnrt.export.graphs import GraphSpec, graph_specs
from kmnrt.model.kmn import KMN
from kmnrt.runtime.backends.base import BaseRunner, cuda_device, parse_device

if TYPE_CHECKING:
    from kmnrt.export.manifest import Manifest


class TorchRunner(BaseRunner):
    """The four graph modules of one model at one input size."""

    name = "torch"
    note = ""  # what describe() adds, e.g. that an fp16 bundle runs in fp32 here

    def __init__(self, model: KMN, input_size: tuple[int, int], device: str | torch.device | None = None):
        device = parse_device(device, "cpu")
        if device.type == "cuda":
            device = cuda_device(device)
        super().__init__(device, torch.cuda.Stream(device) if device.type == "cuda" else None)
        self.model = model.eval().to(self.device)
        self.specs: dict[str, GraphSpec] = {s.name: s for s in graph_specs(model.config, *input_size)}
        self.modules: dict[str, nn.Module] = {}

    @classmethod
    def from_bundle(cls, bundle_dir: str | os.PathLike, manifest: Manifest,
                    device: str | torch.device | None = None) -> TorchRunner:
        """The model of the bundle's ``weights.safetensors`` (checked against the manifest's config)."""
        from kmnrt.model.checkpoint import load_model

        if not manifest.weights:
            raise BundleError(f"bundle {bundle_dir} has no weights file: the torch backend needs one")
        weights = Path(bundle_dir) / manifest.weights
        model = load_model(manifest.model_config, weights, manifest.read_config)
        runner = cls(model, tuple(manifest.input_size), device)
        if manifest.precision != "fp32":  # the weights file is fp32: the bundle's precision is its graphs'
            runner.note = f"fp32, the bundle's weights; its {manifest.precision} is for the engines"
        return runner

    def describe(self) -> str:
        return super().describe() + (f" ({self.note})" if self.note else "")

    def activate_impl(self) -> None:
        read = self.model.read_config
        self.modules = {name: spec.make_module(self.model, read).eval() for name, spec in self.specs.items()}

    def deactivate_impl(self) -> None:
        self.modules.clear()

    def infer_impl(self, graph: str, inputs: Mapping[str, Tensor], outputs: Mapping[str, Tensor]) -> None:
        spec = self.specs[graph]
        with torch.no_grad():
            results = self.modules[graph](*(inputs[s.name] for s in spec.inputs))
            results = results if isinstance(results, tuple) else (results,)
            for out_spec, value in zip(spec.outputs, results):
                outputs[out_spec.name].copy_(value)
