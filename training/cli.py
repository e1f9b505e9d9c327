"""``kmnrt train`` (KMN's two training stages: Hide-and-Seek pre-training, main training on videos) and
``kmnrt generate-data`` (procedural videos with ground truth in a DAVIS-style tree)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kmnrt.model.config import CONFIGS

_EPILOG = """\
examples:
  # pre-train the tiny model on procedural images (no data needed), 2000 iterations on the CPU
  kmnrt train --config tiny --stage pretrain --iterations 2000 --out runs/tiny-pre
  # main training on a DAVIS-style tree, starting from the pre-trained weights
  kmnrt train --config tiny --stage main --data DAVIS2017 --init runs/tiny-pre/model.safetensors --out runs/tiny
  # the paper recipe on a GPU, from STM's released weights
  kmnrt train --config paper --stage main --data DAVIS2017 --init STM_weights.pth --device cuda --out runs/paper
  # continue an interrupted run: the same options (--iterations too, or more), --resume its folder
  kmnrt train --config tiny --stage pretrain --iterations 2000 --resume runs/tiny-pre --out runs/tiny-pre

writes to --out: model.safetensors (weights, every --checkpoint-every iterations and at the end),
model_averaged.safetensors (with --average-from), train_state.pt (for --resume), train_config.json,
train.log, tensorboard/ (with --tensorboard), losses.csv and loss_curve.png.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train KMN: Hide-and-Seek pre-training or main training on videos",
        description="Train a KMN model with the STM/KMN recipe: each sample is a 3-frame clip; frame A is "
        "memorised with its mask, B is segmented and memorised with its prediction, C is segmented from {A, B}; "
        "cross-entropy on B and C; Adam; BatchNorm statistics frozen. --stage pretrain synthesises clips from "
        "static images (procedural ones unless --data gives JPEGImages/ + Annotations/ image pairs) with KMN's "
        "Hide-and-Seek (24x24 grid, hiding probability ramped 0 -> 0.5). --stage main samples 3 ordered frames "
        "of DAVIS-style videos with the max_skip curriculum 0 -> 25. Defaults depend on --config (see "
        "docs/training.md).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny",
                        help="model size (default: tiny); sets the default crop, batch, lr and iterations")
    parser.add_argument("--stage", choices=("pretrain", "main"), default="pretrain",
                        help="pretrain: static images + Hide-and-Seek; main: videos (default: pretrain)")
    parser.add_argument("--data", type=Path,
                        help="main: a DAVIS-style tree (JPEGImages/[480p/]<seq>/*.jpg, Annotations/[480p/]<seq>/"
                        "*.png); pretrain: a folder with JPEGImages/*.jpg and Annotations/*.png index masks "
                        "(default for pretrain: procedural synthetic images)")
    parser.add_argument("--iterations", type=int, help="optimizer steps of the stage (default: per config)")
    parser.add_argument("--batch", type=int, help="clips per step (default: 4)")
    parser.add_argument("--size", type=int,
                        help="square crop side in pixels, a multiple of 16 (default: paper, lite 384; tiny 192; "
                        "small, small-in, medium 128)")
    parser.add_argument("--short-side", type=int,
                        help="main: resize frames to this short side (times a random zoom of 1-1.3) before "
                        "cropping (default: the crop size); track at the same scale (kmnrt track --short-side)")
    parser.add_argument("--clip-frames", type=int,
                        help="frames per training clip (default: 3, STM); each frame after the first is segmented "
                        "from the memory of the ones before it, predictions included, so longer clips train "
                        "recovery from the network's own drift")
    parser.add_argument("--memory-forget", type=float, metavar="P",
                        help="per object and per frame memorised from the network's own prediction, the chance "
                        "that a random block of the object is moved to background in memory first, so the next "
                        "frame must be segmented whole from a memory that lost part of it (default: 0)")
    parser.add_argument("--lr", type=float,
                        help="Adam learning rate (default: paper 1e-5, lite 1e-4, the others 1e-3), poly-decayed")
    parser.add_argument("--constant-lr", action="store_true", help="no poly decay of the learning rate")
    parser.add_argument("--warmup", type=int, default=0, metavar="N",
                        help="ramp the learning rate up linearly over the first N iterations (default: 0); from "
                        "random weights Adam's first full-size steps can saturate the output for good")
    parser.add_argument("--grad-clip", type=float, help="clip the global gradient norm to this value")
    parser.add_argument("--hard-pixels", type=float, default=1.0,
                        help="average the loss over this fraction of the pixels with the highest loss "
                        "(bootstrapped cross-entropy, as STCN; default: 1 = plain cross-entropy, the paper)")
    parser.add_argument("--hard-pixels-ramp", metavar="START,END",
                        help="plain cross-entropy until iteration START, then the fraction falls linearly to "
                        "--hard-pixels at END (STCN's schedule); default: --hard-pixels from the start")
    parser.add_argument("--read-loss", type=float, default=0.0,
                        help="weight of an auxiliary loss on the memory read's attention (it must carry the "
                        "memory masks, pooled to the key grid, onto the query frame's); default 0 (paper)")
    parser.add_argument("--dice-loss", type=float, default=0.0,
                        help="weight of a soft Dice loss per object added to the cross-entropy (as XMem; every "
                        "object counts the same whatever its size); default 0 (paper)")
    parser.add_argument("--train-sigma", type=float, metavar="SIGMA",
                        help="read memory with KMN's Gaussian kernel in training too, with this sigma in key-grid "
                        "cells (its argmax taken as a constant); default: off, the plain STM read (paper)")
    parser.add_argument("--max-objects", type=int, help="objects per clip at most (default: 3)")
    parser.add_argument("--motion-fraction", type=float,
                        help="pretrain on synthetic data: share of clips whose shapes move on their own instead "
                        "of the static three-affines recipe (default: 0.5)")
    parser.add_argument("--no-hide-and-seek", action="store_true", help="pretrain without Hide-and-Seek")
    parser.add_argument("--hide-grid", type=int,
                        help="Hide-and-Seek grid (cells per side; default 24, one stride-16 feature cell per cell "
                        "at 384x384; use size/16 to keep that at other crop sizes)")
    parser.add_argument("--max-skip", type=int,
                        help="main: where the max_skip curriculum ends (default 25, STM's; gaps between a clip's "
                        "frames are uniform in [0, max_skip])")
    parser.add_argument("--skip-every", type=int,
                        help="main: grow max_skip by 5 every this many iterations (default: spread 0 -> --max-skip "
                        "evenly over the stage)")
    parser.add_argument("--train-batchnorm", action="store_true",
                        help="update BatchNorm statistics during training (default: frozen, as STM)")
    parser.add_argument("--train-batchnorm-until", type=int, metavar="N",
                        help="from random weights: per-frame BatchNorm statistics for the first N iterations (fast "
                        "learning), then running statistics recalibrated on training clips and frozen for the rest, "
                        "so the network ends trained on the statistics inference uses (kmnrt.training.batchnorm)")
    parser.add_argument("--tied-init", action="store_true",
                        help="without --init: start the memory encoder and key/value as copies of the query "
                        "side's random weights, so the memory read can match from the first step")
    parser.add_argument("--calibrated-init", action="store_true",
                        help="without --init: scale the random key heads to attention logits of std 1 and the "
                        "decoder's last convolution down tenfold (see kmnrt.training.loop.calibrate_init)")
    parser.add_argument("--tied-training", action="store_true",
                        help="start the memory trunk and key head as copies of the query side's and keep them "
                        "equal (gradients summed): one shared key encoder, as STCN; the mask inputs and the value "
                        "heads stay separate")
    parser.add_argument("--init", type=Path,
                        help="start from these weights: STM_weights.pth (--config paper) or a kmnrt checkpoint")
    parser.add_argument("--resume", type=Path, help="continue an earlier run from its train_state.pt (or its "
                        "folder); give its options again (a warning names any that differ)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--force", action="store_true",
                        help="start a new run in an --out that already holds one (the earlier run's files are "
                        "removed first)")
    parser.add_argument("--checkpoint-every", type=int, default=500,
                        help="save weights and training state every N iterations (default: 500)")
    parser.add_argument("--average-from", type=int, metavar="ITERATION",
                        help="also write model_averaged.safetensors, the mean of the weights after this iteration "
                        "and after every --average-every-th from there (tail weight averaging, as SWA; the last "
                        "weights are unchanged); default: off")
    parser.add_argument("--average-every", type=int, default=100, metavar="N",
                        help="iterations between the averaged weights (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and of every sample (default: 0)")
    parser.add_argument("--workers", type=int, default=0,
                        help="DataLoader worker processes making clips (default: 0, in the training process)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--threads", type=int, help="PyTorch CPU threads (default: PyTorch's choice)")
    parser.add_argument("--channels-last", action="store_true",
                        help="keep convolution tensors in channels-last (NHWC) memory order: about 11%% faster "
                        "steps on this project's CPUs; the same training, rounded differently, so the weights "
                        "differ from a run without it (default: off)")
    parser.add_argument("--no-amp", action="store_true", help="on CUDA: train in fp32 (default: fp16 autocast)")
    parser.add_argument("--log-every", type=int, default=50,
                        help="write a line to OUT/train.log every N iterations (default: 50)")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also write what train.log records (loss, learning rate, seconds per iteration) as "
                        "TensorBoard events to OUT/tensorboard; needs the tensorboard package "
                        "(`tensorboard --logdir OUT` shows them)")
    parser.set_defaults(handler=run_train)
    register_generate(subparsers)


