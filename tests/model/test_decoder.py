"""Soft aggregation: STM's probability-space formula, computed stably in logit space."""

import torch

from kmnrt.model.decoder import PROBABILITY_CLAMP, soft_aggregate


def stm_soft_aggregate(object_logits: torch.Tensor) -> torch.Tensor:
    """STM's own formula, evaluated in whatever dtype it is given."""
    foreground = torch.sigmoid(object_logits)
    background = torch.prod(1.0 - foreground, dim=0, keepdim=True)
    probs = torch.cat([background, foreground]).clamp(PROBABILITY_CLAMP, 1.0 - PROBABILITY_CLAMP)
    return torch.softmax(torch.log(probs / (1.0 - probs)), dim=0)


def test_it_is_stms_formula():
    logits = torch.randn(3, 40, 40, dtype=torch.float64) * 6
    torch.testing.assert_close(soft_aggregate(logits), stm_soft_aggregate(logits), atol=1e-9, rtol=0)


def test_fp32_stays_close_to_fp64_where_objects_saturate():
    """Several confident objects near the clamp: STM's fp32 form rounds their probabilities to 1.0 and splits the
    pixel evenly; the logit form keeps their ranking."""
    generator = torch.Generator().manual_seed(0)
    logits = 12 + 8 * torch.rand(3, 64, 64, generator=generator, dtype=torch.float64)
    exact = soft_aggregate(logits)
    ours = soft_aggregate(logits.float()).double()
    theirs = stm_soft_aggregate(logits.float()).double()
    assert (ours - exact).abs().max() < 1e-5
    assert (theirs - exact).abs().max() > 1e-2        # the instability this form removes


def test_extreme_logits_give_finite_probabilities_that_sum_to_one():
    logits = torch.tensor([[-1e4, -30.0, 0.0, 30.0, 1e4], [-1e4, -1e4, -1e4, 30.0, 1e4]])[..., None]
    probs = soft_aggregate(logits)
    assert torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(0), torch.ones(5, 1))
    assert probs[0, 0, 0] > 0.99 and probs[0, 4, 0] < 1e-6     # all objects absent / present


def test_gradients_are_finite_everywhere():
    """Training backpropagates through the aggregation: saturated pixels (all objects absent or present) must give
    finite, not NaN, gradients."""
    logits = torch.tensor([[-200.0, -30.0, 0.0, 30.0, 200.0], [-200.0, -200.0, 5.0, 30.0, 200.0]])[..., None]
    logits.requires_grad_(True)
    torch.log(soft_aggregate(logits)).sum().backward()
    assert torch.isfinite(logits.grad).all()
