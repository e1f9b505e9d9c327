"""One graph of the table -> one self-contained ONNX file (torch's dynamo exporter, opset 18, weights inline).

The exporter's known traps (``../shared/docs/export-notes.md``) are handled here: examples use N = 2, T = 3 and
B = 2 so that no dynamic dim is specialised to 1 (P3), the weights are written inline (P4), opset 18 is produced
directly (P1). After export every dim the table calls dynamic must be symbolic in the ONNX inputs and outputs —
a frozen dim is the failure the exporter does not report — and the ONNX checker and strict shape inference run.
The symbolic dims are renamed to the table's names (``N``, ``K``, ``T``, ``B``) so the file documents itself.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from kmnrt.errors import VerificationError
from kmnrt.export.graphs import GraphSpec

OPSET = 18
EXAMPLE_SIZES = {"B": 2, "N": 2, "K": 3, "T": 3}
_DIM_MINIMUM = {"B": 1, "N": 1, "K": 2, "T": 1}


@dataclass(frozen=True)
class ExportedGraph:
    name: str
    path: Path
    nodes: int
    seconds: float


def example_inputs(spec: GraphSpec, sizes: dict[str, int] = EXAMPLE_SIZES) -> tuple[Tensor, ...]:
    """Tracing inputs: the values do not matter, the sizes do (no dynamic dim may be 0 or 1)."""
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.rand(s.concrete(sizes), generator=generator) for s in spec.inputs)


def dynamic_shapes(spec: GraphSpec) -> tuple[dict[int, object], ...]:
    """One ``torch.export.Dim`` per table symbol, shared by every input that carries it."""
    from torch.export import Dim

    dims = {name: Dim(name, min=_DIM_MINIMUM[name]) for name in spec.dynamic_dims}
    return tuple({axis: dims[d] for axis, d in enumerate(s.shape) if isinstance(d, str)} for s in spec.inputs)


def export_graph(spec: GraphSpec, module: nn.Module, path: Path, *, inputs: tuple[Tensor, ...] | None = None,
                 shapes: tuple[dict, ...] | None = None) -> ExportedGraph:
    """Export ``module`` as ``spec`` to ``path``, then check it (symbolic dims, checker, shape inference).

    ``inputs``/``shapes`` override the tracing examples and dynamic shapes (tests use them to build a graph with a
    frozen dim on purpose).
    """
    import onnx

    started = time.perf_counter()
    inputs = example_inputs(spec) if inputs is None else inputs
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # "torchvision is not installed" and similar notices, once per graph
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation chatter; failures still raise
            program = torch.onnx.export(
                module.eval(), inputs, input_names=[s.name for s in spec.inputs],
                output_names=[s.name for s in spec.outputs], dynamo=True, opset_version=OPSET,
                external_data=False, optimize=True, verbose=False,
                dynamic_shapes=dynamic_shapes(spec) if shapes is None else shapes,
            )
    finally:
        exporter_log.setLevel(level)
    model = program.model_proto
    check_symbolic_dims(model, spec)
    name_dims(model, spec)
    model.producer_name = "kmnrt"
    onnx.checker.check_model(model, full_check=False)
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    onnx.checker.check_model(model, full_check=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        onnx.save_model(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportedGraph(spec.name, path, len(model.graph.node), time.perf_counter() - started)


def _value_infos(model, spec: GraphSpec):
    by_name = {v.name: v for v in list(model.graph.input) + list(model.graph.output)}
    for tensor in spec.inputs + spec.outputs:
        if tensor.name not in by_name:
            raise VerificationError(f"graph {spec.name}: the exported ONNX model has no tensor {tensor.name!r} "
                                    f"(it has {', '.join(by_name)})")
        yield tensor, by_name[tensor.name]


def check_symbolic_dims(model, spec: GraphSpec) -> None:
    """Every dim the table calls dynamic must be a ``dim_param`` in the ONNX I/O, every fixed dim that value.

    The dynamo exporter can silently specialise a dynamic dim (e.g. N = 1 when ``expand`` broadcasts from a
    batch of one); such a graph loads fine and fails only at another N, so it is caught here.
    """
    problems = []
    for tensor, info in _value_infos(model, spec):
        dims = info.type.tensor_type.shape.dim
        if len(dims) != len(tensor.shape):
            problems.append(f"{tensor.name} has rank {len(dims)}, the table says {len(tensor.shape)}")
            continue
        for axis, (want, got) in enumerate(zip(tensor.shape, dims)):
            if isinstance(want, str) and not got.dim_param:
                fixed = got.dim_value if got.HasField("dim_value") else "unknown"
                problems.append(f"{tensor.name} axis {axis} ({want}) was frozen to {fixed}")
            elif isinstance(want, int) and got.dim_value != want:
                problems.append(f"{tensor.name} axis {axis} is {got.dim_param or got.dim_value}, expected {want}")
    if problems:
        raise VerificationError(f"graph {spec.name}: the export did not keep the table's shapes: "
                                + "; ".join(problems) + ". Check the tracing example sizes and dynamic_shapes.")


def name_dims(model, spec: GraphSpec) -> None:
    """Rename the exporter's symbols (``s0``, ``K - 1``) to the table's (``N``, ``K``, ``T``, ``B``)."""
    for tensor, info in _value_infos(model, spec):
        for want, dim in zip(tensor.shape, info.type.tensor_type.shape.dim):
            if isinstance(want, str):
                dim.dim_param = want


def onnx_dims(path: str | os.PathLike) -> dict[str, list[int | str]]:
    """Name -> dims (ints or symbols) of an ONNX file's inputs and outputs."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(model.graph.input) + list(model.graph.output)}
