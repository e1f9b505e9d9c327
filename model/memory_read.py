"""The memory read: STM's softmax attention and KMN's kernelized read, in the attention layout.

Shapes: the bank holds T frames with frames outermost, ``memory_key`` [T, N, Ck, h, w] and ``memory_value``
[T, N, Cv, h, w] (so a runtime can pass a prefix of a preallocated buffer); ``query_key`` is [1, Ck, h, w];
``memory_valid`` [T, N] is 1 where frame t holds memory for object n (0 for frames older than an object that
joined later). The read is [N, Cv, h, w]. Memory position p = (t, y, x), query position q = (y, x).

STM:  r(q) = sum_p softmax_p(c(p, q) / sqrt(d)) v(p), with c(p, q) = k_M(p) . k_Q(q).
KMN:  q^(p) = argmax_q c(p, q)  (Memory-to-Query), then the Query-to-Memory softmax gets a 2-D Gaussian
      g(p, q) = exp(-|q - q^(p)|^2 / (2 sigma^2)) multiplied in. We add its logarithm to the logits instead of
      multiplying exp(c) by g: identical in exact arithmetic, but exp(c) * g underflows to 0/0 in fp16.

The softmax always runs over the last axis (attention layout): it is more accurate than a softmax over a middle
axis and is the pattern TensorRT fuses. Invalid memory gets a logit bias of -1e4. KMN's Gaussian sends many logits
so far below their row's maximum that exp() lands in float32's subnormals, which make x86 CPUs run the softmax and
the read's matmul up to 100 times slower: in PyTorch every KMN logit is first raised to at least its row's maximum
- 60 (:func:`attention_weights`; invalid memory then weighs e^-60 of the best match instead of exactly 0), and
ONNX Runtime's CPU sessions flush subnormals to zero instead (the exported graph keeps the plain softmax).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from kmnrt.model.config import ReadConfig

INVALID_BIAS = 1.0e4  # exp(-1e4) == 0 in fp32/fp16; finite so a fully masked row cannot produce NaN arithmetic
# How far below its row's maximum a KMN logit may fall. e^-60 = 8.8e-27: raised entries weigh that much of the
# best match, which over at most 1e5 memory positions is far under float32's resolution, so the read does not change
# (tests/model/test_memory_read.py); and the smallest weight, e^-60 / (1e5 positions), is still a normal float32.
LOGIT_RANGE = 60.0


def _object_major(memory: Tensor) -> Tensor:
    """[T, N, C, h, w] -> [N, C, T*h*w]: each object's memory positions in one row block."""
    t, n, c, h, w = memory.shape
    return memory.permute(1, 2, 0, 3, 4).reshape(n, c, t * h * w)


def _valid_bias(memory_valid: Tensor | None, positions_per_frame: int, n: int) -> Tensor | None:
    """[T, N] validity -> [N, 1, T*h*w] additive logit bias (0 or -INVALID_BIAS)."""
    if memory_valid is None:
        return None
    bias = (memory_valid.transpose(0, 1) - 1.0) * INVALID_BIAS  # [N, T]
    return bias.unsqueeze(-1).expand(n, -1, positions_per_frame).reshape(n, 1, -1)


def attention_weights(logits: Tensor) -> Tensor:
    """Softmax over the last axis of the logits raised to at least their row's maximum - :data:`LOGIT_RANGE`. The
    logits are raised in place when no gradient is wanted (one [N, Q, P] tensor fewer at the read's peak): the
    caller must not reuse them.

    Subnormal operands cost x86 CPUs about a hundred cycles each: with a default model's sigma 2 a few percent
    of the weights were subnormal and its read ran 4-6x slower (docs/benchmarks.md). Raising the logits keeps every
    exp() result normal, so the softmax gets faster too. ``torch.set_flush_denormal`` would not do: it does not
    reach PyTorch's worker threads.

    An exported graph keeps the plain softmax. ONNX Runtime cannot raise the logits in place, so the floor cost it
    a second [N, Q, P] tensor (the read's peak at paper size went from about 1.5 to 2.2 times the affinity) and
    time; its CPU sessions flush subnormals to zero instead (``session.set_denormal_as_zero``, set by the
    runtime), which is faster still, and GPUs compute subnormals at full speed.
    """
    if torch.onnx.is_in_onnx_export():
        return torch.softmax(logits, dim=-1)
    floor = logits.amax(dim=-1, keepdim=True) - LOGIT_RANGE
    # autograd needs the logits as they were (amax's backward), so in place only where no gradient is wanted
    raised = logits.clamp(min=floor) if logits.requires_grad else logits.clamp_(min=floor)
    return torch.softmax(raised, dim=-1)


