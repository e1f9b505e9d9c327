"""Static TensorRT audit: every node of every graph against the ONNX-TensorRT supported-operator list.

The list (``tensorrt_ops.json``) is data transcribed from onnx/onnx-tensorrt ``docs/operators.md`` with its source
and version. Beyond "is the op in the list", the audit checks what can be checked without TensorRT: the opset
range every TensorRT 10.x parses, the element types of each node's data input and outputs against the op's
supported types (of a comparison, the input only: its output is BOOL by definition), and the documented
restrictions that are static (constant ``axes``, Resize modes, pooling dimensionality and dilations, TopK
``sorted``, ScatterND ``reduction``, MaxPool's ``Indices`` output).
"""

from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache
from importlib import resources
from pathlib import Path

# ONNX TensorProto element type -> the names the ONNX-TensorRT table uses.
_TYPE_NAMES = {1: "FP32", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "FP16", 11: "DOUBLE",
               16: "BF16"}
_RESIZE_COORDINATES = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
# Their output is BOOL whatever the input; the table's types are those of the compared inputs.
_COMPARISONS = {"Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual"}
_CONSTANT_AXES = {"Squeeze", "Unsqueeze", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
                  "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare"}


@lru_cache(maxsize=1)
def supported_operators() -> dict:
    """The ONNX-TensorRT support list shipped with the package (``tensorrt_ops.json``)."""
    return json.loads(resources.files("kmnrt.export").joinpath("tensorrt_ops.json").read_text())


def _attribute(node, name: str, default=None):
    import onnx

    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _restriction_problems(node, constants: set[str]) -> list[str]:
    """Statically checkable restrictions of the ONNX-TensorRT table for one node."""
    problems = []
    op = node.op_type
    if op in _CONSTANT_AXES and len(node.input) > 1 and node.input[1] and node.input[1] not in constants:
        problems.append("`axes` must be a build-time constant")
    if op == "Resize":
        mode = _text(_attribute(node, "mode", b"nearest"))
        coordinates = _text(_attribute(node, "coordinate_transformation_mode", b"half_pixel"))
        if mode not in ("nearest", "linear"):
            problems.append(f"mode {mode!r} (supported: nearest, linear)")
        if coordinates not in _RESIZE_COORDINATES:
            problems.append(f"coordinate_transformation_mode {coordinates!r} is unsupported")
        if mode == "nearest" and _text(_attribute(node, "nearest_mode", b"round_prefer_floor")) not in _RESIZE_NEAREST:
            problems.append("unsupported nearest_mode")
        if _attribute(node, "antialias", 0):
            problems.append("antialiasing is unsupported")
        if _text(_attribute(node, "keep_aspect_ratio_policy", b"stretch")) != "stretch":
            problems.append("keep_aspect_ratio_policy must be 'stretch'")
    if op in ("MaxPool", "AveragePool", "LpPool"):
        kernel = _attribute(node, "kernel_shape", [])
        if len(kernel) not in (2, 3):
            problems.append(f"{len(kernel)}-D pooling (only 2-D or 3-D)")
        if any(d != 1 for d in _attribute(node, "dilations", []) or []):
            problems.append("`dilations` must be empty or all ones")
        if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
            problems.append("the `Indices` output is unsupported")
    if op == "TopK" and _attribute(node, "sorted", 1) != 1:
        problems.append("`sorted` must be 1")
    if op == "ScatterND" and _text(_attribute(node, "reduction", b"none")) != "none":
        problems.append("`reduction` other than none is unsupported")
    if op == "Constant" and any(a.name in ("sparse_value", "value_string", "value_strings") for a in node.attribute):
        problems.append("sparse or string constants are unsupported")
    return problems


def audit_model(model) -> dict:
    """-> {"ops": {op: count}, "supported": bool, "problems": [...], "warnings": [...]} for one ONNX model."""
    import onnx

    table = supported_operators()
    operators = table["operators"]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    problems, warnings = [], []
    low, high = table["opset_range_all_10x"]
    if opset is None or not low <= opset <= high:
        problems.append(f"opset {opset} is outside {low}..{high}, the range every TensorRT 10.x parses")
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    constants = {i.name for i in model.graph.initializer}
    constants.update(n.output[0] for n in model.graph.node if n.op_type == "Constant")
    for node in model.graph.node:
        label = f"{node.op_type} node {node.name or '(unnamed)'}"
        entry = operators.get(node.op_type)
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{label}: custom domain {node.domain!r} needs a TensorRT plugin")
            continue
        if entry is None or not entry["supported"]:
            problems.append(f"{label}: {node.op_type} is not supported by ONNX-TensorRT {table['tensorrt_version']}")
            continue
        data = [node.input[0]] if node.input and node.input[0] else []
        outputs = [] if node.op_type in _COMPARISONS else [o for o in node.output if o]
        for tensor in data + outputs:
            type_name = _TYPE_NAMES.get(types.get(tensor, 0))
            if type_name == "DOUBLE":
                warnings.append(f"{label}: {tensor} is DOUBLE, TensorRT casts it down to FP32")
            elif type_name is not None and type_name not in entry["types"]:
                problems.append(f"{label}: {tensor} is {type_name}; {node.op_type} supports "
                                f"{', '.join(entry['types'])}")
        problems += [f"{label}: {p}" for p in _restriction_problems(node, constants)]
    counts = dict(sorted(Counter(node.op_type for node in model.graph.node).items()))
    return {"opset": opset, "ops": counts, "supported": not problems, "problems": problems, "warnings": warnings}


def audit_bundle_graphs(folder: Path, names: list[str]) -> dict:
    """The report's ``op_audit`` section: every graph of a bundle folder."""
    import onnx

    table = supported_operators()
    graphs = {name: audit_model(onnx.load(str(folder / f"{name}.onnx"))) for name in names}
    return {"source": {k: table[k] for k in ("title", "source", "source_note", "tensorrt_version", "targets")},
            "supported": all(g["supported"] for g in graphs.values()), "graphs": graphs}
