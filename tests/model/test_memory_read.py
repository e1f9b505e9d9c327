"""The memory reads against direct, loop-based implementations of the papers' equations."""

from __future__ import annotations

import math

import pytest
import torch

from kmnrt.model import memory_read
from kmnrt.model.memory_read import (
    LOGIT_RANGE,
    MemoryRead,
    attention_weights,
    kmn_read,
    kmn_read_folded,
    memory_to_query_match,
    stm_read,
)
from kmnrt.model.config import ReadConfig


def random_memory(t=2, n=2, ck=6, cv=5, h=3, w=4, spread=3.0, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mk = torch.randn(t, n, ck, h, w, generator=gen, dtype=dtype) * spread
    mv = torch.randn(t, n, cv, h, w, generator=gen, dtype=dtype)
    qk = torch.randn(1, ck, h, w, generator=gen, dtype=dtype)
    return mk, mv, qk


def loop_read(mk, mv, qk, sigma=None, valid=None):
    """The equations written position by position: for every object n and query cell q, a weighted sum over every
    memory cell p = (t, y, x). With sigma, KMN: weights exp(c/sqrt(d)) * g(p, q) normalised over p, where
    g = exp(-|q - argmax_q' c(p, q')|^2 / 2 sigma^2); without, STM: softmax_p(c/sqrt(d))."""
    t_count, n_count, ck, h, w = mk.shape
    out = torch.zeros(n_count, mv.shape[2], h, w, dtype=mk.dtype)
    cells = [(y, x) for y in range(h) for x in range(w)]
    for n in range(n_count):
        memory = [(t, y, x) for t in range(t_count) for (y, x) in cells
                  if valid is None or valid[t, n] > 0]
        best = {}
        for p in memory:
            scores = [float(mk[p[0], n, :, p[1], p[2]] @ qk[0, :, y, x]) for (y, x) in cells]
            best[p] = cells[max(range(len(cells)), key=lambda i: (scores[i], -i))]
        for (qy, qx) in cells:
            weights = []
            for p in memory:
                c = float(mk[p[0], n, :, p[1], p[2]] @ qk[0, :, qy, qx]) / math.sqrt(ck)
                g = 1.0
                if sigma is not None:
                    by, bx = best[p]
                    g = math.exp(-((qy - by) ** 2 + (qx - bx) ** 2) / (2 * sigma * sigma))
                weights.append(math.exp(c) * g)
            total = sum(weights)
            for weight, p in zip(weights, memory):
                out[n, :, qy, qx] += weight / total * mv[p[0], n, :, p[1], p[2]]
    return out


@pytest.mark.parametrize("sigma", [0.8, 2.0, 7.0])
def test_kmn_read_matches_the_papers_equation(sigma):
    mk, mv, qk = random_memory()
    expected = loop_read(mk, mv, qk, sigma=sigma)
    assert torch.allclose(kmn_read(mk, mv, qk, sigma), expected, atol=1e-10)
    assert torch.allclose(kmn_read_folded(mk, mv, qk, sigma), expected, atol=1e-10)


def test_stm_read_matches_the_papers_equation():
    mk, mv, qk = random_memory(t=3, n=1)
    assert torch.allclose(stm_read(mk, mv, qk), loop_read(mk, mv, qk), atol=1e-10)


def test_memory_valid_excludes_frames_per_object():
    mk, mv, qk = random_memory(t=3, n=2)
    valid = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=mk.dtype)
    expected = loop_read(mk, mv, qk, sigma=2.0, valid=valid)
    for read in (kmn_read, kmn_read_folded):
        assert torch.allclose(read(mk, mv, qk, 2.0, valid), expected, atol=1e-10)
    assert torch.allclose(stm_read(mk, mv, qk, valid), loop_read(mk, mv, qk, valid=valid), atol=1e-10)
    # Object 0 with frame 2 masked out equals a bank that never had frame 2 for it.
    alone = kmn_read(mk[:2, :1], mv[:2, :1], qk, 2.0)
    assert torch.allclose(kmn_read(mk, mv, qk, 2.0, valid)[:1], alone, atol=1e-12)


def test_log_bias_form_equals_product_form_in_float64():
    """softmax(c/sqrt(d) + log g) == exp(c/sqrt(d)) g / sum(...) (the multiply form KMN's equation is written in)."""
    mk, mv, qk = random_memory(t=2, n=2, ck=8, h=5, w=6, spread=4.0)
    t, n, ck, h, w = mk.shape
    sigma = 3.0
    keys = mk.permute(1, 2, 0, 3, 4).reshape(n, ck, -1)
    values = mv.permute(1, 2, 0, 3, 4).reshape(n, mv.shape[2], -1)
    query = qk.reshape(ck, -1)
    match = memory_to_query_match(keys, query)
    ys = torch.arange(h, dtype=mk.dtype).repeat_interleave(w)
    xs = torch.arange(w, dtype=mk.dtype).repeat(h)
    squared_distance = ((ys.view(1, -1, 1) - ys[match].unsqueeze(1)) ** 2
                        + (xs.view(1, -1, 1) - xs[match].unsqueeze(1)) ** 2)
    g = torch.exp(-squared_distance / (2 * sigma**2))
    scores = torch.exp(query.T @ keys / math.sqrt(ck)) * g
    product = (values @ (scores / scores.sum(-1, keepdim=True)).transpose(1, 2)).reshape(n, -1, h, w)
    assert torch.allclose(kmn_read(mk, mv, qk, sigma), product, atol=1e-12)
    assert torch.allclose(kmn_read_folded(mk, mv, qk, sigma), product, atol=1e-12)