def grid_coordinates(h: int, w: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """Row and column of every feature cell, flattened row-major: two tensors [h*w] of ``like``'s dtype/device."""
    ys = torch.arange(h, dtype=like.dtype, device=like.device).repeat_interleave(w)
    xs = torch.arange(w, dtype=like.dtype, device=like.device).repeat(h)
    return ys, xs


def gather_coordinates(table: Tensor, match: Tensor) -> Tensor:
    """table [Q] indexed by match [N, P] -> [N, P]. ``index_select`` exports as a plain ONNX Gather (no GatherND,
    no integer // or % on the index, which the dynamo exporter and old TensorRT versions reject)."""
    return table.index_select(0, match.reshape(-1)).view(match.shape)


def memory_to_query_match(mk: Tensor, qk: Tensor) -> Tensor:
    """KMN's Memory-to-Query step: for every memory position, the index of its best-matching query position.

    mk [N, Ck, P] (P = T*h*w), qk [Ck, Q] -> indices [N, P] into Q (first index on ties, like torch.argmax).
    Scaling by 1/sqrt(d) does not change the argmax, so it is left out.
    """
    affinity = torch.matmul(mk.transpose(1, 2), qk)  # [N, P, Q]
    return affinity.argmax(dim=2)


def stm_read(memory_key: Tensor, memory_value: Tensor, query_key: Tensor,
             memory_valid: Tensor | None = None) -> Tensor:
    t, n, ck, h, w = memory_key.shape
    mk, mv = _object_major(memory_key), _object_major(memory_value)
    qk = query_key.reshape(ck, h * w)
    logits = torch.matmul(qk.transpose(0, 1), mk) / math.sqrt(ck)  # [N, Q, P]
    bias = _valid_bias(memory_valid, h * w, n)
    if bias is not None:
        logits = logits + bias
    # The plain softmax: this is training's read too, and the shipped weights were trained with it to the bit.
    # The subnormal weights measured (attention_weights) came from the KMN read's Gaussian: the shipped weights'
    # STM read over the 10 validation videos gave none among its 3.6e8 weights.
    attention = torch.softmax(logits, dim=-1)
    read = torch.matmul(mv, attention.transpose(1, 2))  # [N, Cv, Q]
    return read.reshape(n, -1, h, w)


def kmn_read(memory_key: Tensor, memory_value: Tensor, query_key: Tensor, sigma: float,
             memory_valid: Tensor | None = None) -> Tensor:
    """The kernelized read with the Gaussian as an explicit additive log-bias [N, Q, P] (the reference form)."""
    t, n, ck, h, w = memory_key.shape
    mk, mv = _object_major(memory_key), _object_major(memory_value)
    qk = query_key.reshape(ck, h * w)
    match = memory_to_query_match(mk, qk)  # [N, P]
    ys, xs = grid_coordinates(h, w, memory_key)
    dy = ys.view(1, -1, 1) - gather_coordinates(ys, match).unsqueeze(1)  # [N, Q, P]
    dx = xs.view(1, -1, 1) - gather_coordinates(xs, match).unsqueeze(1)
    log_gaussian = -(dy * dy + dx * dx) / (2.0 * sigma * sigma)
    logits = torch.matmul(qk.transpose(0, 1), mk) / math.sqrt(ck) + log_gaussian
    bias = _valid_bias(memory_valid, h * w, n)
    if bias is not None:
        logits = logits + bias
    attention = attention_weights(logits)
    read = torch.matmul(mv, attention.transpose(1, 2))
    return read.reshape(n, -1, h, w)


def kmn_read_folded(memory_key: Tensor, memory_value: Tensor, query_key: Tensor, sigma: float,
                    memory_valid: Tensor | None = None) -> Tensor:
    """The same kernelized read with the Gaussian folded into the key matmul (exact; the export form).

    -|q - q^|^2 / 2s^2 = (y_q y^ + x_q x^)/s^2 - (y^^2 + x^^2)/2s^2 - (y_q^2 + x_q^2)/2s^2. The last term is
    constant over memory positions and cancels in the softmax, so the logits are one matmul of augmented
    vectors: [k_q/sqrt(d), y_q, x_q, 1] . [k_p, y^_p/s^2, x^_p/s^2, -(y^_p^2 + x^_p^2)/2s^2 + validity bias].
    No [N, Q, P] elementwise tensor is built besides the logits themselves.
    """
    t, n, ck, h, w = memory_key.shape
    mk, mv = _object_major(memory_key), _object_major(memory_value)
    qk = query_key.reshape(ck, h * w)
    match = memory_to_query_match(mk, qk)
    ys, xs = grid_coordinates(h, w, memory_key)
    y_hat = gather_coordinates(ys, match).unsqueeze(1)  # [N, 1, P]
    x_hat = gather_coordinates(xs, match).unsqueeze(1)
    inv_var = 1.0 / (sigma * sigma)
    constant = -(y_hat * y_hat + x_hat * x_hat) * (0.5 * inv_var)
    bias = _valid_bias(memory_valid, h * w, n)
    if bias is not None:
        constant = constant + bias
    key_aug = torch.cat([mk, y_hat * inv_var, x_hat * inv_var, constant], dim=1)  # [N, Ck+3, P]
    query_aug = torch.cat([qk / math.sqrt(ck), ys.view(1, -1), xs.view(1, -1), torch.ones_like(ys).view(1, -1)])
    logits = torch.matmul(query_aug.transpose(0, 1), key_aug)  # [N, Q, P]
    attention = attention_weights(logits)
    read = torch.matmul(mv, attention.transpose(1, 2))
    return read.reshape(n, -1, h, w)


class MemoryRead(nn.Module):
    """The read as a module (no parameters). In training mode it is always the plain STM read: KMN's argmax is
    not differentiable and the kernel is used at inference only."""

    def __init__(self, config: ReadConfig = ReadConfig(), folded: bool = False):
        super().__init__()
        self.config = config
        self.folded = folded

    def forward(self, memory_key: Tensor, memory_value: Tensor, query_key: Tensor,
                memory_valid: Tensor | None = None) -> Tensor:
        if self.training or self.config.kind == "stm":
            return stm_read(memory_key, memory_value, query_key, memory_valid)
        read = kmn_read_folded if self.folded else kmn_read
        return read(memory_key, memory_value, query_key, self.config.sigma, memory_valid)

    def extra_repr(self) -> str:
        return f"kind={self.config.kind}, sigma={self.config.sigma}, folded={self.folded}"
