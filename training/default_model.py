"""The recipe of the embedded default model (``make default-model``): generate data, pre-train, train, score,
install. See docs/default-model.md for the model card.

    python -m kmnrt.training.default_model --out out/default-model --threads 1

Steps, each skipped when its output already exists (a stage cut off part-way is resumed from its
``train_state.pt``), so re-running the command finishes an interrupted recipe:

1. ``kmnrt generate-data``: training videos (seed 1) and held-out videos (seed 2) in DAVIS layout;
2. ``kmnrt train --stage pretrain`` (only with ``--pretrain-iterations`` > 0; the shipped model has none);
3. ``kmnrt train --stage main`` on the training videos from random weights, with the from-scratch measures
   (``--tied-training --calibrated-init --read-loss 1 --grad-clip 1``, see docs/training.md);
4. a second main-training stage from stage 3's weights when ``FINETUNE_ITERATIONS`` > 0;
5. choose the KMN read's sigma and the short side to track at on the validation videos (seed 3): the J&F of
   each pair of ``SIGMAS`` x :func:`track_short_sides`, best kept;
6. track the held-out videos (and the real sequences of ``--real``, when given) with the reference tracker at
   that sigma and short side, and score them with the DAVIS J&F; ``summary.json`` in ``--out``;
7. write the weights to ``model/weights/`` (``--install``), where :mod:`kmnrt.model.embedded` finds them, with
   the chosen read and short side recorded in the checkpoint (what track/export use unless told otherwise).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

from kmnrt.training.config import TrainConfig, preset

MODEL = "small"          # model/config.py: widths 16/32/64, key 32, value 64, decoder 32 (415 k parameters)
CROP = 160               # training crops of 160x160 ...
SHORT_SIDE = 216         # ... out of frames resized to a short side of 216-281 (1.5-1.95x the 144 of the videos)
PRETRAIN_ITERATIONS = 0  # 0: no pre-training stage (not tried with the from-scratch measures; see the model card)
MAIN_ITERATIONS = 15000  # one thread at about 5 iterations/s on this machine: 51 min
PRETRAIN_LR = 1e-3
MAIN_LR = 1e-3
FINETUNE_ITERATIONS = 0  # a second main stage from the first's weights (lr restarted lower): measured, no gain
FINETUNE_LR = 3e-4
READ_LOSS = 1.0          # weight of the auxiliary attention loss (kmnrt.training.step.read_mask_loss)
GRAD_CLIP = 1.0          # global gradient norm; without it a run from random weights can blow up in its first steps
HARD_PIXELS = 0.25       # bootstrapped cross-entropy over the hardest quarter of the pixels (small objects, edges)
BATCH = 4
SEED = 1                 # of seeds 0 and 1 (trained side by side), validation chose 1: 0.826 against 0.772
TRAIN_VIDEOS, TRAIN_SEED = 300, 1
HELDOUT_VIDEOS, HELDOUT_SEED = 10, 2
VALIDATION_VIDEOS, VALIDATION_SEED = 10, 3
# KMN's sigma is in feature cells: the paper's 7 was set for 480p frames (a 30x54 key grid); the generated videos
# have a 9x16 grid, where 7 cells is almost no kernel at all. Chosen on the validation videos, never the held-out.
SIGMAS = (7.0, 4.0, 2.0, 1.0)
# Training resizes frames to SHORT_SIDE x 1-1.3 before cropping (kmnrt.training.augment.random_resize_crop): the
# short side to track at is chosen on the validation videos within that range, with the sigma.
MAX_ZOOM = 1.3


def track_short_sides(train_short_side: int | None) -> tuple[int | None, ...]:
    """The short sides to try when tracking weights trained at ``train_short_side``: the multiples of 16 in the
    range training saw (a bundle of that height then tracks exactly as the reference does). None: weights trained
    at the crop's own scale track frames at their own size."""
    from kmnrt.framing import round_up

    if train_short_side is None:
        return (None,)
    first = round_up(train_short_side)
    return tuple(range(first, max(first, int(train_short_side * MAX_ZOOM)) + 1, 16))


def with_losses(config: TrainConfig) -> TrainConfig:
    """The recipe's loss and optimiser settings on top of a preset (the same for every stage)."""
    optim = dataclasses.replace(config.optim, read_loss_weight=READ_LOSS, grad_clip=GRAD_CLIP,
                                hard_pixel_fraction=HARD_PIXELS)
    return dataclasses.replace(config, optim=optim)


def _common_options(crop: int, threads: int | None, device: str) -> dict:
    """The ``kmnrt train`` options every stage of the recipe shares."""
    return {"size": crop, "batch": BATCH, "seed": SEED, "threads": threads, "device": device,
            "checkpoint_every": 100, "log_every": 25, "tied_training": True}


