"""Parity of every exported graph with its PyTorch module, through Polygraphy's comparator on ONNX Runtime (CPU).

Cases: (N, T) in {1, 3} x {1, 5, max memory} for the read, N in {1, 3} for the decoder and the memory encoder, B in
{1, 3} for the query encoder. Each output must satisfy max |ORT - PyTorch| <= atol x max(1, max |PyTorch|)
(Polygraphy's ``SimpleCompareFunc`` with ``check_error_stat="max"``, ``rtol=0`` and a per-output ``atol``). The
scale factor matters only for features larger than 1: fp32 itself cannot hold 300.0 to better than 3e-5, and
random-weight ResNet-50 features reach 300. ``atol`` is the graph table's. For the KMN read, a verification copy of
the graph also outputs its ArgMax (the Memory-to-Query match), which must equal PyTorch's index for index: a
flipped argmax moves a Gaussian and is a real difference even when the read stays close. The decoder's copy also
outputs its two-class logits, compared like any feature; its probabilities are held to the logits' scale (they are
a bounded function of them).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kmnrt.export.graphs import GraphSpec, graph_specs
from kmnrt.export.samples import Scene

OBJECT_COUNTS = (1, 3)
MATCH_OUTPUT = "kmn_match"   # the ArgMax output exposed in the verification copy of the read
LOGITS_OUTPUT = "decoder_logits"  # the two-class logits exposed in the verification copy of the decoder



def memory_cases(max_memory: int) -> tuple[int, ...]:
    return tuple(sorted({1, min(5, max_memory), max_memory}))


def validity(frames: int, objects: int) -> Tensor:
    """All memory valid, except that the last object joined after the first frame (when there is room)."""
    valid = torch.ones(frames, objects)
    if frames > 1 and objects > 1:
        valid[0, -1] = 0.0
    return valid


def object_major_match(memory_key: Tensor, query_key: Tensor) -> Tensor:
    """PyTorch's Memory-to-Query argmax [N, T*h*w], in the graph's position order."""
    from kmnrt.model.memory_read import memory_to_query_match

    t, n, c, h, w = memory_key.shape
    return memory_to_query_match(memory_key.permute(1, 2, 0, 3, 4).reshape(n, c, t * h * w),
                                 query_key.reshape(c, h * w))


def build_cases(model, spec: GraphSpec, scene: Scene, max_memory: int, read_config) -> list[dict]:
    """-> [{"sizes": {...}, "feeds": {name: array}, "expected": {name: array}}] for one graph, with the read of
    ``read_config`` (the export's, which may differ from the one the model was built with)."""
    from kmnrt.model.memory_read import MemoryRead

    module = spec.make_module(model, read_config).eval()
    read_memory = MemoryRead(read_config).eval()
    query = model.encode_query(scene.query_frame)
    cases = []

    def add(sizes: dict, inputs: tuple[Tensor, ...], extra: dict | None = None) -> None:
        outputs = module(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        expected = {s.name: o.numpy() for s, o in zip(spec.outputs, outputs)} | (extra or {})
        cases.append({"sizes": sizes, "feeds": {s.name: t.numpy() for s, t in zip(spec.inputs, inputs)},
                      "expected": expected})

    if spec.name == "query_encoder":
        for batch in (1, 3):
            add({"B": batch}, (torch.cat([scene.frames[i % len(scene.frames)] for i in range(batch)]),))
    elif spec.name == "memory_encoder":
        for n in OBJECT_COUNTS:
            add({"N": n}, (scene.frames[0], scene.probs[n][0]))
    elif spec.name == "decoder":
        for n in OBJECT_COUNTS:
            keys, values = scene.memory_bank(model, n, min(5, max_memory))
            read = read_memory(keys, values, query.key, validity(keys.shape[0], n))
            add({"N": n}, (read, query.value, query.r3, query.r2),
                {LOGITS_OUTPUT: model.decode_logits(read, query).numpy()})
    elif spec.name == "memory_read":
        for n in OBJECT_COUNTS:
            keys, values = scene.memory_bank(model, n, max_memory)
            for t in memory_cases(max_memory):
                extra = ({MATCH_OUTPUT: object_major_match(keys[:t], query.key).numpy()}
                         if read_config.kind == "kmn" else None)
                add({"N": n, "T": t}, (keys[:t].contiguous(), values[:t].contiguous(), validity(t, n), query.key),
                    extra)
    else:
        raise ValueError(f"no verification cases for graph {spec.name!r}")
    return cases


def with_inner_output(path: Path, destination: Path, op_type: str, name: str, dtype: int) -> Path:
    """A copy of a graph that also outputs, as ``name``, the result of its last ``op_type`` node: the read's ArgMax
    (the Memory-to-Query match) or the decoder's last Resize (the two-class logits before soft aggregation)."""
    import onnx

    model = onnx.load(str(path))
    nodes = [node for node in model.graph.node if node.op_type == op_type]
    if not nodes:
        raise RuntimeError(f"{path.name}: expected a {op_type} node, found none")
    model.graph.node.append(onnx.helper.make_node("Identity", [nodes[-1].output[0]], [name]))
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, dtype, None))
    onnx.save_model(model, str(destination))
    return destination


