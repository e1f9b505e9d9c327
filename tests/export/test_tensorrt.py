"""TensorRT: optimisation profiles and plan compatibility everywhere; plan builds only where TensorRT runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from kmnrt.errors import BundleError
from kmnrt.export.bundle import ExportOptions
from kmnrt.export.graphs import graph_specs
from kmnrt.export.manifest import load_manifest
from kmnrt.export.tensorrt import check_plan_compatibility, profile_shapes
from kmnrt.model.config import get_config


def test_profiles_span_one_to_the_maxima():
    options = ExportOptions("tiny", Path("unused"), height=64, width=112, max_objects=4, max_memory=8, max_batch=3)
    specs = {s.name: s for s in graph_specs(get_config("tiny"), 64, 112)}
    read = profile_shapes(specs["memory_read"], options)
    assert read["memory_key"] == ((1, 1, 8, 4, 7), (8, 2, 8, 4, 7), (8, 4, 8, 4, 7))
    assert read["memory_valid"] == ((1, 1), (8, 2), (8, 4))
    assert read["query_key"] == ((1, 8, 4, 7),) * 3
    assert profile_shapes(specs["memory_encoder"], options)["probs"] == ((2, 64, 112), (3, 64, 112), (5, 64, 112))
    assert profile_shapes(specs["query_encoder"], options)["frame"] == (
        (1, 3, 64, 112), (1, 3, 64, 112), (3, 3, 64, 112))


def test_plans_from_another_machine_are_refused_naming_both_and_the_rebuild(tiny_bundle: Path):
    import dataclasses

    manifest = load_manifest(tiny_bundle)
    with pytest.raises(BundleError, match="has no TensorRT plans; build them with: kmnrt export --config tiny"):
        check_plan_compatibility(manifest, tiny_bundle, current={})
    built = {"version": "10.3.0", "gpu": "NVIDIA A10", "compute_capability": "8.6", "driver": "550.54"}
    with_plans = dataclasses.replace(manifest, tensorrt=built)
    check_plan_compatibility(with_plans, tiny_bundle, current=dict(built, driver="555.1"))  # driver may differ
    here = {"version": "10.7.0", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "driver": "550.54"}
    with pytest.raises(BundleError) as error:
        check_plan_compatibility(with_plans, tiny_bundle, current=here)
    message = str(error.value)
    assert "TensorRT 10.3.0 (built) vs 10.7.0 (here)" in message
    assert "GPU NVIDIA A10 (built) vs NVIDIA H100 80GB HBM3 (here)" in message
    assert "compute capability 8.6 (built) vs 9.0 (here)" in message
    assert (f"kmnrt export --config tiny --height 64 --width 112 --max-objects 4 --max-memory 8 --read kmn "
            f"--sigma 7.0 --precision fp32 --engine tensorrt --out {tiny_bundle} --force") in message


@pytest.mark.tensorrt
def test_tensorrt_plans_build_for_every_graph(tmp_path: Path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed here (it needs a CUDA GPU); "
                        "plan builds are tested on GPU machines")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("TensorRT is installed but no CUDA GPU is visible")
    from kmnrt.export.bundle import export_bundle

    for precision in ("fp32", "fp16"):
        out = export_bundle(ExportOptions("tiny", tmp_path / precision, height=64, width=112, max_objects=2,
                                          max_memory=4, precision=precision, engine="tensorrt", verify=False),
                            progress=False)
        manifest = load_manifest(out)
        assert all(g.plan == f"{n}.plan" for n, g in manifest.graphs.items())
        assert (out / "timing.cache").is_file()
        check_plan_compatibility(manifest, out)
