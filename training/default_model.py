"""The recipe of the embedded default model (``make default-model``): generate data, pre-train, train, score,
install. See docs/default-model.md for the model card.

    python -m kmnrt.training.default_model --out out/default-model --threads 1

Steps, each skipped when its output already exists (a stage cut off part-way is resumed from its
``train_state.pt``), so re-running the command finishes an interrupted recipe:

1. ``kmnrt generate-data``: training videos (seed 1) and held-out videos (seed 2) in DAVIS layout;
2. ``kmnrt train --stage pretrain``: procedural static and moving clips with Hide-and-Seek;
3. ``kmnrt train --stage main`` on the training videos, starting from stage 2's weights;
4. track the held-out videos (and the real sequences of ``--real``, when given) with the reference tracker and
   score them with the DAVIS J&F; ``scores.json`` in ``--out``;
5. copy the weights to ``model/weights/`` (``--install``), where :mod:`kmnrt.model.embedded` finds them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

from kmnrt.training.config import TrainConfig, preset

MODEL = "tiny"
CROP = 96                # training crops; a stride-16 feature map of 6x6
HIDE_GRID = CROP // 16   # Hide-and-Seek cells of one feature cell, as the paper's 24x24 grid at 384x384
PRETRAIN_ITERATIONS = 600
MAIN_ITERATIONS = 5000
PRETRAIN_LR = 1e-3
MAIN_LR = 1e-3
BATCH = 4
TRAIN_VIDEOS, TRAIN_SEED = 60, 1
HELDOUT_VIDEOS, HELDOUT_SEED = 10, 2


def stage_configs(out: Path, threads: int | None, device: str) -> tuple[TrainConfig, TrainConfig]:
    """The two stages exactly as ``kmnrt train`` runs them (see docs/default-model.md for the command lines)."""
    common = {"size": CROP, "batch": BATCH, "seed": 0, "threads": threads, "device": device,
              "checkpoint_every": 100, "log_every": 25}
    pretrain = preset(MODEL, "pretrain", out / "pretrain", iterations=PRETRAIN_ITERATIONS, lr=PRETRAIN_LR, **common)
    pretrain = dataclasses.replace(pretrain, hide_and_seek=dataclasses.replace(pretrain.hide_and_seek, grid=HIDE_GRID))
    main = preset(MODEL, "main", out / "main", iterations=MAIN_ITERATIONS, lr=MAIN_LR, data=out / "videos-train",
                  init=out / "pretrain" / "model.safetensors", **common)
    return pretrain, main


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


def score(checkpoint: Path, data: Path, predictions: Path) -> dict:
    """J&F of the reference tracker (KMN read, sigma 7, mem_every 5) with these weights over ``data``."""
    from kmnrt.model.checkpoint import load_model
    from kmnrt.model.config import get_config
    from kmnrt.training.scoring import track_and_score

    shutil.rmtree(predictions, ignore_errors=True)
    result = track_and_score(load_model(get_config(MODEL), checkpoint), data, predictions, progress=False)
    result.write_json(predictions / "scores.json")
    print(result.format_table(), file=sys.stderr)
    return json.loads((predictions / "scores.json").read_text())


def main(argv: list[str] | None = None) -> int:
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
                        "model/weights/tiny_synthetic.safetensors)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    out: Path = args.out
    for name, videos, seed in (("videos-train", TRAIN_VIDEOS, TRAIN_SEED), ("videos-heldout", HELDOUT_VIDEOS,
                                                                          HELDOUT_SEED)):
        if not (out / name).is_dir():
            write_video_dataset(out / name, videos, seed)
    pretrain, main_stage = stage_configs(out, args.threads, args.device)
    run_stage(pretrain)
    checkpoint = run_stage(main_stage)
    summary = {"model": MODEL, "checkpoint": str(checkpoint),
               "heldout": score(checkpoint, out / "videos-heldout", out / "predictions-heldout")["global"]}
    if args.real is not None:
        summary["real"] = score(checkpoint, args.real, out / "predictions-real")["global"]
    if args.install is not None:
        args.install.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.install.with_name(f".{args.install.name}.tmp")
        shutil.copyfile(checkpoint, tmp)
        os.replace(tmp, args.install)
        summary["installed"] = str(args.install)
    summary["seconds_this_run"] = round(time.perf_counter() - started)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
