"""The static TensorRT audit: our graphs pass; unsupported ops, modes, types and opsets are flagged."""

from __future__ import annotations

import json
from pathlib import Path

from onnx import TensorProto, helper

from kmnrt.export.audit import audit_model, supported_operators


def _model(nodes, inputs, outputs, initializers=(), opset=18):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _tensor(name, elem=TensorProto.FLOAT, shape=(1, 3, 8, 8)):
    return helper.make_tensor_value_info(name, elem, shape)


def test_the_operator_list_records_its_source_and_version():
    table = supported_operators()
    assert table["source"].startswith("https://github.com/onnx/onnx-tensorrt")
    assert table["tensorrt_version"].startswith("10.")
    assert table["operators"]["ArgMax"]["supported"] and "INT64" in table["operators"]["ArgMax"]["types"]
    assert not table["operators"]["Unique"]["supported"]


def test_every_graph_of_a_bundle_passes(tiny_bundle: Path):
    audit = json.loads((tiny_bundle / "report.json").read_text())["op_audit"]
    assert audit["supported"]
    assert set(audit["graphs"]) == {"query_encoder", "memory_read", "decoder", "memory_encoder"}
    assert audit["graphs"]["memory_read"]["ops"]["ArgMax"] == 1
    assert "Mod" not in audit["graphs"]["memory_read"]["ops"]  # the coordinate gather avoids integer %
    assert all(g["opset"] == 18 and g["problems"] == [] for g in audit["graphs"].values())


def test_an_unsupported_operator_is_flagged():
    model = _model([helper.make_node("Unique", ["x"], ["y"], name="dedupe")],
                   [_tensor("x", shape=(5,))], [_tensor("y", shape=None)])
    audit = audit_model(model)
    assert not audit["supported"]
    assert audit["problems"] == ["Unique node dedupe: Unique is not supported by ONNX-TensorRT 10.15"]


def test_comparisons_are_checked_on_their_inputs_not_their_bool_output():
    compare = [helper.make_node("Less", ["x", "y"], ["below"], name="below")]
    assert audit_model(_model(compare, [_tensor("x"), _tensor("y")], [_tensor("below", TensorProto.BOOL)]))["supported"]
    audit = audit_model(_model(compare, [_tensor("x", TensorProto.UINT8), _tensor("y", TensorProto.UINT8)],
                               [_tensor("below", TensorProto.BOOL)]))
    assert audit["problems"] == ["Less node below: x is UINT8; Less supports FP32, FP16, BF16, INT32, INT64"]


def test_static_restrictions_are_checked():
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    k = helper.make_tensor("k", TensorProto.INT64, [1], [2])
    nodes = [
        helper.make_node("Resize", ["x", "", "scales"], ["up"], name="up", mode="cubic"),
        helper.make_node("MaxPool", ["x"], ["pooled", "indices"], name="pool", kernel_shape=[2, 2]),
        helper.make_node("TopK", ["x", "k"], ["values", "where"], name="top", sorted=0),
        helper.make_node("ReduceSum", ["x", "axes_runtime"], ["summed"], name="sum"),
    ]
    model = _model(nodes, [_tensor("x"), _tensor("axes_runtime", TensorProto.INT64, (1,))],
                   [_tensor(n, shape=None) for n in ("up", "pooled", "values", "summed")]
                   + [_tensor(n, TensorProto.INT64, None) for n in ("indices", "where")], [scales, k])
    problems = "\n".join(audit_model(model)["problems"])
    assert "Resize node up: mode 'cubic'" in problems
    assert "MaxPool node pool: the `Indices` output is unsupported" in problems
    assert "TopK node top: `sorted` must be 1" in problems
    assert "ReduceSum node sum: `axes` must be a build-time constant" in problems


def test_types_and_opsets_outside_tensorrt_10_are_flagged():
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu"), helper.make_node("Not", ["b"], ["c"], name="not")]
    model = _model(nodes, [_tensor("x", TensorProto.DOUBLE), _tensor("b", TensorProto.FLOAT)],
                   [_tensor("y", TensorProto.DOUBLE), _tensor("c", TensorProto.FLOAT)], opset=23)
    audit = audit_model(model)
    assert any("opset 23 is outside 9..20" in p for p in audit["problems"])
    assert any(p.startswith("Not node not: b is FP32; Not supports BOOL") for p in audit["problems"])
    assert any("x is DOUBLE" in w for w in audit["warnings"])
    assert audit["ops"] == {"Not": 1, "Relu": 1}
