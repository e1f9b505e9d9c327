"""fp16 bundles for ONNX Runtime: encoders and decoder in fp16, the memory read (and the soft aggregation) in fp32.

The fp32 graphs are converted with onnxconverter-common's ``convert_float_to_float16`` with ``keep_io_types``:
every graph keeps float32 inputs and outputs (casts sit inside the graph), so a runtime feeds fp16 and fp32 bundles
identically and the bank stays fp32. Two things stay fp32 inside converted graphs: the decoder's soft aggregation
(its logit clamp at +-16.1 and the background's log(1 - e^x) lose all precision in fp16) and anything the read
computes (the whole read graph is kept fp32, ``GraphSpec.keep_fp32``).

Parity is measured end to end against the fp32 PyTorch model on the verification scene: the four fp16-bundle
graphs run in ORT one after another (query encoder, read of a bank the fp16 memory encoder wrote, decoder) and the
probabilities are compared as mask IoU (per object, argmax labels) and maximum probability difference.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from kmnrt.export.graphs import GraphSpec, graph_specs
from kmnrt.export.samples import Scene

PARITY_MEMORY_FRAMES = 3


def _expose_outputs_through_identity(model) -> None:
    """A graph output that other nodes also consume confuses the converter (it casts the output but leaves the
    consumers reading the fp32 name). Give each such output its own Identity so the converter sees a leaf."""
    import onnx

    consumed = {name for node in model.graph.node for name in node.input}
    for output in model.graph.output:
        if output.name not in consumed:
            continue
        internal = f"{output.name}__internal"
        for node in model.graph.node:
            node.input[:] = [internal if n == output.name else n for n in node.input]
            node.output[:] = [internal if n == output.name else n for n in node.output]
        model.graph.node.append(onnx.helper.make_node("Identity", [internal], [output.name],
                                                      name=f"{output.name}__identity"))


def _to_fp16(model):
    from onnxconverter_common import float16

    _expose_outputs_through_identity(model)
    del model.graph.value_info[:]  # stale fp32 infos (from extraction) would contradict the converted nodes
    converted = float16.convert_float_to_float16(model, keep_io_types=True)
    _cast_outputs_to_fp32(converted)
    return converted


def _cast_outputs_to_fp32(model) -> None:
    """``keep_io_types`` is not always honoured for outputs (its cast clean-up can leave an fp16 output behind):
    end every fp16 graph output with an explicit Cast to float32."""
    import onnx

    for output in model.graph.output:
        if output.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16:
            continue
        half = f"{output.name}__fp16"
        for node in model.graph.node:
            node.output[:] = [half if n == output.name else n for n in node.output]
            node.input[:] = [half if n == output.name else n for n in node.input]
        model.graph.node.append(onnx.helper.make_node("Cast", [half], [output.name], to=onnx.TensorProto.FLOAT,
                                                      name=f"{output.name}__to_fp32"))
        output.type.tensor_type.elem_type = onnx.TensorProto.FLOAT


def _split_before_aggregation(model, folder: Path):
    """-> (head, tail, seam): the graph up to its last Resize (the x4 upsampling of the two-class logits), and the
    rest. The decoder's tail is the soft aggregation, which must stay fp32 (the converter's node block list does
    not help: it casts every blocked node's output back to fp16 and converts the clamp constants anyway)."""
    import onnx

    resize = [n for n in model.graph.node if n.op_type == "Resize"][-1]
    seam = resize.output[0]
    source = folder / ".split-source.onnx"
    onnx.save_model(onnx.shape_inference.infer_shapes(model), str(source))
    head_path, tail_path = folder / ".split-head.onnx", folder / ".split-tail.onnx"
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    onnx.utils.extract_model(str(source), str(head_path), inputs, [seam], check_model=False)
    onnx.utils.extract_model(str(source), str(tail_path), [seam], outputs, check_model=False)
    head, tail = onnx.load(str(head_path)), onnx.load(str(tail_path))
    for path in (source, head_path, tail_path):
        path.unlink()
    return head, tail, seam


def convert_graph(source: Path, destination: Path, spec: GraphSpec) -> int:
    """Write the fp16 form of ``source`` to ``destination`` -> its node count."""
    import onnx

    model = onnx.load(str(source))
    if spec.name == "decoder":
        head, tail, seam = _split_before_aggregation(model, destination.parent)
        tail = onnx.compose.add_prefix(tail, "fp32_")  # no name clashes with the head's tensors
        for output in tail.graph.output:  # ... except that the graph outputs keep their names
            prefixed, output.name = output.name, output.name.removeprefix("fp32_")
            for node in tail.graph.node:
                node.output[:] = [output.name if n == prefixed else n for n in node.output]
        converted = onnx.compose.merge_models(_to_fp16(head), tail, io_map=[(seam, tail.graph.input[0].name)])
        _restore_io_dims(converted, model)
    else:
        converted = _to_fp16(model)
    onnx.checker.check_model(converted)
    onnx.save_model(converted, str(destination))
    return len(converted.graph.node)


