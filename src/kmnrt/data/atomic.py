"""Atomic file output: readers never see a half-written mask, JSON or image.

Write to a temporary name in the destination folder, then ``os.replace`` it over the destination. The
rename is atomic on one file system, which is why the temporary file must sit in the same folder.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

from kmnrt.errors import KmnrtWarning, UserInputError, a_few


def process_exists(pid: int) -> bool:
    """Whether process ``pid`` still runs on this machine: a folder it claimed (a staging folder, a run's lock) is
    abandoned once it has ended."""
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends without error it replaces ``path``.

    Parent folders are created. On any error the temporary file is removed and ``path`` is left as it
    was. Operating-system errors (no permission, disk full, a folder in the way) become a
    :class:`UserInputError` naming ``path``, since the destination comes from the user.

    Example::

        with atomic_output("out/result.json") as tmp:
            tmp.write_text(text)
    """
    path = Path(path)
    # Not tempfile.mkstemp: it creates the file with mode 0600, which the final file would keep.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        with suppress(OSError):
            tmp.unlink()
        reason = exc.strerror or str(exc)
        raise UserInputError(f"cannot write {path}: {reason}; choose a writable location") from exc
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise


def output_folder(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """Create the folder a command writes into (parents too) and return it; check it first, so that a file in the
    way or a read-only location is one line naming ``option``, before any work is done."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserInputError(f"{option} {path} is a file; give a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(f"{option} {path}: cannot create the folder ({exc.strerror or exc}); choose a "
                             f"writable location") from None
    return path


@contextmanager
def kept_if_written(folder: Path) -> Iterator[None]:
    """For a command that creates the output ``folder`` (:func:`output_folder`) and may fail before writing into
    it (a mask refused at its first frame, a server that never answered): a folder it created and left empty is
    removed again, so that a failed run leaves nothing behind. A folder that existed before is left alone."""
    folder = Path(folder)
    created = [path for path in (folder, *folder.parents) if not path.exists()]  # the folder and new parents
    try:
        yield
    except BaseException:
        for path in created:  # innermost first; a folder with anything in it stops the undoing
            try:
                path.rmdir()
            except OSError:
                break
        raise


def check_output_file(path: str | os.PathLike[str], option: str) -> None:
    """Before any work: ``path`` can be created (no file where a folder of it must be, the nearest existing folder
    writable), so that a mistyped path is one line naming ``option`` rather than an OS error at the end."""
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"{option} {path} is a folder; give a file name")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserInputError(f"{option} {path}: {ancestor} is a file, not a folder; choose another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserInputError(f"{option} {path}: cannot write in {ancestor}; choose a writable location")


def warn_of_earlier_masks(out: Path, written: Collection[str]) -> None:
    """After a run into ``out``: say so when the folder also holds masks this run did not write (a longer earlier
    run's), which ``kmnrt eval`` would score as if they were this run's."""
    earlier = sorted(path.name for path in Path(out).glob("*.png") if path.stem not in written)
    if earlier:
        warnings.warn(f"{out} also holds {len(earlier)} mask(s) this run did not write ({a_few(earlier, 3)}), from an "
                      f"earlier run; remove them before scoring the folder", KmnrtWarning, stacklevel=2)


def refuse_writing_over_inputs(out: str | os.PathLike[str], inputs: Mapping[str, str | os.PathLike[str] | None],
                               written: Collection[str], option: str = "--out") -> None:
    """A command that writes ``<name>.png`` into ``out`` for each name in ``written`` must not replace its own
    input: ``out`` may not be an input folder (frames, masks: overwritten or mixed with them), nor hold an input
    file under a name it writes. ``inputs``: option name -> path. Checked before anything is written."""
    out = Path(out)
    if not out.is_dir():
        return  # a folder still to be created holds nothing
    for name, path in inputs.items():
        if path is None:
            continue
        path = Path(path)
        if path.is_dir() and os.path.samefile(path, out):
            raise UserInputError(f"{option} {out} is the {name} folder: the masks would be written over or among "
                                 f"its files; choose another folder")
        if (path.is_file() and path.suffix.lower() == ".png" and path.stem in written
                and os.path.samefile(path.parent, out)):
            raise UserInputError(f"{option} {out} holds {name} {path.name}, which the masks would overwrite; "
                                 f"choose another folder")
