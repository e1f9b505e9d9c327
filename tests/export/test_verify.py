"""Verification: the report's parity numbers, and that a graph which computes something else is caught."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx

from kmnrt.export.bundle import ExportOptions
from kmnrt.export.manifest import load_manifest
from kmnrt.export.verify import memory_cases, verify_graphs
from kmnrt.model.checkpoint import load_model
from kmnrt.model.config import get_config


def test_verified_bundle_reports_parity_for_every_graph_and_case(verified_tiny_export):
    bundle, _ = verified_tiny_export
    assert load_manifest(bundle).extra["verified"] is True
    report = json.loads((bundle / "report.json").read_text())["verification"]
    assert report["passed"]
    graphs = report["graphs"]
    assert set(graphs) == {"query_encoder", "memory_read", "decoder", "memory_encoder"}
    read_cases = {(c["sizes"]["N"], c["sizes"]["T"]) for c in graphs["memory_read"]["cases"]}
    assert read_cases == {(n, t) for n in (1, 3) for t in (1, 5, 6)}
    for case in graphs["memory_read"]["cases"]:
        assert case["argmax_mismatches"] == 0
        assert case["argmax_positions"] == case["sizes"]["N"] * case["sizes"]["T"] * 4 * 7
        assert case["max_abs_error"] <= 1e-4
    for name in ("query_encoder", "memory_encoder"):
        assert graphs[name]["atol"] == 1e-5
        assert 0 < graphs[name]["max_abs_error"] <= 1e-5
    assert {c["sizes"]["B"] for c in graphs["query_encoder"]["cases"]} == {1, 3}
    assert {c["sizes"]["N"] for c in graphs["decoder"]["cases"]} == {1, 3}
    assert graphs["decoder"]["max_abs_error"] <= graphs["decoder"]["atol"]


def test_memory_cases_cover_one_five_and_max():
    assert memory_cases(20) == (1, 5, 20)
    assert memory_cases(3) == (1, 3)


def _perturb_first_conv(path: Path, factor: float) -> None:
    model = onnx.load(str(path))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    weight = next(i for i in model.graph.initializer if i.name == conv.input[1])
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * factor, weight.name))
    onnx.save_model(model, str(path))


def _negate_argmax_input(path: Path) -> None:
    """The read with ArgMax taken over -affinity: the Memory-to-Query match becomes the worst match."""
    model = onnx.load(str(path))
    argmax = next(n for n in model.graph.node if n.op_type == "ArgMax")
    negated = f"{argmax.input[0]}__negated"
    model.graph.node.append(onnx.helper.make_node("Neg", [argmax.input[0]], [negated]))
    argmax.input[0] = negated
    onnx.save_model(_sorted(model), str(path))


def _sorted(model):
    """Re-establish topological order after appending a node that an earlier node consumes."""
    nodes = list(model.graph.node)
    produced = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    ordered = []
    while nodes:
        for node in nodes:
            if all(name in produced for name in node.input):
                ordered.append(node)
                produced.update(node.output)
                nodes.remove(node)
                break
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return model


def test_a_graph_that_computes_something_else_fails_verification(verified_tiny_export, tmp_path: Path):
    bundle, _ = verified_tiny_export
    copy = Path(shutil.copytree(bundle, tmp_path / "copy"))
    _perturb_first_conv(copy / "memory_encoder.onnx", 1.001)
    _negate_argmax_input(copy / "memory_read.onnx")
    manifest = load_manifest(bundle)
    model = load_model(get_config("tiny"), bundle / "weights.safetensors", manifest.read_config)
    options = ExportOptions("tiny", copy, height=64, width=112, max_objects=3, max_memory=6)
    report = verify_graphs(model, options, copy)
    assert not report["passed"]
    graphs = report["graphs"]
    assert graphs["query_encoder"]["passed"] and graphs["decoder"]["passed"]
    assert not graphs["memory_encoder"]["passed"]
    assert graphs["memory_encoder"]["max_abs_error"] > 1e-4
    assert not graphs["memory_read"]["passed"]
    assert sum(c["argmax_mismatches"] for c in graphs["memory_read"]["cases"]) > 0


def test_verification_uses_real_frames_when_given(verified_tiny_export, shared_vos: Path):
    bundle, _ = verified_tiny_export
    manifest = load_manifest(bundle)
    model = load_model(get_config("tiny"), bundle / "weights.safetensors", manifest.read_config)
    frames = sorted(shared_vos.glob("*/JPEGImages"))[0]
    options = ExportOptions("tiny", bundle, height=64, width=112, max_objects=3, max_memory=6, verify_frames=frames)
    report = verify_graphs(model, options, bundle)
    assert report["inputs"].startswith(f"frames from {frames}")
    assert report["passed"], {g: r["max_abs_error"] for g, r in report["graphs"].items()}
    assert np.isfinite([g["max_abs_error"] for g in report["graphs"].values()]).all()


def test_an_stm_read_bundle_verifies_without_an_argmax(tmp_path: Path):
    """The export's read wins over the model's: a KMN-built model exported with --read stm verifies as STM."""
    from kmnrt.export.bundle import export_bundle
    from kmnrt.model.kmn import build_model

    options = ExportOptions("tiny", tmp_path / "stm", height=32, width=48, max_objects=3, max_memory=3, read="stm")
    bundle = export_bundle(options, model=build_model(get_config("tiny"), seed=1), progress=False)
    report = json.loads((bundle / "report.json").read_text())
    assert report["verification"]["passed"]
    assert "ArgMax" not in report["op_audit"]["graphs"]["memory_read"]["ops"]
    assert all("argmax_mismatches" not in c for c in report["verification"]["graphs"]["memory_read"]["cases"])
    assert load_manifest(bundle).read_config.kind == "stm"
