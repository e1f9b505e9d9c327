"""``kmnrt export`` (checkpoint -> verified bundle) and ``kmnrt inspect`` (what a bundle holds)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kmnrt.columns import aligned_columns
from kmnrt.model.cli import add_read_arguments, add_weights_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint to a verified ONNX (and optionally TensorRT) bundle",
        description="Export the four KMN graphs (query encoder, memory read, decoder, memory encoder) at a fixed "
        "input size with the number of objects N and memory frames T dynamic; verify every graph in ONNX Runtime "
        "against PyTorch; write the weights, a report and a manifest with every file's sha256. The bundle is built "
        "in a temporary folder and renamed into place, so a failed export leaves nothing behind.",
    )
    add_weights_arguments(parser)
    parser.add_argument("--height", type=int,
                        help="input height, a multiple of 16; frames of other sizes are resized to fit (default: "
                        "the short side the checkpoint recommends for tracking, if it records one, else 480)")
    parser.add_argument("--width", type=int,
                        help="input width, a multiple of 16 (default: 16:9 to the height, rounded up: 864 for 480, "
                        "512 for 288)")
    parser.add_argument("--max-objects", type=int, default=4, help="most objects per session (default: 4)")
    parser.add_argument("--max-memory", type=int, default=20,
                        help="memory bank slots including the previous frame, at least 2 (default: 20)")
    parser.add_argument("--max-batch", type=int, default=4,
                        help="most frames per query-encoder call in TensorRT profiles (default: 4)")
    add_read_arguments(parser)
    parser.add_argument("--mem-every", type=int, default=5,
                        help="default memory interval recorded for the runtime (default: 5)")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                        help="fp16: encoders and decoder in fp16, the memory read in fp32 (default: fp32)")
    parser.add_argument("--engine", choices=("onnx", "tensorrt"), default="onnx",
                        help="tensorrt: also build one TensorRT plan per graph on this GPU (default: onnx)")
    parser.add_argument("--verify-frames", type=Path,
                        help="a folder of frames or a video to verify with (default: generated textured frames)")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to create, e.g. engines/NAME")
    parser.add_argument("--force", action="store_true", help="replace an existing bundle at --out (only a kmnrt bundle "
                        "holding nothing but its own files, or an empty folder)")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip the ONNX Runtime vs PyTorch verification (the report says so)")
    parser.set_defaults(handler=run_export)

    inspect = subparsers.add_parser(
        "inspect", help="print a bundle's manifest, graph I/O and TensorRT op audit",
        description="Check a bundle's files against its manifest and print its configuration, each graph's "
        "inputs and outputs, the verification summary and the static TensorRT operator audit.")
    inspect.add_argument("bundle", type=Path, help="bundle folder (engines/NAME)")
    inspect.add_argument("--json", action="store_true", help="print the manifest and report as JSON")
    inspect.set_defaults(handler=run_inspect)


def run_export(args: argparse.Namespace) -> int:
    from kmnrt.export.bundle import ExportOptions, export_bundle

    options = ExportOptions(
        config=args.config, out=args.out, checkpoint=args.checkpoint, height=args.height, width=args.width,
        max_objects=args.max_objects, max_memory=args.max_memory, read=args.read, sigma=args.sigma,
        mem_every=args.mem_every, precision=args.precision, engine=args.engine, force=args.force,
        verify=args.verify, max_batch=args.max_batch, verify_frames=args.verify_frames)
    bundle = export_bundle(options)
    report = json.loads((bundle / "report.json").read_text())
    print(summary_table(report))
    print(f"bundle written to {bundle} in {report['seconds']:.1f} s")
    return 0


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return ""


def summary_table(report: dict) -> str:
    """graph | nodes | size | export s | parity | verify s | TensorRT audit. The parity column shows the largest
    |ORT - PyTorch| and the largest tolerance (atol x output magnitude) it was held to."""
    verification = (report.get("verification") or {}).get("graphs", {})
    audit = (report.get("op_audit") or {}).get("graphs", {})
    rows = [("graph", "nodes", "size", "export", "parity max|err| / tolerance", "verify", "TRT ops")]
    for name, graph in report["graphs"].items():
        check = verification.get(name)
        parity = "not verified" if check is None else (
            f"{'ok' if check['passed'] else 'FAIL'} {check['max_abs_error']:.1e} / "
            f"{check['atol'] * max(check['scales'].values()):.1e}")
        ops = audit.get(name, {})
        trt = "-" if "supported" not in ops else ("ok" if ops["supported"] else f"{len(ops['problems'])} problems")
        rows.append((name, str(graph["nodes"]), _size(graph.get("bytes", 0)), f"{graph['export_seconds']:.1f} s",
                     parity, f"{check['seconds']:.1f} s" if check else "-", trt))
    lines = aligned_columns(rows)
    parity = report.get("fp16_parity")
    if parity:
        lines.append(f"fp16 vs fp32 PyTorch: min mask IoU {parity['min_mask_iou']:.4f}, "
                     f"max probability difference {parity['max_prob_diff']:.2e}")
    return "\n".join(lines)


def run_inspect(args: argparse.Namespace) -> int:
    from kmnrt.export.manifest import load_manifest

    manifest = load_manifest(args.bundle)
    report_path = args.bundle / (manifest.report or "report.json")
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    if args.json:
        from dataclasses import asdict

        print(json.dumps({"manifest": asdict(manifest), "report": report}, indent=2))
        return 0
    model = manifest.model_config
    height, width = manifest.input_size
    print(f"bundle {args.bundle}  ({manifest.format}, created {manifest.created}; all {len(manifest.files)} files "
          f"match their sha256)")
    print(f"  model       {model.name}: key {model.key_dim}, value {model.value_dim}, decoder {model.decoder_dim}")
    print(f"  weights     {manifest.checkpoint.get('source')}"
          + (f" {manifest.checkpoint['path']} sha256 {manifest.checkpoint['sha256'][:16]}…"
             if manifest.checkpoint.get("sha256") else ""))
    print(f"  read        {manifest.read['kind']} (sigma {manifest.read['sigma']})")
    print(f"  input       {height}x{width}; max objects {manifest.max_objects}, max memory {manifest.max_memory}, "
          f"mem every {manifest.mem_every}")
    print(f"  precision   {manifest.precision} (I/O {manifest.extra.get('io_dtype', 'float32')}); engine "
          f"{manifest.engine}" + (f"; TensorRT {manifest.tensorrt}" if manifest.tensorrt else ""))
    print(f"  verified    {manifest.extra.get('verified')}")
    for name, graph in manifest.graphs.items():
        print(f"\n{name}  [{graph.precision}; dynamic {', '.join(graph.dynamic)}]  {graph.onnx}"
              + (f" + {graph.plan}" if graph.plan else ""))
        for direction, specs in (("in ", graph.inputs), ("out", graph.outputs)):
            for spec in specs:
                shape = "[" + ", ".join(str(d) for d in spec["shape"]) + "]"
                print(f"  {direction} {spec['name']:<13} {spec['dtype']:<8} {shape:<24} {spec['doc']}")
    if report:
        print("\n" + summary_table(report))
        audit = report.get("op_audit") or {}
        if audit:
            print(f"\nTensorRT op audit against {audit.get('source', {}).get('title', 'the ONNX-TensorRT list')}:")
            for name, graph in audit["graphs"].items():
                ops = ", ".join(f"{op} {count}" for op, count in graph["ops"].items())
                status = "all supported" if graph.get("supported") else "; ".join(graph.get("problems", []))
                print(f"  {name}: {status}\n    {ops}")
    return 0
