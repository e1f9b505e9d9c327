"""Where a frame sits inside the network's input: padding to multiples of 16, and resizing to a fixed bundle size.

The reference protocol (STM/KMN) zero-pads each frame so that H and W become multiples of 16, split evenly
(floor on the top/left, the rest on the bottom/right), and crops the output back. A bundle has a fixed input size;
a frame of another size is first resized (bilinear, aspect ratio kept) to fit inside it, then padded, and the
output probabilities are cropped and resized back to the frame. When the frame already fits exactly (e.g. 480x854
in a 480x864 bundle) no resizing happens and the result equals the reference protocol. The reference tracker can
also be told a short side to track at (:meth:`Framing.scaled`); a bundle exported for that size reproduces it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

STRIDE = 16


def round_up(value: int, multiple: int = STRIDE) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class Framing:
    frame_size: tuple[int, int]    # (H, W) of the user's frames
    resized_size: tuple[int, int]  # (H, W) after resizing, before padding
    input_size: tuple[int, int]    # (H, W) the network sees, multiples of 16

    @classmethod
    def padded(cls, frame_size: tuple[int, int]) -> Framing:
        """The reference protocol: pad to the next multiples of 16, no resizing."""
        h, w = frame_size
        return cls((h, w), (h, w), (round_up(h), round_up(w)))

    @classmethod
    def scaled(cls, frame_size: tuple[int, int], short_side: int | None) -> Framing:
        """The reference protocol at a chosen scale: resize (aspect ratio kept) so the short side is
        ``short_side`` pixels, as STM does with YouTube-VOS at 480p, then pad; None = :meth:`padded`."""
        h, w = frame_size
        if short_side is None or short_side == min(h, w):
            return cls.padded(frame_size)
        scale = short_side / min(h, w)
        resized = (max(1, round(h * scale)), max(1, round(w * scale)))
        return cls((h, w), resized, (round_up(resized[0]), round_up(resized[1])))

    @classmethod
    def fitted(cls, frame_size: tuple[int, int], input_size: tuple[int, int]) -> Framing:
        """Resize to fit inside ``input_size`` keeping the aspect ratio (only if it does not fit as is), then pad."""
        h, w = frame_size
        ih, iw = input_size
        if h <= ih and w <= iw and (ih - h) < STRIDE and (iw - w) < STRIDE:
            return cls((h, w), (h, w), (ih, iw))
        scale = min(ih / h, iw / w)
        resized = (min(ih, max(1, round(h * scale))), min(iw, max(1, round(w * scale))))
        return cls((h, w), resized, (ih, iw))

    @property
    def needs_resize(self) -> bool:
        return self.resized_size != self.frame_size

    @property
    def padding(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) zero padding around the resized frame."""
        dh = self.input_size[0] - self.resized_size[0]
        dw = self.input_size[1] - self.resized_size[1]
        return dh // 2, dh - dh // 2, dw // 2, dw - dw // 2

    def to_input(self, planes: Tensor) -> Tensor:
        """[C, H, W] float planes at frame size (RGB in [0, 1] or probabilities) -> [C, Hn, Wn] network input."""
        if self.needs_resize:
            planes = F.interpolate(planes[None], size=self.resized_size, mode="bilinear", align_corners=False)[0]
        top, bottom, left, right = self.padding
        return F.pad(planes, (left, right, top, bottom))

    def clear_padding(self, planes: Tensor) -> Tensor:
        """Zero [C, Hn, Wn] network planes outside the (resized) frame, in place; returns them."""
        top, bottom, left, right = self.padding
        height, width = planes.shape[1:]
        planes[:, :top].zero_()
        planes[:, height - bottom:].zero_()
        planes[:, :, :left].zero_()
        planes[:, :, width - right:].zero_()
        return planes

    def to_frame(self, planes: Tensor) -> Tensor:
        """[C, Hn, Wn] network output -> [C, H, W] at the frame's size (crop, then resize back if needed)."""
        top, _, left, _ = self.padding
        rh, rw = self.resized_size
        planes = planes[:, top:top + rh, left:left + rw]
        if self.needs_resize:
            planes = F.interpolate(planes[None], size=self.frame_size, mode="bilinear", align_corners=False)[0]
        return planes


def frame_to_tensor(frame: np.ndarray | Tensor, device: torch.device | str = "cpu") -> Tensor:
    """HWC uint8 RGB (numpy or torch, any device) -> [3, H, W] float32 in [0, 1] on ``device``."""
    tensor = frame if isinstance(frame, Tensor) else torch.from_numpy(_torch_ready(frame))
    tensor = tensor.to(device)
    return tensor.permute(2, 0, 1).to(torch.float32).div_(255.0)


def one_hot_probs(labels: np.ndarray | Tensor, object_ids: list[int], device: torch.device | str = "cpu") -> Tensor:
    """An index mask [H, W] and the tracked ids -> probabilities [N+1, H, W] (background first); ids not in
    ``object_ids`` count as background."""
    labels = (labels if isinstance(labels, Tensor) else torch.from_numpy(_torch_ready(np.asarray(labels)))).to(device)
    planes = [labels == obj for obj in object_ids]
    foreground = (torch.stack(planes).to(torch.float32) if planes
                  else labels.new_zeros((0, *labels.shape), dtype=torch.float32))
    background = 1.0 - foreground.sum(dim=0, keepdim=True).clamp(max=1.0)
    return torch.cat([background, foreground])


def mask_size_mismatch(where: str, mask_size: tuple[int, ...], frame_size: tuple[int, ...]) -> str:
    """The message for a mask [H, W] whose size is not its frame's [H, W] (every tracker and the service say it
    alike). A mask of the frame's size turned a quarter most likely comes from the frame as stored: photos are read
    turned upright by their EXIF orientation (and videos by their rotation tag), so the message says so."""
    message = (f"{where}: mask size {mask_size[1]}x{mask_size[0]} differs from the frame size "
               f"{frame_size[1]}x{frame_size[0]} (width x height); give a mask of the frame's size")
    if tuple(mask_size) == tuple(frame_size)[::-1]:
        message += (". It is the frame's size turned a quarter: frames are read turned upright by their EXIF "
                    "orientation (photos) or rotation tag (videos), so the mask was likely drawn on the frame as "
                    "stored; turn it the same way")
    return message


def _torch_ready(array: np.ndarray) -> np.ndarray:
    """torch.from_numpy refuses arrays with negative strides (OpenCV's BGR flipped to RGB, ``frame[..., ::-1]``)
    and warns on read-only ones (PIL's); copy only those."""
    if array.flags.writeable and all(stride >= 0 for stride in array.strides):
        return array
    return array.copy()
