"""The declarative table of deployment graphs, shared by the exporter and the runtime.

Each graph is one stage of a KMN step at a fixed input size H x W (multiples of 16; h = H/16, w = W/16) with two
dynamic sizes: N (objects, ``K`` = N + 1 with the background) and T (memory frames). Tensor layouts are chosen so
the runtime never copies: the memory encoder writes [N, C, h, w] straight into one frame slot of a bank laid out
[T_max, N, C, h, w], the read takes a prefix of T frames of that bank, and the decoder's probabilities [K, H, W]
feed the memory encoder as they are.

Shapes are written with symbols: ``H, W, h, w`` and the config's channel counts are fixed per bundle;
``N, K, T`` stay symbolic in the ONNX graphs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from kmnrt.model.config import ModelConfig, ReadConfig
from kmnrt.model.kmn import KMN, QueryFeatures
from kmnrt.model.memory_read import MemoryRead

DYNAMIC_DIMS = ("B", "N", "K", "T")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str                       # numpy dtype name: "float32"
    shape: tuple[int | str, ...]     # ints are fixed; "N", "K", "T" are dynamic
    doc: str

    def concrete(self, sizes: dict[str, int]) -> tuple[int, ...]:
        """The shape with the dynamic dims filled in (``K`` defaults to N + 1, the batch ``B`` to 1)."""
        sizes = {"K": sizes.get("N", 0) + 1, "B": 1, **sizes}
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.shape)

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "doc": self.doc}


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    atol: float                       # parity tolerance against the PyTorch module (absolute)
    keep_fp32: bool                   # stays fp32 in fp16 bundles (the read: fp16 softmax is 3-6 % off)
    make_module: Callable[[KMN, ReadConfig], nn.Module]
    doc: str

    @property
    def dynamic_dims(self) -> tuple[str, ...]:
        dims = {d for spec in self.inputs + self.outputs for d in spec.shape if isinstance(d, str)}
        return tuple(d for d in DYNAMIC_DIMS if d in dims)

    def to_dict(self) -> dict:
        return {"doc": self.doc, "inputs": [s.to_dict() for s in self.inputs],
                "outputs": [s.to_dict() for s in self.outputs], "dynamic": list(self.dynamic_dims)}


# --- the modules each graph exports: thin views of KMN's stage methods ------------------------------------------


class QueryEncoderGraph(nn.Module):
    def __init__(self, model: KMN, read: ReadConfig):
        super().__init__()
        self.model = model

    def forward(self, frame: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        q = self.model.encode_query(frame)
        return q.key, q.value, q.r3, q.r2


class MemoryEncoderGraph(nn.Module):
    def __init__(self, model: KMN, read: ReadConfig):
        super().__init__()
        self.model = model

    def forward(self, frame: Tensor, probs: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.encode_memory(frame, probs)


class MemoryReadGraph(nn.Module):
    """The read in its export form: for KMN the Gaussian is folded into the key matmul (exact, no [N, Q, P]
    elementwise tensors, no integer div/mod)."""

    def __init__(self, model: KMN, read: ReadConfig):
        super().__init__()
        self.read = MemoryRead(read, folded=True).eval()

    def forward(self, memory_key: Tensor, memory_value: Tensor, memory_valid: Tensor, query_key: Tensor) -> Tensor:
        return self.read(memory_key, memory_value, query_key, memory_valid)


class DecoderGraph(nn.Module):
    def __init__(self, model: KMN, read: ReadConfig):
        super().__init__()
        self.model = model

    def forward(self, read: Tensor, query_value: Tensor, r3: Tensor, r2: Tensor) -> Tensor:
        return self.model.decode(read, QueryFeatures(key=query_value, value=query_value, r3=r3, r2=r2))


def graph_specs(config: ModelConfig, height: int, width: int) -> tuple[GraphSpec, ...]:
    """The four graphs of a bundle for ``config`` at ``height`` x ``width`` (multiples of 16), in call order."""
    h, w = height // 16, width // 16
    ck, cv, c3, c2 = config.key_dim, config.value_dim, config.r3_channels, config.r2_channels
    frame = TensorSpec("frame", "float32", (1, 3, height, width),
                       "RGB in [0, 1], zero-padded to the bundle size; normalised inside the graph")
    query_key = TensorSpec("query_key", "float32", (1, ck, h, w), "the frame's key (matching embedding)")
    query_value = TensorSpec("query_value", "float32", (1, cv, h, w), "the frame's value embedding")
    r3 = TensorSpec("r3", "float32", (1, c3, 2 * h, 2 * w), "decoder skip feature at stride 8")
    r2 = TensorSpec("r2", "float32", (1, c2, 4 * h, 4 * w), "decoder skip feature at stride 4")
    # The query encoder takes a batch B of frames (one per session: the service batches sessions through it);
    # every other graph works on one frame, so they take a row of its outputs, [1, ...], as they are.
    batched = {s.name: TensorSpec(s.name, s.dtype, ("B", *s.shape[1:]), s.doc.replace("the frame", "each frame"))
               for s in (frame, query_key, query_value, r3, r2)}
    probs = TensorSpec("probs", "float32", ("K", height, width),
                       "soft probabilities, K = N + 1 channels, background first, summing to 1 per pixel")
    read = TensorSpec("read", "float32", ("N", cv, h, w), "memory read per object")
    return (
        GraphSpec("query_encoder", (batched["frame"],),
                  tuple(batched[n] for n in ("query_key", "query_value", "r3", "r2")), atol=1e-5, keep_fp32=False,
                  make_module=QueryEncoderGraph, doc="B frames -> query key, query value and decoder skips per frame"),
        GraphSpec("memory_read",
                  (TensorSpec("memory_key", "float32", ("T", "N", ck, h, w),
                              "keys of the first T frames of the bank (frames outermost: a prefix of a "
                              "[T_max, N, ...] buffer)"),
                   TensorSpec("memory_value", "float32", ("T", "N", cv, h, w), "values of the same T frames"),
                   TensorSpec("memory_valid", "float32", ("T", "N"),
                              "1 where frame t holds memory of object n, 0 where it must be ignored "
                              "(frames older than an object that joined later)"),
                   query_key),
                  (read,), atol=1e-3, keep_fp32=True, make_module=MemoryReadGraph,
                  doc="memory bank + query key -> read value per object (KMN kernelized or STM)"),
        GraphSpec("decoder", (read, query_value, r3, r2), (probs,), atol=1e-5, keep_fp32=False,
                  make_module=DecoderGraph,
                  doc="read + query value + skips -> soft-aggregated probabilities (background first)"),
        GraphSpec("memory_encoder",
                  (frame, TensorSpec("probs", "float32", ("K", height, width),
                                     "the frame's probabilities, background first (the decoder's output)")),
                  (TensorSpec("memory_key", "float32", ("N", ck, h, w), "key per object for one bank slot"),
                   TensorSpec("memory_value", "float32", ("N", cv, h, w), "value per object for one bank slot")),
                  atol=1e-5, keep_fp32=False, make_module=MemoryEncoderGraph,
                  doc="frame + probabilities -> memory key and value per object (own/other masks derived inside)"),
    )


GRAPH_NAMES = ("query_encoder", "memory_read", "decoder", "memory_encoder")
