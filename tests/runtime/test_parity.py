"""Parity: the runtime on ONNX Runtime CPU reproduces the reference tracker on the real DAVIS sequences.

Per frame and object the masks agree to IoU >= 0.99, and J&F against the ground truth moves by at most 0.005.
The reference runs the weights the bundle was exported from (``weights.safetensors``) with the same memory limit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kmnrt.evaluation.metrics import contour_accuracy, region_similarity
from kmnrt.export.manifest import load_manifest
from kmnrt.model.checkpoint import load_model
from kmnrt.model.reference import ReferenceTracker, TrackerConfig
from kmnrt.runtime import Tracker

SEQUENCES = ("davis2016_blackswan", "davis2016_bmx-trees", "davis2016_kite-surf", "davis2016_motocross-jump")
IOU_MIN = 0.99
JF_TOLERANCE = 0.005


def j_and_f(masks: list[np.ndarray], truth: list[np.ndarray]) -> float:
    """Mean (J + F) / 2 of the foreground (all objects together, as the DAVIS 2016 ground truth) over the
    frames DAVIS scores (all but the first and the last)."""
    scores = [(region_similarity(m > 0, t > 0) + contour_accuracy(m > 0, t > 0)) / 2
              for m, t in zip(masks[1:-1], truth[1:-1])]
    return float(np.mean(scores))


def compare(bundle: Path, clip) -> dict:
    manifest = load_manifest(bundle)
    model = load_model(manifest.model_config, bundle / manifest.weights, manifest.read_config)
    config = TrackerConfig(mem_every=manifest.mem_every, max_memory=manifest.max_memory)
    reference = [r.labels for r in ReferenceTracker(model, config).track(clip.frames, clip.first_mask)]
    tracker = Tracker.from_bundle(bundle, backend="onnxruntime")
    state = tracker.start(clip.frames[0], clip.first_mask)
    runtime = [clip.first_mask] + [tracker.step(state, frame).mask for frame in clip.frames[1:]]
    ious = [region_similarity(ours == k, theirs == k) for ours, theirs in zip(runtime, reference)
            for k in state.object_ids]
    present = [np.mean([(mask == k).any() for mask in runtime[1:]]) for k in state.object_ids]
    return {"min_iou": min(ious), "jf_runtime": j_and_f(runtime, clip.truth), "present": present,
            "jf_reference": j_and_f(reference, clip.truth), "objects": state.object_ids}


def check(result: dict, clip) -> None:
    delta = abs(result["jf_runtime"] - result["jf_reference"])
    print(f"{clip.name}: {len(clip.frames)} frames, objects {result['objects']}, min IoU {result['min_iou']:.4f}, "
          f"J&F runtime {result['jf_runtime']:.4f} reference {result['jf_reference']:.4f} delta {delta:.5f}, "
          f"share of frames with each object {[round(float(p), 2) for p in result['present']]}")
    assert max(result["present"]) > 0.5  # not a vacuous comparison of empty masks
    assert result["min_iou"] >= IOU_MIN
    assert delta <= JF_TOLERANCE


@pytest.mark.parametrize("sequence", SEQUENCES)
def test_tiny_bundle_matches_reference(tiny_bundle, load_clip, sequence):
    """Tiny bundle (64x112): frames at 60x106 pad to it exactly, as in the reference protocol."""
    clip = load_clip(sequence, 30, (60, 106))
    if sequence == "davis2016_bmx-trees":
        assert set(np.unique(clip.first_mask)) == {0, 1, 2}  # the two-object DAVIS 2017 start
    check(compare(tiny_bundle, clip), clip)


@pytest.fixture(scope="module")
def lite_bundle(tmp_path_factory, export_small_bundle) -> Path:
    return export_small_bundle(tmp_path_factory.mktemp("lite") / "lite", "lite", (128, 224))


@pytest.mark.parametrize("sequence", SEQUENCES)
def test_lite_bundle_matches_reference(lite_bundle, load_clip, sequence):
    clip = load_clip(sequence, 12, (120, 214))
    check(compare(lite_bundle, clip), clip)


@pytest.fixture(scope="module")
def instance_norm_bundle(tmp_path_factory, export_small_bundle) -> Path:
    return export_small_bundle(tmp_path_factory.mktemp("small-in") / "small-in", "small-in", (128, 224))


@pytest.mark.parametrize("sequence", SEQUENCES)
def test_instance_norm_bundle_matches_reference(instance_norm_bundle, load_clip, sequence):
    """InstanceNorm trunks export as ONNX InstanceNormalization and track as the reference does. Eight frames, not
    twelve: with random weights, InstanceNorm divides channels of almost no variance by their spread, so rounding
    differences double from frame to frame through the memory (IoU 0.97 by frame 11 on blackswan, in the torch
    backend too). Trained weights do not: small-in trained by the default model's recipe (seed 2) tracks every
    validation video's 24 frames on ONNX Runtime within 2e-4 in probability of the reference, masks at IoU 0.9997
    or more (docs/default-model.md)."""
    clip = load_clip(sequence, 8, (120, 214))
    check(compare(instance_norm_bundle, clip), clip)


@pytest.fixture(scope="module")
def paper_bundle(tmp_path_factory, export_small_bundle) -> Path:
    return export_small_bundle(tmp_path_factory.mktemp("paper") / "paper", "paper", (128, 224))


@pytest.mark.slow
@pytest.mark.parametrize("sequence", SEQUENCES)
def test_paper_bundle_matches_reference(paper_bundle, load_clip, sequence):
    clip = load_clip(sequence, 12, (120, 214))
    check(compare(paper_bundle, clip), clip)
