"""Exceptions that reach the user as one clear message instead of a traceback."""

from __future__ import annotations

import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager


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


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a scheduler), raised where the command is, so that what it was writing is
    cleaned up exactly as after Ctrl-C."""


def exit_status(main: Callable[[], int]) -> int:
    """Run a command's ``main`` as the ``kmnrt`` command does: a :class:`KmnrtError` becomes one ``error:`` line on
    stderr and its exit status, Ctrl-C status 130 and SIGTERM 143 (both after the command's clean-up), a
    :class:`KmnrtWarning` one ``warning:`` line. For modules run with ``python -m``."""
    received: list[int] = []
    try:
        with warnings.catch_warnings(), _signals_raise(received):
            warnings.showwarning = _show_warning(warnings.showwarning)
            return _unwrapping_interruptions(main, received)
    except KmnrtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`kmnrt inspect | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        return 141
    except OSError as exc:  # a path of the user's that cannot be read or written where the commands do not ask
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return UserInputError.exit_code


@contextmanager
def _signals_raise(received: list[int]) -> Iterator[None]:
    """While the command runs, SIGTERM raises :class:`Terminated` (Python's default would end the process at once,
    leaving temporary files and half-built bundles behind) and Ctrl-C ``KeyboardInterrupt`` as usual (unless it is
    ignored, as in background jobs); both are noted in ``received``. Only the main thread can set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum, frame):
        received.append(signum)
        raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, on_signal)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, on_signal)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _unwrapping_interruptions(main: Callable[[], int], received: list[int]) -> int:
    """``main()``; an exception after a signal is the interruption a library wrapped into an error of its own
    (torch.onnx.export turns a KeyboardInterrupt into "Failed to export the model ... submit a PR to PyTorch"),
    and is reported as the interruption it is."""
    try:
        return main()
    except Exception:
        if not received:
            raise
        raise (Terminated() if received[-1] == signal.SIGTERM else KeyboardInterrupt()) from None


def a_few(items: Iterable[object], most: int) -> str:
    """The first ``most`` items for a message, ``"a, b, c, ..."`` when there are more."""
    items = [str(item) for item in items]
    return ", ".join(items[:most]) + (", ..." if len(items) > most else "")


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
