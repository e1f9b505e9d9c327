"""Build a bundle: the four graphs, the weights they came from, the verification report and the manifest.

Everything is written into a hidden temporary folder next to ``out`` and renamed into place at the end, so an
interrupted or failed export (including a full disk) never leaves a folder that looks like a bundle.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from kmnrt.errors import KmnrtWarning, UserInputError, VerificationError
from kmnrt.export.manifest import ENGINES, PRECISIONS
from kmnrt.export.placement import move_into_place, not_a_bundle, remove_abandoned_staging
from kmnrt.model.config import MAX_SIDE, ReadConfig, get_config
from kmnrt.versions import package_versions

if TYPE_CHECKING:
    from kmnrt.model.kmn import KMN

WEIGHTS = "weights.safetensors"
REPORT = "report.json"
RANDOM_SEED = 0
DEFAULT_HEIGHT = 480


@dataclass(frozen=True)
class ExportOptions:
    config: str
    out: Path
    checkpoint: Path | None = None    # None: the config's embedded checkpoint if any, else seeded random weights
    height: int | None = None         # None: the checkpoint's training short side if it records one, else 480
    width: int | None = None          # None: 16:9 to the height (864 for 480), rounded up to a multiple of 16
    max_objects: int = 4
    max_memory: int = 20               # bank slots including the previous-frame slot
    read: str | None = None            # None: the checkpoint's recommended read, else "kmn"
    sigma: float | None = None         # None: the checkpoint's recommended sigma, else 7 (the paper's)
    mem_every: int = 5
    precision: str = "fp32"            # fp16: encoders and decoder in fp16, the read in fp32
    engine: str = "onnx"               # tensorrt: also build one plan per graph
    force: bool = False
    verify: bool = True
    max_batch: int = 4                 # query-encoder batch (sessions served together) in TensorRT profiles
    verify_frames: Path | None = None  # a folder or video to take verification frames from (else generated)

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) as set; unset sides take the defaults without a checkpoint (:func:`with_checkpoint_defaults`
        fills them from the checkpoint first)."""
        height = DEFAULT_HEIGHT if self.height is None else self.height
        return height, wide_width(height) if self.width is None else self.width

    @property
    def read_config(self) -> ReadConfig:
        """The read as set; unset fields take :class:`ReadConfig`'s defaults (:func:`with_checkpoint_defaults`
        fills them from the checkpoint first)."""
        default = ReadConfig()
        return ReadConfig(self.read or default.kind,  # type: ignore[arg-type]
                          default.sigma if self.sigma is None else float(self.sigma))


def wide_width(height: int) -> int:
    """A 16:9 input for ``height``, rounded up to a multiple of 16 (480 -> 864, which 480x854 DAVIS fits)."""
    return math.ceil(height * 16 / 9 / 16) * 16


def with_checkpoint_defaults(options: ExportOptions, model: KMN | None = None) -> ExportOptions:
    """Options with every unset field filled: --read/--sigma from the checkpoint's recommended read and the input
    height from the short side it recommends tracking at (so the runtime tracks at that scale, as ``kmnrt
    track`` does), when it records them; else the paper's read and 480. With ``model`` given, no checkpoint."""
    from kmnrt.framing import round_up
    from kmnrt.model.checkpoint import choose_read, recommended_short_side
    from kmnrt.model.embedded import default_checkpoint

    checkpoint = None if model is not None else options.checkpoint or default_checkpoint(options.config)
    read = choose_read(options.read, options.sigma, checkpoint)
    if options.height is None and checkpoint is not None and (short_side := recommended_short_side(checkpoint)):
        options = replace(options, height=round_up(short_side))
    height, width = options.input_size
    return replace(options, read=read.kind, sigma=read.sigma, height=height, width=width)


@dataclass
class BuildLog:
    """What each step produced; becomes ``report.json`` and the CLI's summary table."""

    graphs: dict[str, dict] = field(default_factory=dict)
    verification: dict | None = None
    fp16_parity: dict | None = None
    op_audit: dict | None = None
    tensorrt: dict | None = None
    seconds: float = 0.0