def compare_graph(onnx_path: Path, spec: GraphSpec, cases: list[dict]) -> dict:
    """Run ``cases`` through ORT via Polygraphy and compare with the PyTorch outputs."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator, SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    started = time.perf_counter()
    runner = OnnxrtRunner(SessionFromOnnx(str(onnx_path), providers=["cpu"]), name="onnxruntime")
    atol = spec.atol
    scales = {name: max(1.0, max(float(np.abs(case["expected"][name]).max()) for case in cases))
              for name in cases[0]["expected"] if name != MATCH_OUTPUT}
    if LOGITS_OUTPUT in scales:
        # Probabilities are a bounded function of the logits, so fp32 rounding in a conv stack whose logits reach
        # L moves them by ~L ulps: they are held to the logits' scale (random-weight paper logits reach ~100).
        scales = {name: scales[LOGITS_OUTPUT] for name in scales}
    tolerances = {name: atol * scale for name, scale in scales.items()} | {MATCH_OUTPUT: 0.0}  # indices: exact
    compare = SimpleCompareFunc(atol=tolerances, rtol=0.0,
                                check_error_stat="max")
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL), np.errstate(divide="ignore", invalid="ignore"):
        results = Comparator.run([runner], data_loader=[case["feeds"] for case in cases])
        results.add([case["expected"] for case in cases], runner_name="pytorch")
        accuracy = Comparator.compare_accuracy(results, compare_func=compare)
    ort_outputs = results[0][1]
    per_iteration = next(iter(accuracy[0].values()))  # one compare function, one runner pair
    records = []
    for case, ort_out, verdict in zip(cases, ort_outputs, per_iteration):
        passed = bool(verdict) and all(bool(r) for r in verdict.values())
        record = {"sizes": case["sizes"], "passed": passed, "outputs": {}}
        for name, expected in case["expected"].items():
            got = ort_out[name]
            if name == MATCH_OUTPUT:
                record["argmax_mismatches"] = int((got != expected).sum())
                record["argmax_positions"] = int(expected.size)
                continue
            error = np.abs(got.astype(np.float64) - expected.astype(np.float64))
            record["outputs"][name] = {"max_abs_error": float(error.max()),
                                       "max_abs_value": float(np.abs(expected).max())}
        record["max_abs_error"] = max(o["max_abs_error"] for o in record["outputs"].values())
        records.append(record)
    return {"atol": atol, "scales": scales, "passed": all(r["passed"] for r in records), "cases": records,
            "max_abs_error": max(r["max_abs_error"] for r in records),
            "seconds": round(time.perf_counter() - started, 3)}


def verify_graphs(model, options, folder: Path) -> dict:
    """Verify the four fp32 graphs in ``folder`` against ``model`` -> the report's ``verification`` section."""
    import onnx

    started = time.perf_counter()
    specs = graph_specs(model.config, options.height, options.width)
    scene = Scene.build(options.height, options.width, OBJECT_COUNTS, options.verify_frames)
    inputs = f"frames from {options.verify_frames}" if options.verify_frames else "generated textured frames"
    report = {"backend": "onnxruntime CPUExecutionProvider",
              "comparator": "polygraphy SimpleCompareFunc(check_error_stat='max', atol=graph atol, rtol=0)",
              "inputs": inputs + ", soft blob masks", "graphs": {}}
    with torch.no_grad(), tempfile.TemporaryDirectory(dir=folder, prefix=".verify-") as scratch:
        for spec in specs:
            path = folder / f"{spec.name}.onnx"
            if spec.name == "memory_read" and options.read_config.kind == "kmn":
                path = with_inner_output(path, Path(scratch) / path.name, "ArgMax", MATCH_OUTPUT,
                                         onnx.TensorProto.INT64)
            elif spec.name == "decoder":
                path = with_inner_output(path, Path(scratch) / path.name, "Resize", LOGITS_OUTPUT,
                                         onnx.TensorProto.FLOAT)
            cases = build_cases(model, spec, scene, options.max_memory, options.read_config)
            report["graphs"][spec.name] = compare_graph(path, spec, cases)
            del cases
    report["passed"] = all(g["passed"] for g in report["graphs"].values())
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report
