"""fp16 bundles: which graphs are fp16, the I/O stays float32, and parity with the fp32 PyTorch model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

from kmnrt.export.manifest import load_manifest


def _initializer_types(path: Path) -> set[int]:
    return {i.data_type for i in onnx.load(str(path)).graph.initializer}


def test_encoders_and_decoder_are_fp16_and_the_read_is_fp32(fp16_tiny_bundle: Path):
    manifest = load_manifest(fp16_tiny_bundle)
    assert manifest.precision == "fp16"
    assert {n: g.precision for n, g in manifest.graphs.items()} == {
        "query_encoder": "fp16", "memory_read": "fp32", "decoder": "fp16", "memory_encoder": "fp16"}
    for name in ("query_encoder", "decoder", "memory_encoder"):
        assert onnx.TensorProto.FLOAT16 in _initializer_types(fp16_tiny_bundle / f"{name}.onnx"), name
    read = onnx.load(str(fp16_tiny_bundle / "memory_read.onnx"))
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in read.graph.input)
    assert onnx.TensorProto.FLOAT16 not in _initializer_types(fp16_tiny_bundle / "memory_read.onnx")
    # every graph keeps float32 inputs and outputs with the table's symbolic dims
    for name, record in manifest.graphs.items():
        model = onnx.load(str(fp16_tiny_bundle / record.onnx))
        for value in list(model.graph.input) + list(model.graph.output):
            assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, (name, value.name)
    decoder = onnx.load(str(fp16_tiny_bundle / "decoder.onnx"))
    assert [d.dim_param or d.dim_value for d in decoder.graph.output[0].type.tensor_type.shape.dim] == ["K", 64, 112]


def test_the_soft_aggregation_stays_fp32(fp16_tiny_bundle: Path):
    """The aggregation's exp/log and its +-16.1 clamp lose all precision in fp16: they and their constants must be
    fp32."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(fp16_tiny_bundle / "decoder.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    for node in model.graph.node:
        if node.op_type in ("Log", "Exp", "Clip", "ReduceSum", "Softmax"):
            assert types.get(node.input[0]) == onnx.TensorProto.FLOAT, node.name
            assert onnx.TensorProto.FLOAT16 not in {types.get(name) for name in node.input}, node.name


def test_fp16_parity_with_the_fp32_model_is_in_range(fp16_tiny_bundle: Path):
    parity = json.loads((fp16_tiny_bundle / "report.json").read_text())["fp16_parity"]
    assert parity["fp16_graphs"] == ["query_encoder", "decoder", "memory_encoder"]
    assert {c["N"] for c in parity["cases"]} == {1, 3}
    for case in parity["cases"]:
        assert 0.98 <= case["mask_iou"] <= 1.0
        assert 1e-5 < case["max_prob_diff"] <= 0.15      # fp16 differs, but boundedly
        assert case["mean_prob_diff"] <= 2e-3
        assert 1e-5 < case["query_key_max_abs_error"] <= 0.05
    assert parity["min_mask_iou"] == min(c["mask_iou"] for c in parity["cases"])


def test_fp16_graphs_run_at_several_sizes(fp16_tiny_bundle: Path, ort_session, random_feeds):
    manifest = load_manifest(fp16_tiny_bundle)
    for n, t in ((1, 1), (3, 6)):
        for name, record in manifest.graphs.items():
            outputs = ort_session(fp16_tiny_bundle / record.onnx).run(None, random_feeds(record, {"N": n, "T": t}))
            assert all(o.dtype == np.float32 and np.isfinite(o).all() for o in outputs), name


def test_the_report_counts_the_converted_graphs_nodes(fp16_tiny_bundle: Path):
    graphs = json.loads((fp16_tiny_bundle / "report.json").read_text())["graphs"]
    for name in ("query_encoder", "decoder", "memory_encoder"):
        assert graphs[name]["nodes"] == len(onnx.load(str(fp16_tiny_bundle / f"{name}.onnx")).graph.node)
        assert graphs[name]["nodes"] > graphs[name]["fp32_nodes"]  # the casts around the fp16 region
    assert "fp32_nodes" not in graphs["memory_read"]


def test_the_torch_backend_says_it_runs_an_fp16_bundle_in_fp32(fp16_tiny_bundle: Path):
    from kmnrt.runtime import Tracker

    with Tracker.from_bundle(fp16_tiny_bundle, backend="torch") as tracker:
        assert tracker.runner.describe() == "torch on cpu (fp32, the bundle's weights; its fp16 is for the engines)"
