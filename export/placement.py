"""Where a bundle lands: ``--out`` is replaced only when it is a bundle (or empty), the new bundle is renamed into
place whole, and staging folders that killed exports left behind are removed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from kmnrt.data.atomic import process_exists
from kmnrt.errors import UserInputError, a_few


def not_a_bundle(folder: Path) -> str | None:
    """Why ``folder`` is not something --force may replace (``None``: an empty folder or a kmnrt bundle with
    nothing in it but its own files): a ``manifest.json`` alone proves nothing, many tools write one."""
    if not folder.is_dir():
        return "a file"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not entries:
        return None
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        listed = set(manifest["files"]) if str(manifest["format"]).startswith("kmnrt-bundle-") else None
    except (OSError, ValueError, KeyError, TypeError):
        listed = None
    if listed is None:
        return "no kmnrt manifest.json"
    others = [name for name in entries if name != "manifest.json" and name not in listed]
    return f"it also holds {a_few(others, 3)}" if others else None


def remove_abandoned_staging(out: Path) -> None:
    """Staging folders of exports that were killed (SIGKILL, the out-of-memory killer) and could not clean up:
    ``.NAME.partial-PID`` and ``.NAME.replaced-PID`` whose process is gone."""
    for folder in out.parent.glob(f".{out.name}.*-*"):
        kind, _, pid = folder.name[len(out.name) + 2:].partition("-")
        if kind in ("partial", "replaced") and pid.isdigit() and not process_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def move_into_place(staging: Path, out: Path, force: bool) -> None:
    if not out.exists():
        os.replace(staging, out)
        return
    if not force:  # it appeared while this export ran: another export to the same --out finished first
        raise UserInputError(f"{out} was written by another process while this export ran; export again with "
                             f"--force to replace it, or choose another --out")
    retired = out.parent / f".{out.name}.replaced-{os.getpid()}"
    os.replace(out, retired)
    try:
        os.replace(staging, out)
    except OSError:
        os.replace(retired, out)
        raise
    shutil.rmtree(retired, ignore_errors=True)
