"""Backend choice and the runners: ONNX Runtime with IO binding here; CUDA and TensorRT where available."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from kmnrt.errors import BundleError, UserInputError
from kmnrt.export.graphs import graph_specs
from kmnrt.export.manifest import load_manifest
from kmnrt.model.checkpoint import load_model
from kmnrt.runtime import Tracker
from kmnrt.runtime.backends.base import load_runner, resolve_backend

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


def ort_has_cuda() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def test_auto_says_what_it_chose_and_why(tiny_bundle):
    manifest = load_manifest(tiny_bundle)
    name, skipped = resolve_backend("auto", manifest)
    if not torch.cuda.is_available():
        assert name == "onnxruntime"
        assert [note.split(":")[0] for note in skipped] == ["tensorrt", "onnxruntime-cuda"]
        tracker = Tracker.from_bundle(tiny_bundle)
        assert tracker.backend == "onnxruntime"
        assert tracker.runner.selection.startswith("auto chose onnxruntime (skipped tensorrt: ")
    assert resolve_backend("ort-cpu", manifest) == ("onnxruntime", [])
    with pytest.raises(UserInputError, match="unknown backend 'onnx'.*choose one of auto, torch, onnxruntime"):
        resolve_backend("onnx", manifest)
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(UserInputError, match="backend tensorrt cannot run this bundle here: tensorrt is not"):
            resolve_backend("tensorrt", manifest)


def test_ort_writes_into_the_bound_buffers(tiny_bundle):
    """IO binding: the graph writes into the caller's preallocated tensors (same address), matching torch."""
    manifest = load_manifest(tiny_bundle)
    specs = {s.name: s for s in graph_specs(manifest.model_config, *manifest.input_size)}
    model = load_model(manifest.model_config, tiny_bundle / manifest.weights, manifest.read_config)
    with load_runner(tiny_bundle, manifest, "onnxruntime") as ort_runner:
        frame = torch.rand(specs["query_encoder"].inputs[0].concrete({"B": 2}))
        outputs = {s.name: torch.full(s.concrete({"B": 2}), float("nan")) for s in specs["query_encoder"].outputs}
        addresses = {name: t.data_ptr() for name, t in outputs.items()}
        ort_runner.infer("query_encoder", {"frame": frame}, outputs)
    assert {name: t.data_ptr() for name, t in outputs.items()} == addresses
    with torch.no_grad():
        expected = model.encode_query(frame[1:2])
    assert torch.allclose(outputs["query_key"][1:2], expected.key, atol=1e-5)
    assert torch.allclose(outputs["r2"][1:2], expected.r2, atol=1e-5)
    with pytest.raises(ValueError, match="contiguous"):
        ort_runner.activate()
        ort_runner.infer("query_encoder", {"frame": frame.transpose(2, 3)}, outputs)


def test_torch_and_onnxruntime_backends_agree(tiny_bundle, bmx_small):
    masks = {}
    for backend in ("torch", "onnxruntime"):
        tracker = Tracker.from_bundle(tiny_bundle, backend=backend)
        state = tracker.start(bmx_small.frames[0], bmx_small.first_mask)
        masks[backend] = [tracker.step(state, frame).mask for frame in bmx_small.frames[1:8]]
    agreement = np.mean([(a == b).mean() for a, b in zip(masks["torch"], masks["onnxruntime"])])
    assert agreement > 0.999


def test_a_damaged_bundle_is_refused(tiny_bundle, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    (copy / "decoder.onnx").write_bytes(b"not a graph")
    with pytest.raises(BundleError, match="decoder.onnx"):
        Tracker.from_bundle(copy)
    with pytest.raises(BundleError, match="does not exist"):
        Tracker.from_bundle(tmp_path / "missing")
    with pytest.raises(BundleError, match="is a file; a bundle is the folder"):
        Tracker.from_bundle(copy / "manifest.json")


def test_a_graph_of_another_bundle_is_refused_even_with_its_checksum_in_the_manifest(tiny_bundle, tmp_path):
    """A hand-assembled bundle whose files all match the manifest's sha256, but whose decoder was exported at
    another size: refused when it loads, naming the graph and tensor, not at the first frame with ORT's error."""
    import json
    import shutil

    from kmnrt.export.bundle import ExportOptions, export_bundle
    from kmnrt.export.manifest import sha256_of
    from kmnrt.model.config import get_config
    from kmnrt.model.kmn import build_model

    other = ExportOptions(config="tiny", out=tmp_path / "other", height=32, width=48, verify=False)
    export_bundle(other, model=build_model(get_config("tiny"), other.read_config, seed=0), progress=False)
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    shutil.copyfile(other.out / "decoder.onnx", copy / "decoder.onnx")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["decoder.onnx"] = {"sha256": sha256_of(copy / "decoder.onnx"),
                                         "bytes": (copy / "decoder.onnx").stat().st_size}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"decoder.onnx: tensor \w+ of graph decoder has shape \[.*\], the "
                       r"manifest says \[.*\] \(a graph of another bundle\?\)"):
        Tracker.from_bundle(copy, backend="onnxruntime")


@pytest.mark.skipif(ort_has_cuda() or importlib.util.find_spec("tensorrt") is not None,
                    reason="a GPU backend can run here")
