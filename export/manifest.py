"""The bundle manifest (``manifest.json``): what a bundle holds and how to check it is intact.

A bundle is a folder ``engines/<name>/`` with the four ONNX graphs, optionally their TensorRT plans and a timing
cache, the weights in the project's checkpoint format (for the PyTorch backend and re-verification), the
verification report and this manifest. Loading verifies every file's size and sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kmnrt.errors import BundleError
from kmnrt.model.config import ModelConfig, ReadConfig

FORMAT = "kmnrt-bundle-v1"
PRECISIONS = ("fp32", "fp16")
ENGINES = ("onnx", "tensorrt")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class FileRecord:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class GraphRecord:
    onnx: str                      # file name inside the bundle
    plan: str | None               # TensorRT plan file name, if built
    inputs: list[dict]             # TensorSpec.to_dict() for each input
    outputs: list[dict]
    dynamic: list[str]
    precision: str                 # "fp32" or "fp16" (the read is always fp32)


@dataclass(frozen=True)
class Manifest:
    format: str
    created: str                   # ISO 8601 UTC
    model: dict                    # ModelConfig.to_dict()
    read: dict                     # {"kind": "kmn"|"stm", "sigma": float}
    checkpoint: dict               # {"path": str | None, "sha256": str | None}; None = seeded random weights
    input_size: list[int]          # [H, W]
    max_objects: int
    max_memory: int
    mem_every: int
    precision: str                 # "fp32" | "fp16"
    engine: str                    # "onnx" | "tensorrt"
    graphs: dict[str, GraphRecord]
    files: dict[str, FileRecord]
    versions: dict[str, str | None]
    tensorrt: dict | None = None   # {"version", "gpu", "compute_capability", "driver", "timing_cache"}
    weights: str | None = "weights.safetensors"
    report: str | None = "report.json"
    extra: dict = field(default_factory=dict)

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.model)

    @property
    def read_config(self) -> ReadConfig:
        return ReadConfig(**self.read)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        data = dict(data)
        data["graphs"] = {k: GraphRecord(**v) for k, v in data["graphs"].items()}
        data["files"] = {k: FileRecord(**v) for k, v in data["files"].items()}
        return cls(**data)


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def record_files(folder: Path, names: list[str]) -> dict[str, FileRecord]:
    return {name: FileRecord(sha256_of(folder / name), (folder / name).stat().st_size) for name in sorted(names)}


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    path = folder / MANIFEST
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(manifest.to_json())
    os.replace(tmp, path)
    return path


def load_manifest(folder: str | os.PathLike, verify: bool = True) -> Manifest:
    """Read ``folder/manifest.json``; with ``verify``, check every listed file's size and sha256."""
    folder = Path(folder)
    path = folder / MANIFEST
    if folder.is_file():
        raise BundleError(f"bundle {folder} is a file; a bundle is the folder `kmnrt export --out` writes")
    if not folder.is_dir():
        raise BundleError(f"bundle {folder} does not exist; build one with `kmnrt export ... --out {folder}`")
    if not path.is_file():
        if any(folder.glob("*.onnx")):  # graphs but no manifest: what an export cut off before its end leaves
            raise BundleError(f"{folder} is not a bundle: {MANIFEST} is missing (an interrupted export leaves no "
                              f"manifest); export it again into a new folder, or delete this one first")
        raise BundleError(f"{folder} is not a bundle (it has no {MANIFEST}); give the folder `kmnrt export --out` "
                          f"wrote, e.g. engines/NAME")
    try:
        manifest = Manifest.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # JSON and UTF-8 errors are ValueErrors
        raise BundleError(f"{path} is not a valid kmnrt manifest ({type(exc).__name__}: {exc}); rebuild the "
                          f"bundle with `kmnrt export`") from None
    if manifest.format != FORMAT:
        raise BundleError(f"{path} has format {manifest.format!r}; this kmnrt reads {FORMAT!r}")
    problems = manifest_problems(manifest)
    if problems:
        raise BundleError(f"{path} does not describe a bundle this kmnrt can run: " + "; ".join(problems)
                          + ". Rebuild it with `kmnrt export`.")
    if verify:
        verify_files(folder, manifest)
    return manifest


def manifest_problems(manifest: Manifest) -> list[str]:
    """What the runtime relies on, checked before anything is loaded or allocated, so that a hand-edited or
    damaged manifest is one message naming its fields: values in range, every file the bundle uses named plainly
    and listed with a checksum, and the graphs' recorded inputs and outputs the ones its model and size imply."""
    from kmnrt.errors import KmnrtError
    from kmnrt.export.graphs import GRAPH_NAMES, graph_specs

    problems = []
    size = manifest.input_size
    size_ok = isinstance(size, list) and len(size) == 2 and all(type(v) is int and v >= 16 and not v % 16
                                                                 for v in size)
    if not size_ok:
        problems.append(f"input_size {size!r} is not [height, width] in multiples of 16")
    for name, least in (("max_objects", 1), ("max_memory", 2), ("mem_every", 1)):
        value = getattr(manifest, name)
        if type(value) is not int or value < least:
            problems.append(f"{name} {value!r} is not a whole number of at least {least}")
    if manifest.precision not in PRECISIONS:
        problems.append(f"precision {manifest.precision!r} is neither {' nor '.join(PRECISIONS)}")
    if manifest.engine not in ENGINES:
        problems.append(f"engine {manifest.engine!r} is neither {' nor '.join(ENGINES)}")
    try:
        config = manifest.model_config
        manifest.read_config
    except (KmnrtError, TypeError, ValueError) as exc:
        problems.append(str(exc))
        config = None
    missing = [name for name in GRAPH_NAMES if name not in manifest.graphs]
    if missing:
        problems.append(f"graphs {missing} are missing")
    used = [record.onnx for record in manifest.graphs.values()]
    used += [name for name in [manifest.weights, manifest.report, *(r.plan for r in manifest.graphs.values())]
             if name is not None]
    for name in used:
        if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
            problems.append(f"file {name!r} is not a plain file name inside the bundle")
        elif name not in manifest.files:
            problems.append(f"{name} is not listed in files, so it cannot be checked")
    if config is not None and size_ok and not missing:
        for spec in graph_specs(config, *size):
            record = manifest.graphs[spec.name]
            shapes = [(t["name"], list(t["shape"])) for t in (*record.inputs, *record.outputs)]
            if shapes != [(t.name, list(t.shape)) for t in (*spec.inputs, *spec.outputs)]:
                problems.append(f"the {spec.name} graph's tensors do not fit a {config.name} model at "
                                f"{size[0]}x{size[1]} (input_size or model edited?)")
    return problems


def verify_files(folder: Path, manifest: Manifest) -> None:
    problems = []
    for name, record in manifest.files.items():
        file = folder / name
        if not file.is_file():
            problems.append(f"{name} is missing")
        elif file.stat().st_size != record.bytes:
            problems.append(f"{name} has {file.stat().st_size} bytes, the manifest says {record.bytes}")
        elif sha256_of(file) != record.sha256:
            problems.append(f"{name} does not match its sha256 in the manifest")
    if problems:
        raise BundleError(f"bundle {folder} is damaged: " + "; ".join(problems) + ". Rebuild it with `kmnrt export`.")
