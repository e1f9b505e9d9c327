"""Framing: where a frame sits in the network input (padding, resizing to a bundle, tracking at a short side)."""

from __future__ import annotations

import numpy as np
import torch

from kmnrt.framing import Framing, frame_to_tensor, one_hot_probs


def test_scaled_without_a_short_side_is_the_padded_reference_protocol():
    assert Framing.scaled((37, 50), None) == Framing.padded((37, 50))
    assert Framing.scaled((37, 50), 37) == Framing.padded((37, 50))
    assert Framing.padded((37, 50)).input_size == (48, 64) and not Framing.padded((37, 50)).needs_resize


def test_scaled_resizes_the_short_side_keeping_the_aspect_ratio():
    doubled = Framing.scaled((144, 256), 288)
    assert doubled.resized_size == (288, 512) and doubled.input_size == (288, 512) and doubled.padding == (0, 0, 0, 0)
    portrait = Framing.scaled((50, 37), 48)
    assert portrait.resized_size == (65, 48) and portrait.input_size == (80, 48)
    assert portrait.padding == (7, 8, 0, 0)


def test_scaled_planes_go_in_and_come_back_at_the_frame_size():
    framing = Framing.scaled((37, 50), 74)
    ramp = torch.linspace(0, 1, 50).expand(2, 37, 50).contiguous()
    network = framing.to_input(ramp)
    assert network.shape == (2, 80, 112)
    top, _, left, _ = framing.padding
    assert float(network[:, :top].abs().max()) == 0.0 and float(network[:, :, :left].abs().max()) == 0.0
    back = framing.to_frame(network)
    assert back.shape == (2, 37, 50)
    assert float((back - ramp)[:, :, 1:-1].abs().max()) < 0.02  # bilinear there and back keeps a linear ramp


def test_flipped_and_read_only_arrays_become_tensors():
    """OpenCV users write frame[..., ::-1] for RGB (negative strides); PIL arrays are read-only."""
    bgr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    assert torch.equal(frame_to_tensor(bgr[..., ::-1]), frame_to_tensor(rgb))
    read_only = rgb.copy()
    read_only.flags.writeable = False
    assert torch.equal(frame_to_tensor(read_only), frame_to_tensor(rgb))
    labels = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    assert torch.equal(one_hot_probs(labels[:, ::-1], [1, 2]), one_hot_probs(labels[:, ::-1].copy(), [1, 2]))