def _restore_io_dims(model, original) -> None:
    """Extraction and merging drop the symbolic dim names of the I/O; put the original value infos back."""
    by_name = {v.name: v for v in list(original.graph.input) + list(original.graph.output)}
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.CopyFrom(by_name[value.name].type)


def convert_bundle_graphs(specs: tuple[GraphSpec, ...], fp32_folder: Path, folder: Path) -> dict[str, int]:
    """fp16 copies of the fp32 graphs (the read copied as it is) -> node count of each converted graph."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the float32 number ... will be truncated": expected for tiny weights
        nodes = {}
        for spec in specs:
            source, destination = fp32_folder / f"{spec.name}.onnx", folder / f"{spec.name}.onnx"
            if spec.keep_fp32:
                shutil.copyfile(source, destination)
            else:
                nodes[spec.name] = convert_graph(source, destination, spec)
    return nodes


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def mask_iou(probs: np.ndarray, reference: np.ndarray) -> float:
    """Mean IoU over objects of the argmax label masks (an object absent from both counts as 1)."""
    labels, expected = probs.argmax(0), reference.argmax(0)
    ious = []
    for obj in range(1, reference.shape[0]):
        union = np.logical_or(labels == obj, expected == obj).sum()
        ious.append(1.0 if union == 0 else float(np.logical_and(labels == obj, expected == obj).sum() / union))
    return float(np.mean(ious))


def fp16_parity(model, options, folder: Path, object_counts: tuple[int, ...] = (1, 3)) -> dict:
    """End-to-end parity of the fp16 graphs in ``folder`` with the fp32 PyTorch ``model``."""
    from kmnrt.model.memory_read import MemoryRead

    specs = {s.name: s for s in graph_specs(model.config, options.height, options.width)}
    read_memory = MemoryRead(options.read_config).eval()
    sessions = {name: _session(folder / f"{name}.onnx") for name in specs}
    scene = Scene.build(options.height, options.width, object_counts, options.verify_frames)
    cases = []
    with torch.no_grad():
        query_t = model.encode_query(scene.query_frame)
        query_o = sessions["query_encoder"].run(None, {"frame": scene.query_frame.numpy()})
        for n in object_counts:
            keys_t, values_t = scene.memory_bank(model, n, PARITY_MEMORY_FRAMES)
            keys_o, values_o = [], []
            for frame, probs in zip(scene.frames[:PARITY_MEMORY_FRAMES], scene.probs[n]):
                key, value = sessions["memory_encoder"].run(None, {"frame": frame.numpy(), "probs": probs.numpy()})
                keys_o.append(key), values_o.append(value)
            valid = torch.ones(PARITY_MEMORY_FRAMES, n)
            read_t = read_memory(keys_t, values_t, query_t.key, valid)
            probs_t = model.decode(read_t, query_t).numpy()
            (read_o,) = sessions["memory_read"].run(None, {"memory_key": np.stack(keys_o),
                                                           "memory_value": np.stack(values_o),
                                                           "memory_valid": valid.numpy(), "query_key": query_o[0]})
            (probs_o,) = sessions["decoder"].run(None, {"read": read_o, "query_value": query_o[1],
                                                        "r3": query_o[2], "r2": query_o[3]})
            cases.append({"N": n, "T": len(keys_t), "mask_iou": mask_iou(probs_o, probs_t),
                          "max_prob_diff": float(np.abs(probs_o - probs_t).max()),
                          "mean_prob_diff": float(np.abs(probs_o - probs_t).mean()),
                          "query_key_max_abs_error": float(np.abs(query_o[0] - query_t.key.numpy()).max()),
                          "memory_key_max_abs_error": float(np.abs(np.stack(keys_o) - keys_t.numpy()).max())})
    return {"reference": "fp32 PyTorch model", "io_dtype": "float32",
            "fp16_graphs": [n for n, s in specs.items() if not s.keep_fp32],
            "fp32_graphs": [n for n, s in specs.items() if s.keep_fp32], "cases": cases,
            "min_mask_iou": min(c["mask_iou"] for c in cases),
            "max_prob_diff": max(c["max_prob_diff"] for c in cases)}
