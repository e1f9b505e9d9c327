"""Installed versions of the packages a bundle or a benchmark result depends on, for their records."""

from __future__ import annotations

import sys
from importlib import metadata


def package_versions(packages: tuple[str, ...]) -> dict[str, str | None]:
    """{"python": ..., package: version or None when it is not installed} for each distribution name."""
    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions
