"""``kmnrt run``: segment a video with an engine bundle; palette PNGs, an optional overlay video, stage timings.

Only argparse is imported at module level; the runtime is imported by the handler.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from kmnrt.errors import UserInputError

OVERLAY_ALPHA = 0.5


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="segment a video with an exported engine bundle (ONNX Runtime / TensorRT / PyTorch)",
        description="Track the objects of a first-frame mask (and of later masks, for objects that appear later) "
        "through a video with a bundle from `kmnrt export`. "
        "Writes one indexed DAVIS-palette PNG per frame (named like the frames, at their size, with the mask's "
        "label ids), optionally an overlay video, and prints the median time of each stage and the frame rate. "
        "Frames of another size than the bundle's are resized to fit it (aspect ratio kept), padded, and the "
        "masks resized back.",
    )
    parser.add_argument("--bundle", type=Path, required=True, help="the bundle folder (engines/NAME)")
    parser.add_argument("--input", type=Path, required=True, help="a video file or a folder of frames")
    parser.add_argument("--mask", type=Path, required=True,
                        help="the first frame's index mask (PNG), or a folder of mask PNGs named like the frames "
                        "(later ones add the objects that first appear there, as DAVIS 2017 annotates them)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the PNG masks")
    parser.add_argument("--backend", default="auto",
                        help="auto (TensorRT, then ONNX Runtime CUDA, then CPU), torch, onnxruntime, "
                        "onnxruntime-cuda or tensorrt; aliases ort-cpu, ort-cuda, trt (default: auto)")
    parser.add_argument("--device", default=None, help="torch device for GPU backends, e.g. cuda:1")
    parser.add_argument("--mem-every", type=int, default=None,
                        help="memorise every N-th frame (default: the bundle's)")
    parser.add_argument("--overlay", type=Path, help="also write the frames with the masks blended in (.mp4)")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    parser.set_defaults(handler=run_video)


def run_video(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from kmnrt.data import (open_frames, output_folder, read_masks, refuse_writing_over_inputs,
                            warn_of_earlier_masks, write_label_png)
    from kmnrt.data.atomic import check_output_file, kept_if_written
    from kmnrt.runtime.timing import StageTimes
    from kmnrt.runtime.tracker import Tracker

    if args.overlay is not None and args.overlay.suffix.lower() != ".mp4":
        raise UserInputError(f"--overlay {args.overlay}: write the overlay as an .mp4 file")
    if args.overlay is not None:
        check_output_file(args.overlay, "--overlay")
    if args.overlay is not None and args.overlay.exists() and args.input.exists() \
            and os.path.samefile(args.overlay, args.input):
        raise UserInputError(f"--overlay {args.overlay} is the --input video: it would be written over; "
                             f"give the overlay another name")
    source = open_frames(args.input, max_frames=args.max_frames)
    first_mask, later_masks = read_masks(args.mask, source.names, source.cut)
    masks = {0: first_mask, **later_masks}
    refuse_writing_over_inputs(args.out, {"--input": args.input, "--mask": args.mask}, source.names)
    tracker = Tracker.from_bundle(args.bundle, backend=args.backend, device=args.device, mem_every=args.mem_every)
    print(f"{tracker.runner.selection}: {tracker.runner.describe()}", file=sys.stderr)
    times = StageTimes()
    state = tracker.new_state()
    written = 0
    started = time.perf_counter()
    frames = iter(source)
    # a mask refused at frame 0 leaves no empty folder behind, for the masks or the overlay
    overlay_folder = args.overlay.parent if args.overlay else args.out
    with kept_if_written(args.out), kept_if_written(overlay_folder):
        output_folder(args.out)
        overlay = OverlayWriter(args.overlay, source) if args.overlay else None
        unreadable = False  # a frame that cannot be read ends the run with the overlay up to it, as its error says
        try:
            with tqdm(total=len(source), desc="tracking", unit="frame", file=sys.stderr, disable=None) as bar:
                for index in range(len(source)):
                    try:
                        name, frame = next(frames)
                    except UserInputError as exc:
                        kept = f"; the {written} masks before it are in {args.out}" if written else ""
                        kept += f" and the overlay {args.overlay} shows those frames" if written and overlay else ""
                        unreadable = True
                        raise UserInputError(f"frame {index} of {args.input}: {exc}{kept}") from None
                    if index in masks:
                        result = tracker.add_objects(state, frame, masks[index], keep_probs=False)
                    else:
                        result = tracker.step(state, frame, keep_probs=False)
                    if index > 0:
                        times.add(result.times)
                    write_label_png(args.out / f"{name}.png", result.mask)
                    written += 1
                    if overlay:
                        overlay.add(frame, result.mask)
                    bar.update(1)
        finally:
            if overlay:  # any other end part-way (Ctrl-C, a refused mask) leaves a file already there as it was
                overlay.close(keep=unreadable or written == len(source))
    elapsed = time.perf_counter() - started
    warn_of_earlier_masks(args.out, source.names[:written])
    print(times.format_table())
    print(f"tracked {len(state.object_ids)} object(s) {state.object_ids} over {written} frames in {elapsed:.1f} s "
          f"({written / elapsed:.2f} fps end to end, with reading and writing) -> {args.out}"
          + (f", overlay {args.overlay}" if overlay else ""))
    return 0


class OverlayWriter:
    """An .mp4 of the frames with the masks blended in DAVIS colours, written under a temporary name and moved
    into place when closed with ``keep`` (also after a frame that cannot be read, with the frames up to it);
    without it (an interrupted run) the temporary file is removed and a file already at the path stays."""

    def __init__(self, path: Path, source) -> None:
        import cv2

        self.path = path
        self.tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        fps = 24.0
        if Path(source.path).is_file():  # a video: keep its frame rate
            capture = cv2.VideoCapture(str(source.path))
            fps = capture.get(cv2.CAP_PROP_FPS) or fps
            capture.release()
        height, width = source.size
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not self.writer.isOpened():
            raise UserInputError(f"OpenCV cannot write the overlay video {path} (no mp4v encoder?)")
        self.frames = 0

    def add(self, frame, labels) -> None:
        import cv2
        import numpy as np

        from kmnrt.data import colorize_labels

        colours = colorize_labels(labels)
        blended = np.where((labels > 0)[..., None],
                           (frame * (1 - OVERLAY_ALPHA) + colours * OVERLAY_ALPHA).astype(np.uint8), frame)
        self.writer.write(cv2.cvtColor(blended, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self, keep: bool = True) -> None:
        self.writer.release()
        if self.frames and keep:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
