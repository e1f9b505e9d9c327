"""One training step of the STM/KMN recipe.

Per clip (frames A, B, C): memorise A with its ground truth; segment B reading memory {A}; memorise B with its
*predicted* soft probabilities (gradients flow through them, as in STM's training); segment C reading {A, B}. The
loss is the pixel-wise cross-entropy of B and C over the soft-aggregated probabilities (NLL of their log),
averaged over the two frames and over the clips of the batch. Longer clips (``--clip-frames``) continue the same
way: each frame reads the memory of all the frames before it. Gradients are accumulated clip by clip (the model
takes one frame with N objects at a time) and the optimizer steps once per batch.

The model is in train mode, so :class:`kmnrt.model.memory_read.MemoryRead` reads with plain STM attention: KMN's
kernel is inference-only (paper). ``--train-sigma`` reads with the kernel in training too: the Memory-to-Query
argmax carries no gradient, but the Gaussian it centres still shapes the softmax the keys are trained through.
BatchNorm layers are put back in eval mode (frozen running statistics), as STM-style training does: statistics of
one frame per forward pass would be noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kmnrt.framing import STRIDE, one_hot_probs
from kmnrt.model.kmn import KMN
from kmnrt.model.memory_read import kmn_read, stm_read
from kmnrt.training.clips import Clip
from kmnrt.training.config import OptimConfig

LOG_FLOOR = 1e-8  # soft aggregation already clamps to 1e-7; the floor only guards log(0) under fp16


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]


def set_train_mode(model: nn.Module, freeze_batchnorm: bool = True) -> None:
    """``model.train()``, then BatchNorm back to eval (running statistics frozen) when ``freeze_batchnorm``."""
    model.train()
    if freeze_batchnorm:
        for layer in batchnorm_layers(model):
            layer.eval()


def aggregated_nll(probs: Tensor, labels: Tensor, hard_fraction: float = 1.0) -> Tensor:
    """probs [N+1, H, W] (soft-aggregated, background first), labels [H, W] int64 ids 0..N -> mean NLL over
    all pixels, or (``hard_fraction`` < 1, bootstrapped cross-entropy as in STCN) over that fraction of the
    pixels with the highest loss."""
    per_pixel = F.nll_loss(torch.log(probs.float().clamp_min(LOG_FLOOR))[None], labels[None], reduction="none")
    if hard_fraction >= 1.0:
        return per_pixel.mean()
    count = max(1, int(per_pixel.numel() * hard_fraction))
    return per_pixel.flatten().topk(count).values.mean()


def dice_loss(probs: Tensor, labels: Tensor) -> Tensor:
    """probs [N+1, H, W] (soft-aggregated, background first), labels [H, W] ids 0..N -> mean over the N objects
    of 1 - soft Dice (as XMem adds to its cross-entropy): every object weighs the same whatever its size, and a
    mask that keeps only part of its object costs in proportion to the part lost."""
    objects = probs[1:].float().flatten(1)
    targets = one_hot_probs(labels, list(range(1, probs.shape[0])), labels.device)[1:].flatten(1)
    dice = (2 * (objects * targets).sum(1) + 1) / (objects.sum(1) + targets.sum(1) + 1)
    return (1 - dice).mean()


def read_mask_loss(memory_key: Tensor, memory_masks: Tensor, query_key: Tensor, target: Tensor) -> Tensor:
    """Auxiliary loss on the memory read's attention alone: read the memory frames' object masks, average-pooled
    to the key grid ([T, N, 1, h, w]: the fraction of each cell an object covers), with the attention of
    ``query_key`` over ``memory_key`` [T, N, Ck, h, w], and compare with the query frame's pooled mask
    ``target`` [N, 1, h, w] (binary cross-entropy). The gradient goes straight to the keys: each object's cells
    must attend to that object's cells in memory, background to background. Without it, from random weights, the
    keys get almost no gradient through the decoder, the attention stays flat and the model learns to segment
    every textured shape in the query frame instead of the memorised ones (docs/default-model.md)."""
    read = stm_read(memory_key, memory_masks, query_key)  # [N, 1, h, w]
    # nan_to_num: a diverged run is reported by the loop's non-finite loss check, not by binary_cross_entropy's
    # "all elements of input should be between 0 and 1"
    return F.binary_cross_entropy(read.float().nan_to_num(0.5).clamp(1e-6, 1 - 1e-6), target.float())


def clip_loss(model: KMN, clip: Clip, device: torch.device, optim: OptimConfig = OptimConfig()) -> list[Tensor]:
    """Forward one clip -> the loss of every frame after the first: the cross-entropy over ``optim``'s
    ``hard_pixel_fraction`` of the pixels, plus ``read_loss_weight`` times :func:`read_mask_loss` and
    ``dice_loss_weight`` times :func:`dice_loss` of that frame when they are positive.
    Frame t reads the memory of frames 0..t-1: the first with its ground truth, the others with their
    predictions, so a longer clip trains the network on its own errors carried forward. A ``clip.forget``
    block moves a prediction's object probability to background where it is memorised (``--memory-forget``)."""
    frames = clip.frames.to(device)
    labels = clip.labels.to(device)
    object_ids = list(range(1, clip.num_objects + 1))
    count = frames.shape[0]
    probs = [one_hot_probs(labels[0], object_ids, device)]
    keys, values, memory_keys, query_keys = [], [], [], []
    forget = clip.forget.to(device) if clip.forget is not None else None
    for t in range(1, count):
        memorised = probs[-1] if forget is None or t == 1 else forget_in_memory(probs[-1], forget[t - 1])
        key, value = model.encode_memory(frames[t - 1:t], memorised)
        keys.append(key)
        values.append(value)
        query = model.encode_query(frames[t:t + 1])
        memory_keys.append(_stacked(keys))
        query_keys.append(query.key)
        if optim.train_sigma is None:
            read = model.read_memory(memory_keys[-1], _stacked(values), query.key)
        else:
            read = kmn_read(memory_keys[-1], _stacked(values), query.key, optim.train_sigma)
        probs.append(model.decode(read, query))
    losses = [aggregated_nll(probs[t], labels[t], optim.hard_pixel_fraction) for t in range(1, count)]
    if optim.dice_loss_weight > 0:
        losses = [loss + optim.dice_loss_weight * dice_loss(probs[t], labels[t])
                  for t, loss in enumerate(losses, start=1)]
    if optim.read_loss_weight > 0:
        pooled = [F.avg_pool2d(torch.stack([(labels[t] == i).float() for i in object_ids])[:, None], STRIDE)
                  for t in range(count)]  # [N, 1, h, w] per frame
        # The attention loss reads frame 0 alone through a fresh view and longer memories through the read's own
        # stack: exactly the autograd graph of the original 3-frame step, so gradients are summed in the same
        # order and the shipped weights still reproduce to the last bit.
        reads = [read_mask_loss(keys[0][None] if t == 1 else memory_keys[t - 1], torch.stack(pooled[:t]),
                                query_keys[t - 1], pooled[t]) for t in range(1, count)]
        losses = [loss + optim.read_loss_weight * read for loss, read in zip(losses, reads)]
    return losses