def test_log_bias_form_has_no_nan_in_float16_where_the_product_form_underflows():
    """On a 30x54 grid with sigma 7 the Gaussian reaches 6.7e-17: fp16 underflows to 0 and exp*g gives 0/0."""
    mk, mv, qk = random_memory(t=1, n=1, ck=16, cv=4, h=30, w=54, spread=0.5, dtype=torch.float16)
    smallest_gaussian = torch.exp(torch.tensor(-(29.0**2 + 53.0**2) / (2 * 49.0), dtype=torch.float16))
    assert smallest_gaussian == 0  # g itself underflows in fp16, so exp(c) * g / sum can be 0 / 0
    out = kmn_read(mk, mv, qk, 7.0)
    assert torch.isfinite(out).all()
    assert (out.float() - kmn_read(mk.double(), mv.double(), qk.double(), 7.0)).abs().max() < 0.05


def test_folded_and_bias_forms_agree_in_float32_with_identical_argmax():
    mk, mv, qk = random_memory(t=4, n=3, ck=32, cv=16, h=12, w=20, spread=1.0, dtype=torch.float32, seed=3)
    keys = mk.permute(1, 2, 0, 3, 4).reshape(3, 32, -1)
    reference = kmn_read(mk.double(), mv.double(), qk.double(), 7.0)
    assert (kmn_read(mk, mv, qk, 7.0) - reference).abs().max() < 1e-5
    assert (kmn_read_folded(mk, mv, qk, 7.0) - reference).abs().max() < 1e-5
    assert torch.equal(memory_to_query_match(keys, qk.reshape(32, -1)),
                       memory_to_query_match(keys.double(), qk.double().reshape(32, -1)))


def subnormal_count(x: torch.Tensor) -> int:
    return int(((x != 0) & (x.abs() < torch.finfo(x.dtype).tiny)).sum())


def test_attention_weights_are_the_softmax_without_subnormals():
    logits = torch.linspace(0.0, -120.0, 241).repeat(3, 1) + torch.tensor([[0.0], [30.0], [-500.0]])
    plain = torch.softmax(logits, dim=-1)
    assert subnormal_count(plain) > 0  # exp(-87.3) is float32's smallest normal
    weights = attention_weights(logits.clone())  # it raises its argument in place
    assert subnormal_count(weights) == 0
    near = logits >= logits.amax(dim=-1, keepdim=True) - LOGIT_RANGE
    assert torch.allclose(weights[near], plain[near], rtol=1e-6, atol=0)
    assert torch.allclose(weights[~near], weights[:, :1].expand_as(weights)[~near] * math.exp(-LOGIT_RANGE))


@pytest.mark.parametrize("read", [kmn_read, kmn_read_folded])
def test_kmn_read_avoids_subnormal_weights_without_changing_the_read(read, monkeypatch):
    """The default model's grid (16x29) and a tight kernel: the Gaussian sends logits so far below their row's
    maximum that the plain softmax leaves subnormal weights (slow on x86 CPUs). Avoiding them changes the read
    by less than float32 rounding."""
    mk, mv, qk = random_memory(t=3, n=2, ck=32, cv=8, h=16, w=29, spread=1.0, dtype=torch.float32, seed=5)
    plain_weights = []
    with monkeypatch.context() as patch:
        patch.setattr(memory_read, "attention_weights",
                      lambda logits: plain_weights.append(torch.softmax(logits, dim=-1)) or plain_weights[-1])
        plain = read(mk, mv, qk, 1.0)
    assert subnormal_count(plain_weights[0]) > 1000
    out = read(mk, mv, qk, 1.0)
    assert (out - plain).abs().max() < 1e-6
    # the folded form's own float32 error grows as sigma shrinks (coordinates / sigma^2 in the matmul): 3e-5 here
    assert (out - kmn_read(mk.double(), mv.double(), qk.double(), 1.0)).abs().max() < 1e-4


def test_argmax_ties_resolve_to_the_first_query_position():
    keys = torch.ones(1, 2, 3)
    query = torch.tensor([[1.0, 2.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert memory_to_query_match(keys, query).tolist() == [[1, 1, 1]]


def test_kernel_is_used_at_inference_and_off_in_training():
    mk, mv, qk = random_memory(dtype=torch.float32)
    read = MemoryRead(ReadConfig("kmn", 1.0))
    read.eval()
    assert torch.allclose(read(mk, mv, qk), kmn_read(mk, mv, qk, 1.0))
    assert not torch.allclose(read(mk, mv, qk), stm_read(mk, mv, qk), atol=1e-3)
    read.train()
    assert torch.allclose(read(mk, mv, qk), stm_read(mk, mv, qk))
    assert torch.allclose(MemoryRead(ReadConfig("stm")).eval()(mk, mv, qk), stm_read(mk, mv, qk))
