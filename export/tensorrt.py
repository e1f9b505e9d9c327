"""TensorRT plans for a bundle's graphs, and the check that a plan fits the machine that loads it.

One plan per graph, each with one optimisation profile: N in 1..max objects (K = N + 1), T in 1..max memory,
B in 1..max batch; the "opt" point is N = min(2, max), T = max memory (a full bank is the steady state), B = 1.
Precision:
- fp32 bundles build fp32 plans (TF32 disabled so the plan computes what ORT verified).
- fp16 bundles on TensorRT 10: weakly typed network with the FP16 builder flag; the read graph gets no FP16 flag at
  all, and in the decoder every layer of the soft aggregation (after the logits' last resize) is constrained to fp32
  (``OBEY_PRECISION_CONSTRAINTS``).
- TensorRT 11 removed the precision flags: the fp16 ONNX graphs already carry their types (fp16 convolutions, fp32
  read and aggregation), so they are parsed into a strongly typed network.
All graphs share one timing cache file in the bundle. The TensorRT version, GPU, compute capability and driver go
into the manifest; :func:`check_plan_compatibility` refuses plans built elsewhere.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from kmnrt.errors import BundleError, UserInputError

TIMING_CACHE = "timing.cache"
WORKSPACE_BYTES = 4 << 30


def _tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise UserInputError("--engine tensorrt needs the `tensorrt` Python package (pip install tensorrt>=10) and "
                             "a CUDA GPU; use --engine onnx on this machine") from None
    return trt


def target_description() -> dict:
    """The TensorRT version and the GPU this process builds for / loads on."""
    trt = _tensorrt()
    import torch

    if not torch.cuda.is_available():
        raise UserInputError("--engine tensorrt: no CUDA GPU is visible to this process")
    major, minor = torch.cuda.get_device_capability(0)
    return {"version": trt.__version__, "gpu": torch.cuda.get_device_name(0),
            "compute_capability": f"{major}.{minor}", "driver": _driver_version()}


def _driver_version() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip().splitlines()[0] if result.stdout.strip() else None


def profile_shapes(spec, options) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """input name -> (min, opt, max) shapes of the graph's one optimisation profile."""
    low = {"N": 1, "T": 1, "B": 1}
    best = {"N": min(2, options.max_objects), "T": options.max_memory, "B": 1}
    high = {"N": options.max_objects, "T": options.max_memory, "B": options.max_batch}
    return {s.name: (s.concrete(low), s.concrete(best), s.concrete(high)) for s in spec.inputs}


def _strongly_typed(trt) -> bool:
    return int(trt.__version__.split(".")[0]) >= 11


def _constrain_fp32(trt, network, spec) -> None:
    """Weakly typed fp16 builds: the read stays fp32 by getting no FP16 flag; in the decoder, the soft aggregation
    (every layer after the last resize, the x4 upsampling of the logits) is pinned to fp32."""
    if spec.name != "decoder":
        return
    layers = [network.get_layer(index) for index in range(network.num_layers)]
    last_resize = max(i for i, layer in enumerate(layers) if layer.type == trt.LayerType.RESIZE)
    for layer in layers[last_resize + 1:]:
        if layer.type not in (trt.LayerType.CONSTANT, trt.LayerType.SHAPE):
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                if layer.get_output_type(output) in (trt.float16, trt.float32):
                    layer.set_output_type(output, trt.float32)


def build_plan(onnx_path: Path, plan_path: Path, spec, options, cache_bytes: bytes) -> tuple[bytes, dict]:
    """Parse ``onnx_path``, build a plan for ``spec`` -> (timing cache bytes, build record)."""
    trt = _tensorrt()
    started = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = _strongly_typed(trt)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"TensorRT {trt.__version__} cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if not strongly_typed:
        config.clear_flag(trt.BuilderFlag.TF32)
        if options.precision == "fp16" and not spec.keep_fp32:
            config.set_flag(trt.BuilderFlag.FP16)
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            _constrain_fp32(trt, network, spec)
    profile = builder.create_optimization_profile()
    shapes = profile_shapes(spec, options)
    for name, (low, best, high) in shapes.items():
        profile.set_shape(name, low, best, high)
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BundleError(f"TensorRT {trt.__version__} failed to build a plan for {spec.name} (see the log above)")
    tmp = plan_path.with_name(f".{plan_path.name}.tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(plan_path)
    record = {"plan": plan_path.name, "bytes": plan_path.stat().st_size, "strongly_typed": strongly_typed,
              "seconds": round(time.perf_counter() - started, 3),
              "profile": {k: [list(s) for s in v] for k, v in shapes.items()}}
    return bytes(cache.serialize()), record


def build_plans(folder: Path, specs, options, on_graph_done: Callable[[str], object] | None = None) -> dict:
    """Build every graph's plan into ``folder`` (sharing one timing cache) -> the report's ``tensorrt`` section."""
    target = target_description()
    cache_path = folder / TIMING_CACHE
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    graphs = {}
    for spec in specs:
        cache_bytes, graphs[spec.name] = build_plan(folder / f"{spec.name}.onnx", folder / f"{spec.name}.plan",
                                                    spec, options, cache_bytes)
        if on_graph_done is not None:
            on_graph_done(f"tensorrt {spec.name}")
    cache_path.write_bytes(cache_bytes)
    return {"target": {**target, "timing_cache": TIMING_CACHE}, "graphs": graphs}


def rebuild_command(manifest, bundle: Path) -> str:
    checkpoint = manifest.checkpoint.get("path")
    height, width = manifest.input_size
    return (f"kmnrt export --config {manifest.model['name']}" + (f" --checkpoint {checkpoint}" if checkpoint else "")
            + f" --height {height} --width {width} --max-objects {manifest.max_objects} --max-memory "
            f"{manifest.max_memory} --read {manifest.read['kind']} --sigma {manifest.read['sigma']} --precision "
            f"{manifest.precision} --engine tensorrt --out {bundle} --force --mem-every {manifest.mem_every} "
            f"--max-batch {manifest.extra.get('max_batch', 4)}")


def check_plan_compatibility(manifest, bundle: Path, current: dict | None = None) -> None:
    """Refuse plans built for another TensorRT version, GPU or compute capability (``current`` defaults to this
    machine). The message names both sides and the command that rebuilds the plans here."""
    built = manifest.tensorrt
    if not built:
        raise BundleError(f"bundle {bundle} has no TensorRT plans; build them with: "
                          f"{rebuild_command(manifest, bundle)}")
    current = current if current is not None else target_description()
    differences = [f"{label} {built.get(key)} (built) vs {current.get(key)} (here)"
                   for key, label in (("version", "TensorRT"), ("gpu", "GPU"),
                                      ("compute_capability", "compute capability"))
                   if str(built.get(key)) != str(current.get(key))]
    if differences:
        raise BundleError(f"the TensorRT plans in {bundle} were built for another machine: " + "; ".join(differences)
                          + f". Rebuild them here with: {rebuild_command(manifest, bundle)}")
