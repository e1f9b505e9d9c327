"""Exceptions that reach the user as one clear message instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable


class KmnrtError(Exception):
    """Base class of the errors the CLI reports as ``error: <message>`` with a non-zero exit status."""

    exit_code = 2


class UserInputError(KmnrtError):
    """Bad input from the user: a file, frame, field or option. The message names it and says what to do."""


class CheckpointError(UserInputError):
    """A checkpoint that does not fit the model (missing/unexpected keys, shape conflicts, wrong format)."""


class BundleError(UserInputError):
    """An engine bundle that is missing, incomplete, tampered with or built for another machine."""


class VerificationError(KmnrtError):
    """An exported graph or backend disagrees with the PyTorch model beyond its tolerance."""

    exit_code = 3


def exit_status(main: Callable[[], int]) -> int:
    """Run a command's ``main`` as the ``kmnrt`` command does: a :class:`KmnrtError` becomes one ``error:`` line on
    stderr and its exit status, an interrupt status 130. For modules run with ``python -m``."""
    try:
        return main()
    except KmnrtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
