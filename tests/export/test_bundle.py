"""A tiny bundle end to end: files, manifest, hashes, shapes at several N and T, and the export's refusals."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from kmnrt.errors import BundleError, UserInputError, VerificationError
from kmnrt.export.bundle import ExportOptions, export_bundle
from kmnrt.export.exporter import export_graph, onnx_dims
from kmnrt.export.graphs import GRAPH_NAMES, graph_specs
from kmnrt.export.manifest import load_manifest
from kmnrt.model.config import ReadConfig, get_config
from kmnrt.model.kmn import build_model


def test_tiny_bundle_holds_the_files_the_manifest_lists(tiny_bundle: Path):
    manifest = load_manifest(tiny_bundle)
    on_disk = {p.name for p in tiny_bundle.iterdir()}
    assert on_disk == {"manifest.json", *manifest.files}
    assert set(manifest.files) == {f"{g}.onnx" for g in GRAPH_NAMES} | {"weights.safetensors", "report.json"}
    assert manifest.input_size == [64, 112] and manifest.max_objects == 4 and manifest.max_memory == 8
    assert manifest.model_config == get_config("tiny")
    assert manifest.read_config == ReadConfig("kmn", 7.0)
    assert manifest.checkpoint == {"path": None, "sha256": None, "source": "in-memory model"}
    assert manifest.graphs["memory_read"].dynamic == ["N", "T"]
    assert manifest.graphs["query_encoder"].dynamic == ["B"]
    # no temporary folders are left next to the bundle
    assert [p.name for p in tiny_bundle.parent.iterdir()] == [tiny_bundle.name]


def test_onnx_dims_are_the_table_symbols(tiny_bundle: Path):
    dims = onnx_dims(tiny_bundle / "memory_read.onnx")
    assert dims["memory_key"] == ["T", "N", 8, 4, 7]
    assert dims["memory_valid"] == ["T", "N"]
    assert dims["read"] == ["N", 16, 4, 7]
    assert onnx_dims(tiny_bundle / "memory_encoder.onnx")["memory_key"] == ["N", 8, 4, 7]
    assert onnx_dims(tiny_bundle / "decoder.onnx")["probs"] == ["K", 64, 112]


@pytest.mark.parametrize("n,t", [(1, 1), (3, 5), (3, 8)])
def test_every_graph_runs_in_onnxruntime(tiny_bundle: Path, n: int, t: int, ort_session, random_feeds):
    manifest = load_manifest(tiny_bundle, verify=False)
    sizes = {"N": n, "T": t, "B": n}
    for name, record in manifest.graphs.items():
        outputs = ort_session(tiny_bundle / record.onnx).run(None, random_feeds(record, sizes))
        for spec, value in zip(record.outputs, outputs):
            expected = [sizes.get(d, n + 1) if isinstance(d, str) else d for d in spec["shape"]]
            assert list(value.shape) == expected, (name, spec["name"])
            assert np.isfinite(value).all()


def test_weights_file_reproduces_the_graphs(tiny_bundle: Path):
    from kmnrt.model.checkpoint import load_model

    model = load_model(get_config("tiny"), tiny_bundle / "weights.safetensors")
    reference = build_model(get_config("tiny"), seed=0)
    for (key, value), (_, expected) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(value, expected), key


def test_a_corrupted_byte_is_caught_naming_the_file(tiny_bundle: Path, tmp_path: Path):
    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "copy"))
    target = copy / "decoder.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="decoder.onnx does not match its sha256"):
        load_manifest(copy)
    load_manifest(copy, verify=False)  # the manifest itself is intact


def test_a_folder_without_a_manifest_is_named_as_what_it_is(tiny_bundle: Path, tmp_path: Path):
    """Graphs without a manifest: an export cut off (export again, or delete it). Anything else: not a bundle,
    with no advice to delete what may be the user's own folder."""
    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "cut"))
    (copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="an interrupted export leaves no manifest"):
        load_manifest(copy)
    (tmp_path / "frames").mkdir()
    with pytest.raises(BundleError) as raised:
        load_manifest(tmp_path / "frames")
    assert str(raised.value) == (f"{tmp_path / 'frames'} is not a bundle (it has no manifest.json); give the folder "
                                 f"`kmnrt export --out` wrote, e.g. engines/NAME")


def _edited(d: dict, **changes) -> dict:
    """A copy of manifest ``d`` with ``changes`` (keys of nested dicts joined by "__": read__bogus=1)."""
    d = json.loads(json.dumps(d))
    for key, value in changes.items():
        *parents, last = key.split("__")
        target = d
        for parent in parents:
            target = target[parent]
        target[last] = value
    return d


