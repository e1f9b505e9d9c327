"""Score trained weights the way a user would see them: the reference tracker over DAVIS sequences, then the
official J&F (:mod:`kmnrt.evaluation`). Used to report the embedded weights (docs/default-model.md).

    python -m kmnrt.training.scoring --data ../shared/data/vos --out /tmp/scores   # the embedded default model
    python -m kmnrt.training.scoring --config small --checkpoint runs/main/model.safetensors --data ... --out ...
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kmnrt.errors import UserInputError
from kmnrt.evaluation.results import EvaluationResult
from kmnrt.model.kmn import KMN
from kmnrt.model.reference import TrackerConfig


def track_and_score(model: KMN, data: str | os.PathLike[str], predictions: str | os.PathLike[str],
                    tracker: TrackerConfig = TrackerConfig(mem_every=5), progress: bool = True) -> EvaluationResult:
    """Track every sequence of ``data`` from its first annotation, write the masks to
    ``predictions/<sequence>/<frame>.png`` and evaluate them against the annotations (J&F)."""
    from tqdm import tqdm

    from kmnrt.data import find_sequences, open_sequence_frames, read_annotation, write_label_png
    from kmnrt.data.palette import without_void
    from kmnrt.evaluation import evaluate_folders
    from kmnrt.model.reference import ReferenceTracker

    sequences = find_sequences(data)
    runner = ReferenceTracker(model, tracker)
    for sequence in sequences:
        source = open_sequence_frames(sequence)
        first_mask = without_void(read_annotation(sequence, sequence.annotation_names[0]))[0]
        folder = Path(predictions) / sequence.name
        folder.mkdir(parents=True, exist_ok=True)
        frames = (frame for _, frame in source)
        results = runner.track(frames, first_mask)
        try:
            for name, result in tqdm(zip(source.names, results), total=len(source), desc=sequence.name,
                                     unit="frame", file=sys.stderr, disable=not progress):
                write_label_png(folder / f"{name}.png", result.labels)
        except UserInputError as error:  # "first mask: ..." alone does not say which of the sequences
            raise UserInputError(f"sequence {sequence.name}: {error}") from None
    return evaluate_folders(data, predictions, progress=False)


def main(argv: list[str] | None = None) -> int:
    from kmnrt.cli import refuse_empty_paths
    from kmnrt.model.checkpoint import choose_read, choose_short_side, load_model
    from kmnrt.model.cli import add_read_arguments, add_short_side_argument, add_weights_arguments
    from kmnrt.model.config import get_config
    from kmnrt.model.embedded import default_checkpoint
    from kmnrt.model.kmn import build_model

    parser = argparse.ArgumentParser(prog="python -m kmnrt.training.scoring", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_weights_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    add_read_arguments(parser)
    add_short_side_argument(parser)
    parser.add_argument("--mem-every", type=int, default=5, help="memory interval (default: 5)")
    parser.add_argument("--data", type=Path, required=True, help="DAVIS-style sequences with annotations")
    parser.add_argument("--out", type=Path, required=True, help="folder for the predicted masks")
    refuse_empty_paths(parser)
    args = parser.parse_args(argv)
    data, out = args.data.resolve(), args.out.resolve()
    if out == data or data in out.parents:  # <seq>/<frame>.png written into Annotations/ replaces the truth
        raise UserInputError(f"--out {args.out} lies inside --data {args.data}: the predicted masks would overwrite "
                             f"its annotations, or be read as sequences; choose a folder outside it")
    if args.out.exists() and not args.out.is_dir():
        raise UserInputError(f"--out {args.out} is a file; give a folder (it is created if missing)")
    config = get_config(args.config)
    checkpoint = args.checkpoint or default_checkpoint(config.name)
    read = choose_read(args.read, args.sigma, checkpoint)
    if checkpoint is None:
        print(f"warning: no checkpoint for config '{config.name}': scoring seeded random weights (seed {args.seed})",
              file=sys.stderr)
        model = build_model(config, read, seed=args.seed)
    else:
        model = load_model(config, checkpoint, read)
    tracker = TrackerConfig(mem_every=args.mem_every, short_side=choose_short_side(args.short_side, checkpoint))
    result = track_and_score(model, args.data, args.out, tracker)
    print(result.format_table())
    result.write_json(args.out / "scores.json")
    return 0


if __name__ == "__main__":
    from kmnrt.errors import exit_status

    raise SystemExit(exit_status(main))
