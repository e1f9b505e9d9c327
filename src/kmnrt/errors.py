"""Exceptions that reach the user as one clear message instead of a traceback."""

from __future__ import annotations

import os
import sys
import warnings
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


class KmnrtWarning(UserWarning):
    """Something the user should know that does not stop the work (the CLI prints it as ``warning: <message>``)."""


def exit_status(main: Callable[[], int]) -> int:
    """Run a command's ``main`` as the ``kmnrt`` command does: a :class:`KmnrtError` becomes one ``error:`` line on
    stderr and its exit status, an interrupt status 130, a :class:`KmnrtWarning` one ``warning:`` line. For modules
    run with ``python -m``."""
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning(warnings.showwarning)
            return main()
    except KmnrtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`kmnrt inspect | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        return 141
    except OSError as exc:  # a path of the user's that cannot be read or written where the commands do not ask
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return UserInputError.exit_code


def describe_os_error(exc: OSError) -> str:
    """``Permission denied: out/run (check the path and its permissions)``: what failed, on which path."""
    paths = " -> ".join(str(name) for name in (exc.filename, exc.filename2) if name is not None)
    reason = exc.strerror or str(exc)
    return f"{reason}: {paths} (check the path and its permissions)" if paths else reason


def _show_warning(show_others: Callable) -> Callable:
    def show(message, category, filename, lineno, file=None, line=None):  # warnings.showwarning's signature
        if issubclass(category, KmnrtWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:  # other libraries' warnings keep Python's format, with the line that raised them
            show_others(message, category, filename, lineno, file, line)
    return show