def _nearest_multiple(value: int, multiple: int = 16) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def validate_options(options: ExportOptions) -> None:
    """Every user error that can be found before any work is done."""
    get_config(options.config)
    options.read_config  # noqa: B018 - validates read kind and sigma
    for label, value in zip(("height", "width"), options.input_size):
        if value < 16:
            raise UserInputError(f"--{label} {value}: the network needs at least 16 pixels (one key cell)")
        if value > MAX_SIDE:
            raise UserInputError(f"--{label} {value} is above {MAX_SIDE} pixels, larger than any video format in "
                                 f"use (the export would need hundreds of GB); frames of any size are resized "
                                 f"to fit the bundle")
        if value % 16:
            raise UserInputError(f"--{label} {value} is not a multiple of 16; the nearest valid {label} is "
                                 f"{_nearest_multiple(value)}")
    if options.max_memory < 2:
        raise UserInputError(f"--max-memory {options.max_memory}: the bank needs at least 2 slots (the first "
                             f"frame and the previous frame)")
    if not 1 <= options.max_objects <= 255:
        raise UserInputError(f"--max-objects {options.max_objects}: between 1 and 255 (object ids are 1..255)")
    if options.max_batch < 1:
        raise UserInputError(f"--max-batch {options.max_batch}: at least one frame per batch is needed")
    if options.mem_every < 1:
        raise UserInputError(f"--mem-every {options.mem_every} must be at least 1")
    if options.precision not in PRECISIONS:
        raise UserInputError(f"unknown precision {options.precision!r}: choose one of {', '.join(PRECISIONS)}")
    if options.engine not in ENGINES:
        raise UserInputError(f"unknown engine {options.engine!r}: choose one of {', '.join(ENGINES)}")
    if options.engine == "tensorrt":
        from kmnrt.export.tensorrt import target_description

        target_description()  # fails fast, before any export work, where TensorRT or a GPU is missing
    if options.checkpoint is not None and not Path(options.checkpoint).is_file():
        what = "is a folder; give the checkpoint file" if Path(options.checkpoint).is_dir() else "does not exist"
        raise UserInputError(f"checkpoint {options.checkpoint} {what}")
    if options.verify_frames is not None:
        if not options.verify:
            raise UserInputError("--verify-frames chooses the frames of the verification that --no-verify skips; "
                                 "drop one of them")
        from kmnrt.export.samples import frames_from

        try:  # now rather than after the export
            frames_from(options.verify_frames, 16, 16, 1)
        except UserInputError as exc:
            raise UserInputError(f"--verify-frames: {exc}") from None
    out = Path(options.out)
    if out.exists():
        # checked first, so that a folder --force would refuse is never answered with "pass --force"
        foreign = not_a_bundle(out)
        if foreign:
            raise UserInputError(f"{out} exists and is not a kmnrt bundle ({foreign}); --force only replaces "
                                 f"bundles (choose another --out)")
        if not options.force:
            raise UserInputError(f"output folder {out} already exists; pass --force to replace it")


def load_export_model(options: ExportOptions):
    """-> (model in eval mode, checkpoint record for the manifest)."""
    from kmnrt.model.checkpoint import load_model
    from kmnrt.model.embedded import default_checkpoint
    from kmnrt.export.manifest import sha256_of

    config = get_config(options.config)
    checkpoint = options.checkpoint or default_checkpoint(config.name)
    model = load_model(config, checkpoint, options.read_config)
    if checkpoint is None:
        warnings.warn(f"no checkpoint for config '{config.name}' (and no embedded one): the bundle holds seeded random "
                      f"weights, its masks will be meaningless; pass --checkpoint", KmnrtWarning, stacklevel=2)
        return model, {"path": None, "sha256": None, "source": f"seeded random weights (seed {RANDOM_SEED})"}
    source = "embedded" if options.checkpoint is None else "file"
    return model, {"path": str(checkpoint), "sha256": sha256_of(checkpoint), "source": source}


BUNDLE_PACKAGES = ("kmn-rt", "torch", "onnx", "onnxscript", "onnxruntime", "polygraphy", "numpy",
                   "onnxconverter-common", "tensorrt")


