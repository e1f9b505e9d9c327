"""One training run per output folder at a time.

Two runs writing one ``--out`` would interleave their checkpoints, states and logs, and a ``--force`` start would
delete the files of a run still going. While it trains, a run holds ``LOCK_NAME`` in its folder, naming its
process and host; a lock whose process has ended (a killed run) is taken over.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from kmnrt.data.atomic import process_exists
from kmnrt.errors import UserInputError

LOCK_NAME = ".train.lock"


def holder(out: Path) -> str | None:
    """'process P on host H' of the live run holding ``out``, or None (no lock, or its process has ended)."""
    try:
        pid_text, host = (out / LOCK_NAME).read_text().split(maxsplit=1)
        pid = int(pid_text)
    except (OSError, ValueError):  # no lock, or one cut short while being written: not a live run's
        return None
    host = host.strip()
    if host == socket.gethostname() and not process_exists(pid):
        return None
    return f"process {pid} on host {host}"


def refuse_if_in_use(out: Path) -> None:
    running = holder(out)
    if running is not None:
        raise UserInputError(f"--out {out} belongs to a training run still going ({running}); wait for it to end, "
                             f"or choose another --out (if no such run exists, delete {out / LOCK_NAME})")


@contextmanager
def hold(out: Path) -> Iterator[None]:
    """Hold ``out`` for this process while the block runs; refused while another live run holds it."""
    lock = out / LOCK_NAME
    mine = f"{os.getpid()} {socket.gethostname()}\n"
    for _ in range(2):  # a second try after removing a dead run's lock
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            refuse_if_in_use(out)
            lock.unlink(missing_ok=True)  # its run has ended
            continue
        with os.fdopen(descriptor, "w") as file:
            file.write(mine)
        break
    else:
        refuse_if_in_use(out)  # another run took it between our two tries
        raise UserInputError(f"--out {out}: could not take {lock}; try again")
    try:
        yield
    finally:
        if lock.is_file() and lock.read_text() == mine:
            lock.unlink()