def test_auto_with_a_gpu_device_but_no_gpu_backend_says_so(tiny_bundle):
    """Not 'onnxruntime runs on the cpu; use onnxruntime-cuda', which cannot run here either."""
    with pytest.raises(UserInputError, match=r"--device cuda:0 asks for a GPU, but no GPU backend can run this "
                       r"bundle here \(tensorrt: .*; onnxruntime-cuda: .*\); leave --device out to run on the CPU"):
        Tracker.from_bundle(tiny_bundle, device="cuda:0")


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_a_device_torch_does_not_know_is_a_user_error(tiny_bundle, backend):
    with pytest.raises(UserInputError, match="device 'bogus' is not one torch knows: give cpu, cuda or cuda:N"):
        Tracker.from_bundle(tiny_bundle, backend=backend, device="bogus")


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("backend", ["torch", "onnxruntime-cuda"])
def test_gpu_backends_match_the_cpu(tiny_bundle, bmx_small, backend):
    """On a GPU the bank stays on the device and the masks match ONNX Runtime CPU."""
    if backend == "onnxruntime-cuda" and not ort_has_cuda():
        pytest.skip("this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    gpu = Tracker.from_bundle(tiny_bundle, backend=backend, device="cuda")
    cpu = Tracker.from_bundle(tiny_bundle, backend="onnxruntime")
    gpu_state = gpu.start(bmx_small.frames[0], bmx_small.first_mask)
    cpu_state = cpu.start(bmx_small.frames[0], bmx_small.first_mask)
    assert gpu_state.bank.keys().device.type == "cuda"
    if backend == "onnxruntime-cuda":
        assert all("CUDAExecutionProvider" in s.get_providers() for s in gpu.runner.sessions.values())
    for frame in bmx_small.frames[1:8]:
        ours, theirs = gpu.step(gpu_state, frame), cpu.step(cpu_state, frame)
        assert ours.probs.device.type == "cuda"
        assert (ours.mask == theirs.mask).mean() > 0.999


@pytest.mark.tensorrt
@requires_cuda
def test_tensorrt_backend_matches_the_cpu(tmp_path, bmx_small):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed here")
    from kmnrt.export.bundle import ExportOptions, export_bundle
    from kmnrt.model.config import get_config
    from kmnrt.model.kmn import build_model

    options = ExportOptions(config="tiny", out=tmp_path / "trt", height=64, width=112, engine="tensorrt")
    bundle = export_bundle(options, model=build_model(get_config("tiny"), seed=0), progress=False)
    trt = Tracker.from_bundle(bundle, backend="tensorrt")
    cpu = Tracker.from_bundle(bundle, backend="onnxruntime")
    trt_state = trt.start(bmx_small.frames[0], bmx_small.first_mask)
    cpu_state = cpu.start(bmx_small.frames[0], bmx_small.first_mask)
    for frame in bmx_small.frames[1:8]:
        assert (trt.step(trt_state, frame).mask == cpu.step(cpu_state, frame).mask).mean() > 0.999


def test_onnxruntime_flushes_the_reads_subnormals_and_reads_as_pytorch(tmp_path, monkeypatch):
    """The exported read keeps the plain softmax (no floor on the logits, which cost ONNX Runtime an extra
    [N, Q, P] tensor); the runner's sessions flush subnormals to zero instead. A kernel this tight (sigma 0.3 on
    the tiny bundle's 4x7 grid) leaves subnormal weights in a plain softmax, and the read still matches PyTorch's,
    whose logits are floored (model/memory_read.py)."""
    import onnx

    from kmnrt.export.bundle import ExportOptions, export_bundle
    from kmnrt.model import memory_read
    from kmnrt.model.config import get_config
    from kmnrt.model.kmn import build_model

    options = ExportOptions(config="tiny", out=tmp_path / "tight", height=64, width=112, sigma=0.3, verify=False)
    bundle = export_bundle(options, model=build_model(get_config("tiny"), options.read_config, seed=0), progress=False)
    manifest = load_manifest(bundle)
    ops = {node.op_type for node in onnx.load(str(bundle / "memory_read.onnx")).graph.node}
    assert "Softmax" in ops and not {"Max", "ReduceMax", "Clip"} & ops
    spec = {s.name: s for s in graph_specs(manifest.model_config, *manifest.input_size)}["memory_read"]
    sizes = {"N": 2, "T": 3}
    generator = torch.Generator().manual_seed(0)
    inputs = {s.name: torch.randn(s.concrete(sizes), generator=generator) for s in spec.inputs}
    inputs["memory_valid"] = torch.ones_like(inputs["memory_valid"])
    output = torch.zeros(spec.outputs[0].concrete(sizes))
    with load_runner(bundle, manifest, "onnxruntime") as runner:
        session = runner.sessions["memory_read"]
        assert session.get_session_options().get_session_config_entry("session.set_denormal_as_zero") == "1"
        runner.infer("memory_read", inputs, {spec.outputs[0].name: output})
    keys, values, query = inputs["memory_key"], inputs["memory_value"], inputs["query_key"]
    plain_weights = []
    with monkeypatch.context() as patch:
        patch.setattr(memory_read, "attention_weights",
                      lambda logits: plain_weights.append(torch.softmax(logits, dim=-1)) or plain_weights[-1])
        memory_read.kmn_read_folded(keys, values, query, 0.3)
    tiny = torch.finfo(torch.float32).tiny
    # the case the flush is for, and the caller's own arithmetic still keeps its subnormals after the runner ran
    assert int(((plain_weights[0] > 0) & (plain_weights[0] < tiny)).sum()) > 100
    expected = memory_read.kmn_read_folded(keys, values, query, 0.3)
    assert (output - expected).abs().max() < 1e-5


def test_subnormals_flushed_gives_the_thread_its_mode_back():
    from kmnrt.runtime.backends.ort import flushing_subnormals, subnormals_flushed

    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU has no flush-to-zero mode torch can set")
    with subnormals_flushed():
        assert flushing_subnormals()
    assert not flushing_subnormals()
    torch.set_flush_denormal(True)
    try:
        with subnormals_flushed():
            pass
        assert flushing_subnormals()  # a thread that flushed before keeps flushing
    finally:
        torch.set_flush_denormal(False)
