"""One training step of the STM/KMN recipe.

Per clip (frames A, B, C): memorise A with its ground truth; segment B reading memory {A}; memorise B with its
*predicted* soft probabilities (gradients flow through them, as in STM's training); segment C reading {A, B}. The
loss is the pixel-wise cross-entropy of B and C over the soft-aggregated probabilities (NLL of their log),
averaged over the two frames and over the clips of the batch. Gradients are accumulated clip by clip (the model
takes one frame with N objects at a time) and the optimizer steps once per batch.

The model is in train mode, so :class:`kmnrt.model.memory_read.MemoryRead` reads with plain STM attention: KMN's
kernel is inference-only. BatchNorm layers are put back in eval mode (frozen running statistics), as STM-style
training does: statistics of one frame per forward pass would be noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kmnrt.framing import STRIDE, one_hot_probs
from kmnrt.model.kmn import KMN
from kmnrt.model.memory_read import stm_read
from kmnrt.training.clips import Clip

LOG_FLOOR = 1e-8  # soft aggregation already clamps to 1e-7; the floor only guards log(0) under fp16


def set_train_mode(model: nn.Module, freeze_batchnorm: bool = True) -> None:
    """``model.train()``, then BatchNorm back to eval (running statistics frozen) when ``freeze_batchnorm``."""
    model.train()
    if freeze_batchnorm:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def aggregated_nll(probs: Tensor, labels: Tensor, hard_fraction: float = 1.0) -> Tensor:
    """probs [N+1, H, W] (soft-aggregated, background first), labels [H, W] int64 ids 0..N -> mean NLL over
    all pixels, or (``hard_fraction`` < 1, bootstrapped cross-entropy as in STCN) over that fraction of the
    pixels with the highest loss."""
    per_pixel = F.nll_loss(torch.log(probs.float().clamp_min(LOG_FLOOR))[None], labels[None], reduction="none")
    if hard_fraction >= 1.0:
        return per_pixel.mean()
    count = max(1, int(per_pixel.numel() * hard_fraction))
    return per_pixel.flatten().topk(count).values.mean()


def read_mask_loss(memory_key: Tensor, memory_masks: Tensor, query_key: Tensor, target: Tensor) -> Tensor:
    """Auxiliary loss on the memory read's attention alone: read the memory frames' object masks, average-pooled
    to the key grid ([T, N, 1, h, w]: the fraction of each cell an object covers), with the attention of
    ``query_key`` over ``memory_key`` [T, N, Ck, h, w], and compare with the query frame's pooled mask
    ``target`` [N, 1, h, w] (binary cross-entropy). The gradient goes straight to the keys: each object's cells
    must attend to that object's cells in memory, background to background. Without it, from random weights, the
    keys get almost no gradient through the decoder, the attention stays flat and the model learns to segment
    every textured shape in the query frame instead of the memorised ones (docs/default-model.md)."""
    read = stm_read(memory_key, memory_masks, query_key)  # [N, 1, h, w]
    return F.binary_cross_entropy(read.float().clamp(1e-6, 1 - 1e-6), target.float())


def clip_loss(model: KMN, clip: Clip, device: torch.device, hard_fraction: float = 1.0,
              read_loss_weight: float = 0.0) -> tuple[Tensor, Tensor]:
    """Forward one clip -> (loss of frame B, loss of frame C), each plus ``read_loss_weight`` times
    :func:`read_mask_loss` of that frame when it is positive."""
    frames = clip.frames.to(device)
    labels = clip.labels.to(device)
    object_ids = list(range(1, clip.num_objects + 1))
    probs_a = one_hot_probs(labels[0], object_ids, device)
    key_a, value_a = model.encode_memory(frames[0:1], probs_a)

    query_b = model.encode_query(frames[1:2])
    probs_b = model.decode(model.read_memory(key_a[None], value_a[None], query_b.key), query_b)
    key_b, value_b = model.encode_memory(frames[1:2], probs_b)

    query_c = model.encode_query(frames[2:3])
    memory_key, memory_value = torch.stack([key_a, key_b]), torch.stack([value_a, value_b])
    probs_c = model.decode(model.read_memory(memory_key, memory_value, query_c.key), query_c)
    loss_b = aggregated_nll(probs_b, labels[1], hard_fraction)
    loss_c = aggregated_nll(probs_c, labels[2], hard_fraction)
    if read_loss_weight > 0:
        pooled = [F.avg_pool2d(torch.stack([(labels[t] == i).float() for i in object_ids])[:, None], STRIDE)
                  for t in range(3)]  # [N, 1, h, w] per frame
        aux_b = read_mask_loss(key_a[None], pooled[0][None], query_b.key, pooled[1])
        aux_c = read_mask_loss(memory_key, torch.stack(pooled[:2]), query_c.key, pooled[2])
        loss_b, loss_c = loss_b + read_loss_weight * aux_b, loss_c + read_loss_weight * aux_c
    return loss_b, loss_c


def train_step(model: KMN, optimizer: torch.optim.Optimizer, clips: list[Clip], device: torch.device,
               grad_clip: float | None = None, scaler: torch.amp.GradScaler | None = None,
               hard_fraction: float = 1.0,
               tied: list[tuple[nn.Parameter, nn.Parameter]] | None = None, read_loss_weight: float = 0.0) -> float:
    """Forward/backward every clip (gradients accumulated, each clip weighted 1/len(clips)), then one optimizer
    step. With a ``scaler`` (CUDA mixed precision) the forward runs under fp16 autocast and the loss is scaled;
    the loss itself is computed in fp32. ``tied`` parameter pairs (equal at the start) get the sum of their two
    gradients, so they stay equal: one set of weights used in two places. Returns the batch's mean loss."""
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for clip in clips:
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=scaler is not None):
            loss_b, loss_c = clip_loss(model, clip, device, hard_fraction, read_loss_weight)
        loss = (loss_b.float() + loss_c.float()) / (2 * len(clips))
        (scaler.scale(loss) if scaler is not None else loss).backward()
        total += float(loss.detach())
    for first, second in tied or ():
        if first.grad is not None or second.grad is not None:
            total_grad = sum(p.grad for p in (first, second) if p.grad is not None)
            first.grad, second.grad = total_grad, total_grad.clone()
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return total
