"""Frames, videos, DAVIS-style dataset trees and palette label PNGs.

Public API (imported lazily, so ``import kmnrt.data`` does not load numpy, OpenCV or Pillow):

- palette:  ``DAVIS_PALETTE``, ``read_label_png``, ``read_tracking_mask``, ``read_masks``, ``write_label_png``,
  ``colorize_labels``
- frames:   ``read_image``, ``open_frames``, ``FrameSource``, ``ImageFolderSource``, ``VideoFileSource``
- datasets: ``Sequence``, ``find_sequences``, ``read_annotation``, ``open_sequence_frames``
- files:    ``atomic_output``, ``output_folder``, ``refuse_writing_over_inputs``, ``warn_of_earlier_masks``
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kmnrt.lazy import lazy_exports

_EXPORTS = {
    "DAVIS_PALETTE": "kmnrt.data.palette",
    "DAVIS_VOID": "kmnrt.data.palette",
    "colorize_labels": "kmnrt.data.palette",
    "read_label_png": "kmnrt.data.palette",
    "read_masks": "kmnrt.data.palette",
    "read_tracking_mask": "kmnrt.data.palette",
    "write_label_png": "kmnrt.data.palette",
    "IMAGE_EXTENSIONS": "kmnrt.data.frames",
    "FrameSource": "kmnrt.data.frames",
    "ImageFolderSource": "kmnrt.data.frames",
    "VideoFileSource": "kmnrt.data.frames",
    "natural_sort_key": "kmnrt.data.frames",
    "open_frames": "kmnrt.data.frames",
    "read_image": "kmnrt.data.frames",
    "Sequence": "kmnrt.data.davis",
    "find_sequences": "kmnrt.data.davis",
    "open_sequence_frames": "kmnrt.data.davis",
    "read_annotation": "kmnrt.data.davis",
    "atomic_output": "kmnrt.data.atomic",
    "output_folder": "kmnrt.data.atomic",
    "refuse_writing_over_inputs": "kmnrt.data.atomic",
    "warn_of_earlier_masks": "kmnrt.data.atomic",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from kmnrt.data.atomic import atomic_output, output_folder, refuse_writing_over_inputs, warn_of_earlier_masks
    from kmnrt.data.davis import Sequence, find_sequences, open_sequence_frames, read_annotation
    from kmnrt.data.frames import (
        IMAGE_EXTENSIONS,
        FrameSource,
        ImageFolderSource,
        VideoFileSource,
        natural_sort_key,
        open_frames,
        read_image,
    )
    from kmnrt.data.palette import (
        DAVIS_PALETTE,
        DAVIS_VOID,
        colorize_labels,
        read_label_png,
        read_masks,
        read_tracking_mask,
        write_label_png,
    )


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
