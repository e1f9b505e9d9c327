"""``kmnrt eval``: score predicted masks against DAVIS ground truth with the official J, F and J&F.

Only argparse is imported here; the evaluation code is imported by the handler, so building the
``kmnrt`` parser stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from kmnrt.errors import UserInputError

if TYPE_CHECKING:
    from kmnrt.evaluation.results import EvaluationResult

DESCRIPTION = """\
Score predicted masks against ground truth with the DAVIS 2017 semi-supervised protocol: J (region
IoU), F (boundary F-measure, tolerance 0.8% of the diagonal) and J&F, as Mean/Recall/Decay per object
and as plain means over all objects. The first and last ground-truth frame of each sequence are not
scored; objects are the ids 1..K of the first ground-truth frame, and predicted id k is scored against
ground-truth id k.

GT_ROOT is a DAVIS tree (JPEGImages/, Annotations/[480p/]<seq>/), one sequence folder (Annotations/*.png),
a folder of sequence folders (each with JPEGImages/ and Annotations/), or a folder of <seq>/ folders of
PNGs. DAVIS-2016 masks (0/255) are read as object 1; GT value 255 in a multi-object mask is void and
counts as background.
PRED_ROOT holds <seq>/<frame>.png for every scored ground-truth frame: indexed (palette) or grayscale
PNGs of object ids, at the ground-truth size.

Run and score in one go: `kmnrt eval --bundle engines/NAME --dataset ROOT` tracks every sequence of ROOT
(it needs the frames, JPEGImages/) from its first annotation with the bundle, then scores the masks; no
PRED_ROOT is needed (--save-masks DIR also writes them as PNGs)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="score predicted masks with the official DAVIS J, F and J&F",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("gt_root", metavar="GT_ROOT", type=Path, nargs="?",
                        help="ground-truth dataset folder (or give it as --dataset)")
    parser.add_argument("pred_root", metavar="PRED_ROOT", type=Path, nargs="?",
                        help="folder of <seq>/<frame>.png predictions (not with --bundle)")
    parser.add_argument("--dataset", metavar="ROOT", type=Path, help="the ground-truth dataset folder (= GT_ROOT)")
    parser.add_argument("--bundle", metavar="DIR", type=Path,
                        help="track the dataset with this engine bundle and score the result (no PRED_ROOT)")
    parser.add_argument("--backend", default="auto",
                        help="with --bundle: auto, torch, onnxruntime, onnxruntime-cuda or tensorrt; aliases "
                        "ort-cpu, ort-cuda, trt (default: auto)")
    parser.add_argument("--mem-every", type=int, default=None,
                        help="with --bundle: memorise every N-th frame (default: the bundle's)")
    parser.add_argument("--save-masks", metavar="DIR", type=Path,
                        help="with --bundle: also write the masks as <seq>/<frame>.png palette PNGs")
    parser.add_argument(
        "--json", dest="json_path", metavar="FILE", type=Path, help="also write the scores (official names) as JSON"
    )
    parser.add_argument(
        "--sequences", metavar="A,B", help="evaluate only these sequences (comma-separated folder names)"
    )
    parser.set_defaults(handler=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from kmnrt.data.davis import find_sequences
    from kmnrt.evaluation.davis import PredictionFolder, evaluate

    if args.dataset is not None and args.gt_root is not None:
        if args.pred_root is not None:
            raise UserInputError("give the ground truth once: as GT_ROOT or as --dataset, not both")
        args.pred_root, args.gt_root = args.gt_root, None  # `eval --dataset ROOT PRED_ROOT`
    if args.json_path is not None and (not args.json_path.name or args.json_path.is_dir()):
        raise UserInputError(f"--json {args.json_path}: give the path of a file to write the scores to")
    gt_root = args.dataset if args.dataset is not None else args.gt_root
    if gt_root is None:
        raise UserInputError("no ground truth given: `kmnrt eval GT_ROOT PRED_ROOT` scores saved masks, "
                             "`kmnrt eval --bundle DIR --dataset ROOT` runs a bundle and scores it")
    if args.bundle is None and (args.save_masks or args.mem_every is not None or args.backend != "auto"):
        raise UserInputError("--backend, --mem-every and --save-masks go with --bundle")
    sequences = find_sequences(gt_root, parse_sequence_names(args.sequences))
    if args.bundle is not None:
        if args.pred_root is not None:
            raise UserInputError(f"--bundle runs the tracker and scores its masks; PRED_ROOT ({args.pred_root}) "
                                 "is not used with it: drop one of the two")
        from kmnrt.data.atomic import output_folder, refuse_writing_over_inputs
        from kmnrt.runtime.dataset import run_dataset
        from kmnrt.runtime.tracker import Tracker

        if args.save_masks is not None:
            for sequence in sequences:  # DIR/<seq>/ must not be a sequence's own ground truth or frames
                refuse_writing_over_inputs(args.save_masks / sequence.name, {
                    f"ground-truth ({sequence.name})": sequence.annotations_dir,
                    f"frames ({sequence.name})": sequence.frames_dir}, (), option=f"--save-masks {args.save_masks}:")
            output_folder(args.save_masks, "--save-masks")
        tracker = Tracker.from_bundle(args.bundle, backend=args.backend, mem_every=args.mem_every)
        print(tracker.runner.selection, file=sys.stderr)
        predictions = run_dataset(tracker, sequences, out=args.save_masks)
    elif args.pred_root is None:
        raise UserInputError("no predictions given: add PRED_ROOT (a folder of <seq>/<frame>.png masks), or "
                             "--bundle DIR to run a bundle on the dataset and score it")
    else:
        predictions = PredictionFolder(args.pred_root)
    result = evaluate(sequences, predictions)
    return report(result, args.json_path)


def parse_sequence_names(text: str | None) -> list[str] | None:
    """``"a, b"`` → ``["a", "b"]``; ``None`` (no option) → ``None``, meaning all sequences."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise UserInputError("--sequences is empty; give comma-separated sequence names, e.g. --sequences a,b")
    return names


def report(result: EvaluationResult, json_path: Path | None = None, stream: TextIO | None = None) -> int:
    """Print the table of ``result`` (stdout by default) and write the JSON if asked; returns exit status 0."""
    print(result.format_table(), file=stream or sys.stdout)
    if json_path is not None:
        result.write_json(json_path)
        print(f"wrote {json_path}", file=sys.stderr)
    return 0
