"""The ``kmnrt`` command: one entry point, one subcommand per capability.

Each subcommand lives next to the code it drives and exposes ``register(subparsers)``; the module is imported
only to build the parser (argparse only), and heavy libraries are imported inside the handlers, so
``kmnrt --help`` stays fast. User errors (:class:`kmnrt.errors.KmnrtError`) end as one line on stderr and a
non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from kmnrt import __version__
from kmnrt.errors import exit_status

# (module, short help) in the order `kmnrt --help` lists them.
SUBCOMMANDS = (
    "kmnrt.model.cli",        # track
    "kmnrt.evaluation.cli",   # eval
    "kmnrt.export.cli",       # export, inspect
    "kmnrt.runtime.cli",      # run
    "kmnrt.training.cli",     # train
    "kmnrt.benchmarks.cli",   # bench
    "kmnrt.service.cli",      # serve, client-run
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kmnrt",
        description="KMN video object segmentation: track with the PyTorch reference, export ONNX/TensorRT "
        "bundles, run them, and score results with the official DAVIS J&F.",
        epilog="Run `kmnrt COMMAND --help` for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"kmnrt {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a subpackage under construction must not break the others
            if exc.name == module_name:
                continue
            raise
        module.register(subparsers)
    for command in subparsers.choices.values():
        command.set_defaults(command_parser=command)
        refuse_empty_paths(command)
    return parser


def refuse_empty_paths(parser: argparse.ArgumentParser) -> None:
    """Make every path argument of ``parser`` refuse an empty value: ``Path("")`` is the current folder, so
    ``--out "$UNSET"`` would otherwise write a run's files wherever the command was started."""
    for action in parser._actions:
        if action.type is Path:
            action.type = _path


def _path(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a file or folder name")
    return Path(text)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would report them under the top-level usage, which lists no command's options
        refuse_unknown(getattr(args, "command_parser", parser), unknown)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    return exit_status(lambda: int(args.handler(args) or 0))


def refuse_unknown(parser: argparse.ArgumentParser, unknown: list[str]) -> None:
    """Exit (status 2) with ``parser``'s usage, naming the arguments it does not take and, for a mistyped
    option, the closest ones it does."""
    import difflib

    # compared without their dashes, which every option shares ("--threads" would otherwise match "--read")
    known = {flag.lstrip("-"): flag for action in parser._actions for flag in action.option_strings}
    hints = []
    for word in unknown:
        name = word.split("=")[0].lstrip("-")
        close = difflib.get_close_matches(name, known, n=2, cutoff=0.75) if word.startswith("-") and name else []
        if close:
            hints.append(f"{word}: did you mean {' or '.join(known[c] for c in close)}?")
    parser.error(f"unrecognized arguments: {' '.join(unknown)}" + ("; " + "; ".join(hints) if hints else ""))


if __name__ == "__main__":
    raise SystemExit(main())
