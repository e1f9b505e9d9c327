"""The ``kmnrt`` command: one entry point, one subcommand per capability.

Each subcommand lives next to the code it drives and exposes ``register(subparsers)``; the module is imported
only to build the parser (argparse only), and heavy libraries are imported inside the handlers, so
``kmnrt --help`` stays fast. User errors (:class:`kmnrt.errors.KmnrtError`) end as one line on stderr and a
non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib

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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    return exit_status(lambda: int(args.handler(args) or 0))


if __name__ == "__main__":
    raise SystemExit(main())