def forget_in_memory(probs: Tensor, forget: Tensor) -> Tensor:
    """probs [N+1, H, W] with the object probability at the ``forget`` pixels [H, W] moved to background."""
    moved = probs[1:] * forget
    return torch.cat([probs[:1] + moved.sum(0, keepdim=True), probs[1:] - moved])


def _stacked(tensors: list[Tensor]) -> Tensor:
    """``torch.stack``, but a single tensor is unsqueezed: the same values and the original 3-frame step's graph."""
    return tensors[0][None] if len(tensors) == 1 else torch.stack(tensors)


def train_step(model: KMN, optimizer: torch.optim.Optimizer, clips: list[Clip], device: torch.device,
               optim: OptimConfig = OptimConfig(), scaler: torch.amp.GradScaler | None = None,
               tied: list[tuple[nn.Parameter, nn.Parameter]] | None = None) -> float:
    """Forward/backward every clip (gradients accumulated, each clip weighted 1/len(clips)), then one optimizer
    step, the gradient norm clipped to ``optim.grad_clip`` when set (the losses as :func:`clip_loss`; the
    learning rate is the optimizer's own). With a ``scaler`` (CUDA mixed precision) the forward runs under fp16
    autocast and the loss is scaled; the loss itself is computed in fp32. ``tied`` parameter pairs (equal at the
    start) get the sum of their two gradients, so they stay equal: one set of weights used in two places. Returns
    the batch's mean loss."""
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for clip in clips:
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=scaler is not None):
            frame_losses = clip_loss(model, clip, device, optim)
        loss = sum(frame_loss.float() for frame_loss in frame_losses) / (len(frame_losses) * len(clips))
        (scaler.scale(loss) if scaler is not None else loss).backward()
        total += float(loss.detach())
    for first, second in tied or ():
        if first.grad is not None or second.grad is not None:
            total_grad = sum(p.grad for p in (first, second) if p.grad is not None)
            first.grad, second.grad = total_grad, total_grad.clone()
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    if optim.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return total
