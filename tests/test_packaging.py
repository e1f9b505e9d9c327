"""The wheel installs exactly one top-level package, `kmnrt`, with every subpackage mapped from its folder."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out)], check=True)
    (path,) = out.glob("kmn_rt-*.whl")
    return path


def test_only_kmnrt_is_installed_into_site_packages(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"kmnrt"}
    (top_level_txt,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    assert zipfile.ZipFile(wheel).read(top_level_txt).decode().split() == ["kmnrt"]


def test_every_folder_lands_under_kmnrt(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("kmnrt/cli.py", "kmnrt/model/kmn.py", "kmnrt/export/graphs.py", "kmnrt/runtime/__init__.py",
                   "kmnrt/training/__init__.py", "kmnrt/benchmarks/__init__.py", "kmnrt/data/__init__.py",
                   "kmnrt/evaluation/__init__.py"):
        assert module in names, module
    assert not any(n.startswith(("tests/", "engines/", "kmnrt/tests")) for n in names)


def test_console_script_is_kmnrt(wheel):
    (entry_points,) = [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "kmnrt = kmnrt.cli:main" in text


def test_every_python_folder_is_listed_as_a_package():
    """A subfolder with Python files but missing from pyproject's package list would silently not ship."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    roots = {pkg: REPO / folder for pkg, folder in config["package-dir"].items()}
    found = set()
    for pkg, folder in roots.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder)
            found.add(".".join([pkg, *rel.parts]) if rel.parts else pkg)
    assert found == listed