@pytest.mark.parametrize("changes, message", [
    ({"graphs": []}, "not a valid kmnrt manifest (AttributeError"),
    ({"input_size": "64x112"}, "input_size '64x112' is not [height, width] in multiples of 16"),
    ({"input_size": [128, 224]}, "the query_encoder graph's tensors do not fit a tiny model at 128x224"),
    ({"model__key_dim": 16}, "the memory_read graph's tensors do not fit a tiny model"),
    ({"max_objects": "4"}, "max_objects '4' is not a whole number of at least 1"),
    ({"read__bogus": 1}, "unexpected keyword argument 'bogus'"),
    ({"precision": "int8"}, "precision 'int8' is neither fp32 nor fp16"),
    ({"files": {}}, "decoder.onnx is not listed in files, so it cannot be checked"),
    ({"graphs__decoder__onnx": "../other/decoder.onnx"}, "'../other/decoder.onnx' is not a plain file name"),
])
def test_an_edited_manifest_is_one_error_naming_the_field(tiny_bundle: Path, tmp_path: Path, changes, message):
    """Hand-edited fields used to surface as tracebacks from deep inside a backend, or to switch the checksums
    off (an empty files list) or to point outside the bundle."""
    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "copy"))
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps(_edited(manifest, **changes)))
    with pytest.raises(BundleError) as raised:
        load_manifest(copy)
    assert message in str(raised.value) and "with `kmnrt export`" in str(raised.value)
    (copy / "manifest.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(BundleError, match=r"not a valid kmnrt manifest \(UnicodeDecodeError"):
        load_manifest(copy)


def test_an_export_that_freezes_n_is_caught(tmp_path: Path):
    """The silent specialisation: an example with N = 1 and no dynamic shapes exports fine and runs only at N=1."""
    model = build_model(get_config("tiny"), seed=0)
    spec = next(s for s in graph_specs(model.config, 64, 112) if s.name == "decoder")
    example = tuple(torch.rand(s.concrete({"N": 1})) for s in spec.inputs)
    with pytest.raises(VerificationError, match=r"decoder.*read axis 0 \(N\) was frozen to 1"):
        export_graph(spec, spec.make_module(model, ReadConfig()), tmp_path / "decoder.onnx", inputs=example,
                     shapes=tuple({} for _ in spec.inputs))
    assert not (tmp_path / "decoder.onnx").exists()


@pytest.mark.parametrize("change,message", [
    ({"height": 70}, "--height 70 is not a multiple of 16; the nearest valid height is 64"),
    ({"width": 856}, "--width 856 is not a multiple of 16; the nearest valid width is 848|864"),
    ({"max_memory": 1}, "--max-memory 1: the bank needs at least 2 slots"),
    ({"height": 0}, "--height 0: the network needs at least 16 pixels"),
    ({"config": "huge"}, "unknown model config 'huge'"),
    ({"precision": "int8"}, "unknown precision 'int8'"),
    ({"read": "fast"}, "unknown memory read 'fast'"),
    ({"checkpoint": Path("/nonexistent/w.pth")}, "checkpoint /nonexistent/w.pth does not exist"),
    ({"checkpoint": Path(__file__).parent}, "checkpoint .* is a folder; give the checkpoint file"),
    ({"height": 100_000}, "--height 100000 is above 8192 pixels"),
    ({"max_objects": 256}, r"--max-objects 256: between 1 and 255 \(object ids are 1..255\)"),
    ({"sigma": float("inf")}, r"sigma \(--sigma\) must be a positive number of key-grid cells, got inf"),
    ({"max_batch": 0}, "--max-batch 0: at least one frame"),
    ({"verify_frames": Path("/nonexistent/frames")}, "--verify-frames: /nonexistent/frames does not exist"),
    ({"verify_frames": Path(__file__).parent, "verify": False}, "--verify-frames chooses the frames of the "
                                                                "verification that --no-verify skips"),
])
def test_bad_options_are_refused_before_any_work(tmp_path: Path, change: dict, message: str):
    options = ExportOptions(**{"config": "tiny", "out": tmp_path / "b", "height": 64, "width": 112, **change})
    with pytest.raises(UserInputError, match=message):
        export_bundle(options, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused_unless_forced_and_only_bundles_are_replaced(tiny_bundle: Path, tmp_path: Path):
    occupied = tmp_path / "notes"
    occupied.mkdir()
    (occupied / "todo.txt").write_text("mine")
    for force in (False, True):  # never "pass --force" for a folder that --force would refuse too
        with pytest.raises(UserInputError, match=r"is not a kmnrt bundle \(no kmnrt manifest.json\); --force only "
                                                 r"replaces bundles"):
            export_bundle(ExportOptions("tiny", occupied, height=64, width=112, force=force), progress=False)
    assert (occupied / "todo.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserInputError, match="already exists; pass --force"):
        export_bundle(ExportOptions("tiny", empty, height=64, width=112, verify=False), progress=False)
    # a manifest.json alone proves nothing (many tools write one), nor does a bundle that holds the user's files
    other_tool = tmp_path / "webapp"
    other_tool.mkdir()
    (other_tool / "manifest.json").write_text("{}")
    (other_tool / "mine.txt").write_text("mine")
    with pytest.raises(UserInputError, match=r"webapp exists and is not a kmnrt bundle \(no kmnrt manifest.json\)"):
        export_bundle(ExportOptions("tiny", other_tool, height=64, width=112, force=True), progress=False)
    used = tmp_path / "used"
    shutil.copytree(tiny_bundle, used)
    (used / "notes.txt").write_text("mine")
    with pytest.raises(UserInputError, match=r"not a kmnrt bundle \(it also holds notes.txt\); --force only"):
        export_bundle(ExportOptions("tiny", used, height=64, width=112, force=True), progress=False)
    assert (other_tool / "mine.txt").read_text() == (used / "notes.txt").read_text() == "mine"


def test_killed_exports_are_cleaned_up_and_a_bundle_that_appears_meanwhile_is_not_replaced(tmp_path: Path):
    import os

    from kmnrt.export.placement import move_into_place

    dead = next(pid for pid in range(4_000_000, 4_100_000) if not Path(f"/proc/{pid}").exists())
    abandoned = [tmp_path / f".b.partial-{dead}", tmp_path / f".b.replaced-{dead}"]
    alive = tmp_path / f".b.partial-{os.getppid()}"  # an export still running elsewhere: left alone
    for folder in (*abandoned, alive):
        folder.mkdir()
        (folder / "weights.safetensors").write_bytes(b"x" * 100)
    model = build_model(get_config("tiny"), seed=0)
    export_bundle(ExportOptions("tiny", tmp_path / "b", height=32, width=32, max_objects=1, max_memory=2,
                                verify=False), model=model, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, "b"])
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(UserInputError, match="was written by another process while this export ran"):
        move_into_place(staging, tmp_path / "b", force=False)
    assert staging.is_dir() and (tmp_path / "b" / "manifest.json").is_file()


def test_random_weights_are_exported_with_a_warning(tmp_path: Path):
    from kmnrt.errors import KmnrtWarning
    from kmnrt.export.bundle import load_export_model

    with pytest.warns(KmnrtWarning, match="no checkpoint for config 'lite' .* seeded random weights, its masks will "
                                          "be meaningless; pass --checkpoint"):
        _, record = load_export_model(ExportOptions("lite", tmp_path / "b"))
    assert record["source"] == "seeded random weights (seed 0)"


def test_force_replaces_a_bundle(tmp_path: Path):
    model = build_model(get_config("tiny"), seed=0)
    out = tmp_path / "b"
    options = ExportOptions("tiny", out, height=32, width=32, max_objects=2, max_memory=2, verify=False)
    export_bundle(options, model=model, progress=False)
    first = json.loads((out / "manifest.json").read_text())["created"]
    export_bundle(ExportOptions("tiny", out, height=32, width=48, max_objects=2, max_memory=2, verify=False,
                                force=True), model=model, progress=False)
    manifest = load_manifest(out)
    assert manifest.input_size == [32, 48] and first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_unset_options_come_from_the_checkpoints_recommendations(tmp_path: Path):
    """--read/--sigma and --height/--width left unset follow the checkpoint's recommended read and training scale;
    a value the user gives wins."""
    from kmnrt.export.bundle import with_checkpoint_defaults
    from kmnrt.model.checkpoint import save_checkpoint

    checkpoint = save_checkpoint(build_model(get_config("tiny"), seed=1), tmp_path / "tuned.safetensors",
                                 recommended=ReadConfig("kmn", 2.0), short_side=288)
    options = ExportOptions("tiny", tmp_path / "b", checkpoint=checkpoint)
    filled = with_checkpoint_defaults(options)
    assert filled.read_config == ReadConfig("kmn", 2.0) and (filled.height, filled.width) == (288, 512)
    assert with_checkpoint_defaults(replace(options, sigma=5.0)).read_config == ReadConfig("kmn", 5.0)
    assert with_checkpoint_defaults(replace(options, height=96)).input_size == (96, 176)
    assert with_checkpoint_defaults(replace(options, height=96, width=96)).input_size == (96, 96)
    plain = with_checkpoint_defaults(replace(options, checkpoint=None))
    assert plain.read_config == ReadConfig("kmn", 7.0) and plain.input_size == (480, 864)