def stage_configs(out: Path, threads: int | None, device: str, model: str = MODEL, crop: int = CROP,
                  main_iterations: int = MAIN_ITERATIONS, pretrain_iterations: int = PRETRAIN_ITERATIONS,
                  short_side: int | None = SHORT_SIDE) -> tuple[TrainConfig | None, TrainConfig]:
    """The stages exactly as ``kmnrt train`` runs them (see docs/default-model.md for the command lines); the
    pre-training stage is None when it has 0 iterations. From random weights, both start with the memory trunk
    and key head tied to the query side's (``--tied-training``) and a calibrated initialisation."""
    common = _common_options(crop, threads, device)
    pretrain = None
    if pretrain_iterations > 0:
        pretrain = preset(model, "pretrain", out / "pretrain", iterations=pretrain_iterations, lr=PRETRAIN_LR,
                          calibrated_init=True, **common)
        pretrain = dataclasses.replace(with_losses(pretrain), hide_and_seek=dataclasses.replace(
            pretrain.hide_and_seek, grid=crop // 16))
    main = preset(model, "main", out / "main", iterations=main_iterations, lr=MAIN_LR, data=out / "videos-train",
                  short_side=short_side,
                  init=out / "pretrain" / "model.safetensors" if pretrain is not None else None,
                  calibrated_init=pretrain is None, **common)
    return pretrain, with_losses(main)


def finetune_config(out: Path, threads: int | None, device: str, model: str = MODEL, crop: int = CROP,
                    iterations: int = FINETUNE_ITERATIONS,
                    short_side: int | None = SHORT_SIDE) -> TrainConfig | None:
    """The second main-training stage (None when it has 0 iterations): the same videos and losses from the first
    stage's weights, the learning rate restarted at ``FINETUNE_LR`` with its own poly decay and skip curriculum,
    and another seed (SEED + 1) so that it draws clips the first stage did not see."""
    if iterations <= 0:
        return None
    config = preset(model, "main", out / "finetune", iterations=iterations, lr=FINETUNE_LR,
                    short_side=short_side, data=out / "videos-train", init=out / "main" / "model.safetensors",
                    **{**_common_options(crop, threads, device), "seed": SEED + 1})
    return with_losses(config)


def run_stage(config: TrainConfig) -> Path:
    """Train one stage unless it is complete; resume it when it was cut off after a checkpoint."""
    import torch

    from kmnrt.training.loop import CHECKPOINT_NAME, STATE_NAME, train

    state_path = Path(config.out) / STATE_NAME
    if state_path.is_file():
        done = int(torch.load(state_path, map_location="cpu", weights_only=True)["iteration"])
        if done >= config.iterations:
            print(f"{config.stage}: complete ({done} iterations), skipped", file=sys.stderr)
            return Path(config.out) / CHECKPOINT_NAME
        config = dataclasses.replace(config, resume=state_path, init=None)
    return train(config).checkpoint


def score(checkpoint: Path, data: Path, predictions: Path, model: str = MODEL, sigma: float = 7.0,
          short_side: int | None = None) -> dict:
    """J&F of the reference tracker (KMN read with ``sigma``, mem_every 5, frames resized to ``short_side``) with
    these weights over ``data``."""
    from kmnrt.model.checkpoint import load_model
    from kmnrt.model.config import ReadConfig, get_config
    from kmnrt.model.reference import TrackerConfig
    from kmnrt.training.scoring import track_and_score

    shutil.rmtree(predictions, ignore_errors=True)
    network = load_model(get_config(model), checkpoint, ReadConfig("kmn", sigma))
    result = track_and_score(network, data, predictions, TrackerConfig(mem_every=5, short_side=short_side),
                             progress=False)
    result.write_json(predictions / "scores.json")
    print(result.format_table(), file=sys.stderr)
    return json.loads((predictions / "scores.json").read_text())


def choose_inference(checkpoint: Path, validation: Path, predictions: Path, model: str,
                     short_sides: tuple[int | None, ...]) -> tuple[float, int | None, dict]:
    """-> (sigma, short side): the pair of ``SIGMAS`` x ``short_sides`` with the best validation J&F (ties: the
    first, i.e. the larger sigma and the smaller side), and {"side/sigma": J&F} of every pair."""
    scores = {(sigma, side): score(checkpoint, validation, predictions / f"side-{side}-sigma-{sigma:g}", model,
                                   sigma, side)["global"]["J&F-Mean"]
              for side in short_sides for sigma in SIGMAS}
    sigma, side = max(scores, key=lambda pair: scores[pair])
    return sigma, side, {f"{side}/{sigma:g}": round(value, 4) for (sigma, side), value in scores.items()}


def install(checkpoint: Path, target: Path, model: str, sigma: float, short_side: int | None) -> None:
    """Write the weights to ``target`` (atomically) with their recommended read and tracking scale in the
    metadata."""
    from kmnrt.model.checkpoint import load_model, save_checkpoint
    from kmnrt.model.config import ReadConfig, get_config

    read = ReadConfig("kmn", sigma)
    save_checkpoint(load_model(get_config(model), checkpoint, read), target, recommended=read,
                    short_side=short_side)


def check_install_target(path: Path, config: str) -> None:
    """Refuse to overwrite another config's embedded weights (e.g. ``--install .../tiny_synthetic.safetensors``
    with a ``small`` model): :mod:`kmnrt.model.embedded` would hand them to the wrong network."""
    from kmnrt.errors import UserInputError
    from kmnrt.model.embedded import EMBEDDED, WEIGHTS_DIR

    owners = [name for name, file in EMBEDDED.items() if file == path.name and name != config]
    if owners:
        wanted = WEIGHTS_DIR / EMBEDDED[config] if config in EMBEDDED else None
        raise UserInputError(f"--install {path} holds the embedded '{owners[0]}' weights, but this recipe trains "
                             f"'{config}'" + (f": install to {wanted}" if wanted else ""))


def main(argv: list[str] | None = None) -> int:
    from kmnrt.errors import UserInputError
    from kmnrt.training.videos import write_video_dataset

    parser = argparse.ArgumentParser(prog="python -m kmnrt.training.default_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/default-model"), help="working folder")
    parser.add_argument("--threads", type=int, default=1,
                        help="PyTorch CPU threads (default: 1; on a loaded machine two threads stall at every "
                        "barrier waiting for a descheduled partner)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--real", type=Path, help="also score these real DAVIS-style sequences (not trained on)")
    parser.add_argument("--install", type=Path, help="copy the final weights here (e.g. "
                        "model/weights/small_synthetic.safetensors)")
    parser.add_argument("--config", default=MODEL, help=f"model config (default: {MODEL}; others for experiments)")
    parser.add_argument("--size", type=int, default=CROP, help=f"training crop (default: {CROP})")
    parser.add_argument("--short-side", type=int, default=SHORT_SIDE,
                        help=f"train on frames resized to this short side (x 1-1.3; default: {SHORT_SIDE}) and "
                        "choose the side to track at in that range; 0: at the crop's scale, tracking frames at "
                        "their own size")
    parser.add_argument("--iterations", type=int, default=MAIN_ITERATIONS,
                        help=f"main-training iterations (default: {MAIN_ITERATIONS})")
    parser.add_argument("--pretrain-iterations", type=int, default=PRETRAIN_ITERATIONS,
                        help=f"pre-training iterations, 0 = no pre-training (default: {PRETRAIN_ITERATIONS})")
    parser.add_argument("--finetune-iterations", type=int, default=FINETUNE_ITERATIONS,
                        help=f"second main-training stage, 0 = none (default: {FINETUNE_ITERATIONS})")
    parser.add_argument("--videos", type=Path, help="use this folder's videos-train/, videos-validation/ and "
                        "videos-heldout/ instead of generating them under --out")
    args = parser.parse_args(argv)

    if args.install is not None:
        check_install_target(args.install, args.config)  # before the hour of training, not after
    started = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for name, videos, seed in (("videos-train", TRAIN_VIDEOS, TRAIN_SEED),
                               ("videos-validation", VALIDATION_VIDEOS, VALIDATION_SEED),
                               ("videos-heldout", HELDOUT_VIDEOS, HELDOUT_SEED)):
        if args.videos is not None:
            if not (args.videos / name).is_dir():
                raise UserInputError(f"--videos {args.videos} has no {name}/: make it with `kmnrt generate-data "
                                     f"--out {args.videos / name} --videos {videos} --seed {seed}`")
            if not (out / name).exists():
                (out / name).symlink_to((args.videos / name).resolve(), target_is_directory=True)
        elif not (out / name).is_dir():
            write_video_dataset(out / name, videos, seed)
    short_side = args.short_side or None
    pretrain, main_stage = stage_configs(out, args.threads, args.device, args.config, args.size, args.iterations,
                                         args.pretrain_iterations, short_side)
    if pretrain is not None:
        run_stage(pretrain)
    checkpoint = run_stage(main_stage)
    finetune = finetune_config(out, args.threads, args.device, args.config, args.size, args.finetune_iterations,
                               short_side)
    if finetune is not None:
        checkpoint = run_stage(finetune)
    sigma, track_side, sweep = choose_inference(checkpoint, out / "videos-validation",
                                                out / "predictions-validation", args.config,
                                                track_short_sides(short_side))
    summary = {"model": args.config, "checkpoint": str(checkpoint), "train_short_side": short_side,
               "sigma": sigma, "short_side": track_side, "validation_by_side_and_sigma": sweep,
               "heldout": score(checkpoint, out / "videos-heldout", out / "predictions-heldout", args.config,
                                sigma, track_side)["global"]}
    if args.real is not None:
        summary["real"] = score(checkpoint, args.real, out / "predictions-real", args.config, sigma,
                                track_side)["global"]
    if args.install is not None:
        install(checkpoint, args.install, args.config, sigma, track_side)
        summary["installed"] = str(args.install)
    summary["seconds_this_run"] = round(time.perf_counter() - started)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    from kmnrt.errors import exit_status

    raise SystemExit(exit_status(main))
