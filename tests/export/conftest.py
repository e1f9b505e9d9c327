"""Fixtures of the export tests: ORT sessions over a bundle's graphs and feeds at given N and T."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def ort_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def random_feeds(graph_record, sizes: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Feeds for a manifest graph record at the given dynamic sizes (K = N + 1, B = 1 unless given)."""
    from kmnrt.export.graphs import TensorSpec

    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in graph_record.inputs:
        shape = TensorSpec(spec["name"], spec["dtype"], tuple(spec["shape"]), "").concrete(sizes)
        feeds[spec["name"]] = rng.random(shape, dtype=np.float32).astype(spec["dtype"])
    return feeds


@pytest.fixture(name="ort_session")
def ort_session_fixture():
    """Function: ONNX file -> ORT CPU session (2 threads)."""
    return ort_session


@pytest.fixture(name="random_feeds")
def random_feeds_fixture():
    """Function: (manifest graph record, sizes) -> feeds of uniform [0, 1) values."""
    return random_feeds


@pytest.fixture(scope="session")
def verified_tiny_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A tiny fp32 bundle exported through the CLI with verification -> (bundle path, the CLI's stdout)."""
    import contextlib
    import io

    from kmnrt.cli import main

    out = tmp_path_factory.mktemp("verified") / "tiny"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["export", "--config", "tiny", "--height", "64", "--width", "112", "--max-objects", "3",
                     "--max-memory", "6", "--out", str(out)])
    assert code == 0
    return out, stdout.getvalue()


@pytest.fixture(scope="session")
def fp16_tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny fp16 bundle (encoders and decoder fp16, read fp32), seeded random weights, not verified."""
    from kmnrt.export.bundle import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("fp16") / "tiny16"
    return export_bundle(ExportOptions("tiny", out, height=64, width=112, max_objects=3, max_memory=6,
                                       precision="fp16", verify=False), progress=False)