def register_generate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate-data",
        help="write procedural training/test videos with ground-truth masks as a DAVIS-style tree",
        description="Generate videos of textured shapes that move, spin, scale and occlude each other over "
        "textured, panning backgrounds, with look-alike distractors, and their index masks: "
        "OUT/JPEGImages/<seq>/00000.jpg and OUT/Annotations/<seq>/00000.png. The seed fixes every video. "
        "`kmnrt train --stage main --data OUT` trains on it; `kmnrt track` and `kmnrt eval` read it like DAVIS.",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to create (must not exist)")
    parser.add_argument("--videos", type=int, default=50, help="number of videos (default: 50)")
    parser.add_argument("--frames", type=int, default=24, help="frames per video (default: 24)")
    parser.add_argument("--height", type=int, default=144, help="frame height in pixels (default: 144)")
    parser.add_argument("--width", type=int, default=256, help="frame width in pixels (default: 256)")
    parser.add_argument("--max-objects", type=int, default=3, help="labelled objects per video, at most (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the whole tree (default: 0)")
    parser.set_defaults(handler=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from kmnrt.errors import UserInputError
    from kmnrt.training.videos import VideoConfig, write_video_dataset

    if args.seed < 0:
        raise UserInputError(f"--seed must be 0 or more, got {args.seed}")
    config = VideoConfig(height=args.height, width=args.width, frames=args.frames, max_objects=args.max_objects)
    print(write_video_dataset(args.out, args.videos, args.seed, config))
    return 0


def config_from_args(args: argparse.Namespace):  # -> TrainConfig (imported lazily)
    import dataclasses

    from kmnrt.errors import UserInputError
    from kmnrt.training.config import WeightAverageConfig, preset
    from kmnrt.training.loop import STATE_NAME
    from kmnrt.training.run_lock import refuse_if_in_use

    if args.out.exists() and not args.out.is_dir():
        raise UserInputError(f"--out {args.out} is a file; give a folder for the run")
    check_stage_options(args)  # before the values are checked: a misplaced option is the first thing to say
    refuse_if_in_use(args.out)  # a live run's folder: neither --resume nor --force may touch it
    if args.resume is not None and args.resume.is_dir():
        args.resume = args.resume / STATE_NAME  # a run's folder names its state
    config = preset(args.config, args.stage, args.out, iterations=args.iterations, batch=args.batch,
                    size=args.size, short_side=args.short_side, clip_frames=args.clip_frames, lr=args.lr,
                    memory_forget=args.memory_forget, seed=args.seed, data=args.data,
                    init=args.init, resume=args.resume, device=args.device, max_objects=args.max_objects,
                    checkpoint_every=args.checkpoint_every, workers=args.workers, threads=args.threads,
                    channels_last=args.channels_last,
                    log_every=args.log_every, tensorboard=args.tensorboard, amp=not args.no_amp,
                    freeze_batchnorm=not args.train_batchnorm, batchnorm_until=args.train_batchnorm_until,
                    tied_init=args.tied_init, tied_training=args.tied_training,
                    calibrated_init=args.calibrated_init)
    optim = dataclasses.replace(config.optim, poly_power=None if args.constant_lr else config.optim.poly_power,
                                grad_clip=args.grad_clip, hard_pixel_fraction=args.hard_pixels,
                                hard_pixel_ramp=_iteration_pair(args.hard_pixels_ramp, "--hard-pixels-ramp"),
                                read_loss_weight=args.read_loss, dice_loss_weight=args.dice_loss,
                                train_sigma=args.train_sigma, warmup=args.warmup)
    hide = dataclasses.replace(config.hide_and_seek, enabled=not args.no_hide_and_seek,
                               grid=config.hide_and_seek.grid if args.hide_grid is None else args.hide_grid)
    synthetic = config.synthetic
    if args.motion_fraction is not None:
        if not 0.0 <= args.motion_fraction <= 1.0:
            raise UserInputError(f"--motion-fraction must be in [0, 1], got {args.motion_fraction}")
        synthetic = dataclasses.replace(synthetic, motion_fraction=args.motion_fraction)
    skip = config.skip
    if args.skip_every is not None:
        if args.skip_every < 1:
            raise UserInputError(f"--skip-every must be at least 1, got {args.skip_every}")
        skip = dataclasses.replace(skip, every_iterations=args.skip_every)
    if args.max_skip is not None:
        if args.max_skip < skip.start:
            raise UserInputError(f"--max-skip must be at least {skip.start}, got {args.max_skip}")
        skip = dataclasses.replace(skip, end=args.max_skip)
    if args.data is not None and not args.data.is_dir():
        raise UserInputError(f"--data {args.data} is not a folder")
    if args.init is not None and args.resume is not None:
        raise UserInputError("--init and --resume exclude each other: a resumed run continues from its own weights")
    earlier = args.out / STATE_NAME
    other_run = args.resume is not None and earlier.is_file() and earlier.resolve() != args.resume.resolve()
    if (args.resume is None or other_run) and not args.force and earlier.is_file():
        raise UserInputError(f"--out {args.out} already holds {'another' if other_run else 'a'} training run; "
                             f"continue it with --resume {earlier}, or pass --force to start a new one there (its "
                             f"files are replaced)")
    return dataclasses.replace(config, optim=optim, hide_and_seek=hide, synthetic=synthetic, skip=skip,
                               average=WeightAverageConfig(args.average_from, args.average_every))


# Options that shape one stage's clips only, with what they act on: given to the other stage they would be recorded
# in train_config.json and change nothing, so they are refused instead.
STAGE_OPTIONS = {
    "main": {"short_side": "the resizing of video frames", "max_skip": "the max_skip curriculum",
             "skip_every": "the max_skip curriculum"},
    "pretrain": {"hide_grid": "Hide-and-Seek", "no_hide_and_seek": "Hide-and-Seek",
                 "motion_fraction": "the procedural images"},
}


def check_stage_options(args: argparse.Namespace) -> None:
    from kmnrt.errors import UserInputError

    misplaced = [(f"--{name.replace('_', '-')}", acts_on) for stage, options in STAGE_OPTIONS.items()
                 if stage != args.stage for name, acts_on in options.items()
                 if getattr(args, name) is not None and getattr(args, name) is not False]  # 0 is given too
    if misplaced:
        what = "; ".join(f"{flag} sets {acts_on}" for flag, acts_on in misplaced)
        other = "main" if args.stage == "pretrain" else "pretrain"
        raise UserInputError(f"{what} of --stage {other}, not of this --stage {args.stage} run: drop "
                             f"{' '.join(flag for flag, _ in misplaced)}")
    from_random = [flag for flag, given in (("--tied-init", args.tied_init),
                                            ("--calibrated-init", args.calibrated_init)) if given]
    if args.init is not None and from_random:  # recorded in train_config.json, they would change nothing
        raise UserInputError(f"{' and '.join(from_random)} shape{'s' * (len(from_random) == 1)} a random "
                             f"initialisation, and --init gives the weights to start from: drop "
                             f"{' '.join(from_random)}")
    if args.no_hide_and_seek and args.hide_grid is not None:
        raise UserInputError(f"--hide-grid {args.hide_grid} sets Hide-and-Seek's grid, and --no-hide-and-seek turns "
                             f"Hide-and-Seek off: drop one of them")
    if args.stage == "pretrain" and args.data is not None and args.motion_fraction is not None:
        raise UserInputError("--motion-fraction sets the procedural images, and --data gives images of your own: "
                             "drop one of them")


def run_train(args: argparse.Namespace) -> int:
    from kmnrt.training.loop import STATE_NAME, train

    config = config_from_args(args)  # refuses a folder a live run holds, before --force deletes anything there
    resuming_here = args.resume is not None and args.resume.resolve() == (args.out / STATE_NAME).resolve()
    # --force: nothing of the earlier run stays (averaged weights, logs), removed once the new run's weights and
    # data have loaded, so that a typo in --init or --data does not cost the run it was meant to replace
    result = train(config, start_over=args.force and not resuming_here)
    recent = result.losses[-50:]
    print(f"trained iterations {result.start} to {result.iterations} in {result.seconds:.0f} s; mean loss of the "
          f"last {len(recent)}: {sum(recent) / max(len(recent), 1):.4f}", file=sys.stderr)
    print(result.checkpoint)
    if result.averaged is not None:
        print(result.averaged)
    return 0


def _iteration_pair(text: str | None, option: str) -> tuple[int, int] | None:
    """'1000,3500' -> (1000, 3500); None stays None."""
    if text is None:
        return None
    from kmnrt.errors import UserInputError

    try:
        start, end = (int(part) for part in text.split(","))
    except ValueError:
        raise UserInputError(f"{option} {text}: give two iterations START,END, e.g. 1000,3500") from None
    return start, end
