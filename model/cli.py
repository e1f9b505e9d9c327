"""``kmnrt track``: segment a video with the PyTorch reference tracker and write DAVIS palette PNGs."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from kmnrt.errors import UserInputError
from kmnrt.model.config import CONFIGS, DEFAULT_CONFIG


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "track",
        help="segment a video with the PyTorch reference tracker (no export needed)",
        description="Track the objects of a first-frame mask through a video with the PyTorch KMN model, following "
        "the STM/KMN evaluation protocol (frames resized to --short-side if set, then padded to multiples of 16; "
        "memory = first frame + every --mem-every-th frame + the previous frame). Writes one indexed DAVIS-palette "
        "PNG per frame, named like the frames and of their size, keeping the mask's label ids.",
    )
    add_weights_arguments(parser)
    add_read_arguments(parser)
    add_short_side_argument(parser)
    parser.add_argument("--mem-every", type=int, default=5,
                        help="every N-th frame joins the permanent memory (default: 5)")
    parser.add_argument("--max-memory", type=int, default=None,
                        help="bound the memory to this many frames (default: unbounded, as STM)")
    parser.add_argument("--input", type=Path, required=True, help="a folder of frames or a video file")
    parser.add_argument("--mask", type=Path, required=True,
                        help="the first frame's index mask (PNG), or a folder of mask PNGs named like the frames: "
                        "the first is the first frame's, later ones add objects that first appear there")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the PNG masks")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="torch device (default: cpu)")
    parser.set_defaults(handler=run_track)


def add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    """--config and --checkpoint: which network, with which weights (track and export alike)."""
    parser.add_argument("--config", choices=sorted(CONFIGS), default=DEFAULT_CONFIG,
                        help=f"model size (default: {DEFAULT_CONFIG})")
    parser.add_argument("--checkpoint", type=Path,
                        help="weights: STM's STM_weights.pth (with --config paper) or a kmnrt .safetensors "
                        "checkpoint; default: the embedded weights of the config if it has some, else seeded "
                        "random weights (a warning says so; an exported bundle also records it in its manifest)")


def add_read_arguments(parser: argparse.ArgumentParser) -> None:
    """--read and --sigma, unset by default: :func:`kmnrt.model.checkpoint.choose_read` fills them from the
    checkpoint's recommended read, else the paper's KMN read with sigma 7."""
    parser.add_argument("--read", choices=("kmn", "stm"),
                        help="memory read: KMN's kernelized read or STM's (default: the checkpoint's recommended "
                        "read, else kmn)")
    parser.add_argument("--sigma", type=float,
                        help="KMN Gaussian width in feature cells (default: the checkpoint's recommended sigma, "
                        "else 7, the paper's)")


def add_short_side_argument(parser: argparse.ArgumentParser) -> None:
    """--short-side, unset by default: :func:`kmnrt.model.checkpoint.choose_short_side` fills it in."""
    parser.add_argument("--short-side", type=int,
                        help="track at this short side in pixels: frames are resized (aspect ratio kept) and the "
                        "masks resized back to the frames' size, as STM tracks YouTube-VOS at 480p; 0 = the "
                        "frames' own size (default: the short side the checkpoint recommends, if it records one, "
                        "else 0)")


def run_track(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from kmnrt.data import (open_frames, output_folder, read_masks, refuse_writing_over_inputs,
                            warn_of_earlier_masks, write_label_png)
    from kmnrt.data.atomic import kept_if_written
    from kmnrt.model.checkpoint import choose_read, choose_short_side, load_model
    from kmnrt.model.config import get_config
    from kmnrt.model.reference import ReferenceTracker, TrackerConfig
    from kmnrt.model.embedded import default_checkpoint

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device cuda: no CUDA device is available to PyTorch; use --device cpu")
    config = get_config(args.config)
    checkpoint = args.checkpoint or default_checkpoint(config.name)
    if checkpoint is None:
        print(f"warning: no checkpoint for config '{config.name}': using seeded random weights, the masks will be "
              f"meaningless; pass --checkpoint", file=sys.stderr)
    read = choose_read(args.read, args.sigma, checkpoint)
    model = load_model(config, checkpoint, read)
    short_side = choose_short_side(args.short_side, checkpoint)
    tracker = ReferenceTracker(model, TrackerConfig(args.mem_every, args.max_memory, short_side), device=args.device)

    source = open_frames(args.input, max_frames=args.max_frames)
    first_mask, later_masks = read_masks(args.mask, source.names, source.cut)
    refuse_writing_over_inputs(args.out, {"--input": args.input, "--mask": args.mask}, source.names)
    names = source.names
    frames = (frame for _, frame in source)
    started = time.perf_counter()
    count = 0
    progress = tqdm(total=len(source), desc="tracking", unit="frame", file=sys.stderr, disable=None)
    with progress, kept_if_written(args.out):
        output_folder(args.out)
        try:
            for result in tracker.track(frames, first_mask, later_masks):
                write_label_png(args.out / f"{names[result.index]}.png", result.labels)
                count += 1
                progress.update(1)
        except UserInputError as exc:
            if count:  # a bad frame part-way: say that the masks before it are kept, as `kmnrt run` does
                raise UserInputError(f"{exc}; the {count} masks before it are in {args.out}") from None
            raise
    elapsed = time.perf_counter() - started
    warn_of_earlier_masks(args.out, names[:count])
    print(f"tracked {len(result.object_ids)} object(s) {result.object_ids} over {count} frames in {elapsed:.1f} s "
          f"({count / elapsed:.2f} fps, {config.name}, "
          f"{f'kmn read, sigma {read.sigma:g}' if read.kind == 'kmn' else 'stm read'}, "
          f"{f'short side {short_side}' if short_side else 'own size'}, {args.device}) "
          f"-> {args.out}")
    return 0