def export_bundle(options: ExportOptions, model=None, progress: bool = True) -> Path:
    """Build the bundle described by ``options`` (with ``model`` instead of loading one, if given) -> its path."""
    validate_options(options)
    options = with_checkpoint_defaults(options, model)
    out = Path(options.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(out)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        _build(options, model, staging, progress)
        move_into_place(staging, out, options.force)
    except (MemoryError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "can't allocate memory" not in str(exc):
            raise
        raise UserInputError(f"this machine has not enough memory to export a {options.height}x{options.width} "
                             f"bundle; choose a smaller --height/--width (frames of any size are resized to fit "
                             f"it)") from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise UserInputError(f"no space left on the device holding {out.parent} while writing the bundle; "
                                 f"free some space or choose another --out (nothing was left behind)") from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _steps(options: ExportOptions) -> list[str]:
    from kmnrt.export.graphs import GRAPH_NAMES

    steps = ["weights", *(f"export {g}" for g in GRAPH_NAMES)]
    if options.verify:
        steps.append("verify")
    if options.precision == "fp16":
        steps.append("fp16")
    steps.append("op audit")
    if options.engine == "tensorrt":
        steps += [f"tensorrt {g}" for g in GRAPH_NAMES]
    return steps + ["manifest"]


def _build(options: ExportOptions, model, folder: Path, progress: bool) -> BuildLog:
    from tqdm import tqdm

    from kmnrt.export.exporter import export_graph
    from kmnrt.export.graphs import graph_specs
    from kmnrt.model.checkpoint import save_checkpoint

    started = time.perf_counter()
    log = BuildLog()
    bar = tqdm(total=len(_steps(options)), desc="export", unit="step", file=sys.stderr,
               disable=not progress or None)
    with bar:
        def step(name: str) -> None:
            bar.set_postfix_str(name)

        step("weights")
        if model is None:
            model, checkpoint = load_export_model(options)
        else:
            if model.config.name != options.config:
                raise UserInputError(f"the model is a '{model.config.name}' KMN but the options say "
                                     f"'{options.config}'")
            checkpoint = {"path": None, "sha256": None, "source": "in-memory model"}
        model = model.eval()
        save_checkpoint(model, folder / WEIGHTS)
        bar.update()
        specs = graph_specs(model.config, options.height, options.width)
        # fp16 bundles keep the fp32 export aside: it is what verification compares with PyTorch.
        fp32_folder = folder / ".fp32" if options.precision == "fp16" else folder
        fp32_folder.mkdir(exist_ok=True)
        for spec in specs:
            step(f"export {spec.name}")
            module = spec.make_module(model, options.read_config)
            exported = export_graph(spec, module, fp32_folder / f"{spec.name}.onnx")
            log.graphs[spec.name] = {"onnx": f"{spec.name}.onnx", "nodes": exported.nodes,
                                     "export_seconds": round(exported.seconds, 3)}
            bar.update()
        if options.verify:
            from kmnrt.export.verify import verify_graphs

            step("verify")
            log.verification = verify_graphs(model, options, fp32_folder)
            bar.update()
            if not log.verification["passed"]:
                failed = [g for g, r in log.verification["graphs"].items() if not r["passed"]]
                raise VerificationError(f"ONNX Runtime disagrees with PyTorch on {', '.join(failed)} beyond the "
                                        f"tolerance: {_failure_summary(log.verification, failed)}. The bundle was "
                                        f"not written; rerun with --no-verify to keep it anyway")
        if options.precision == "fp16":
            from kmnrt.export.fp16 import convert_bundle_graphs, fp16_parity

            step("fp16")
            for name, nodes in convert_bundle_graphs(specs, fp32_folder, folder).items():
                log.graphs[name]["fp32_nodes"] = log.graphs[name]["nodes"]
                log.graphs[name]["nodes"] = nodes
            log.fp16_parity = fp16_parity(model, options, folder)
            shutil.rmtree(fp32_folder)
            bar.update()
        step("op audit")
        from kmnrt.export.audit import audit_bundle_graphs

        log.op_audit = audit_bundle_graphs(folder, [s.name for s in specs])
        bar.update()
        if options.engine == "tensorrt":
            from kmnrt.export.tensorrt import build_plans

            log.tensorrt = build_plans(folder, specs, options, on_graph_done=lambda name: (step(name), bar.update()))
        step("manifest")
        for spec in specs:
            log.graphs[spec.name]["bytes"] = (folder / f"{spec.name}.onnx").stat().st_size
        log.seconds = round(time.perf_counter() - started, 3)
        _write_report(folder, options, log)
        _write_manifest(folder, options, model, specs, checkpoint, log)
        bar.update()
    return log


def _failure_summary(verification: dict, failed: list[str]) -> str:
    parts = []
    for name in failed:
        worst = max(verification["graphs"][name]["cases"], key=lambda c: c["max_abs_error"])
        at = ", ".join(f"{k}={v}" for k, v in worst["sizes"].items())
        parts.append(f"{name} max |error| {worst['max_abs_error']:.2e} at {at} "
                     f"(tolerance {verification['graphs'][name]['atol']:.0e}"
                     + (f", {worst['argmax_mismatches']} argmax mismatches" if worst.get("argmax_mismatches") else "")
                     + ")")
    return "; ".join(parts)


def _write_report(folder: Path, options: ExportOptions, log: BuildLog) -> None:
    report = {"options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
              **asdict(log)}
    tmp = folder / f".{REPORT}.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, folder / REPORT)


def _write_manifest(folder: Path, options: ExportOptions, model, specs, checkpoint: dict, log: BuildLog) -> None:
    from kmnrt.export.manifest import FORMAT, GraphRecord, Manifest, record_files, write_manifest

    graphs = {}
    for spec in specs:
        precision = "fp32" if options.precision == "fp32" or spec.keep_fp32 else "fp16"
        plan = f"{spec.name}.plan" if (folder / f"{spec.name}.plan").is_file() else None
        graphs[spec.name] = GraphRecord(onnx=f"{spec.name}.onnx", plan=plan,
                                        inputs=[s.to_dict() for s in spec.inputs],
                                        outputs=[s.to_dict() for s in spec.outputs],
                                        dynamic=list(spec.dynamic_dims), precision=precision)
    names = [p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    manifest = Manifest(
        format=FORMAT,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        model=model.config.to_dict(),
        read={"kind": options.read_config.kind, "sigma": options.read_config.sigma},
        checkpoint=checkpoint,
        input_size=[options.height, options.width],
        max_objects=options.max_objects,
        max_memory=options.max_memory,
        mem_every=options.mem_every,
        precision=options.precision,
        engine=options.engine,
        graphs=graphs,
        files=record_files(folder, names),
        versions=package_versions(BUNDLE_PACKAGES),
        tensorrt=(log.tensorrt or {}).get("target"),
        extra={"verified": bool(log.verification and log.verification["passed"]), "max_batch": options.max_batch,
               "io_dtype": "float32", "opset": 18, "exporter": "torch.onnx.export(dynamo=True)"},
    )
    write_manifest(folder, manifest)
