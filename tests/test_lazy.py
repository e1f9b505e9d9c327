"""Lazy package exports: importing a package is light, its names still resolve, unknown names fail clearly."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
import kmnrt.data, kmnrt.evaluation, kmnrt.runtime
heavy = sorted(name for name in ("numpy", "cv2", "torch", "PIL") if name in sys.modules)
print(",".join(heavy) or "-")
"""


def test_importing_the_packages_loads_no_heavy_library():
    printed = subprocess.run([sys.executable, "-c", PROBE], check=True, capture_output=True, text=True).stdout
    assert printed.strip() == "-"


@pytest.mark.parametrize("package, name, module", [
    ("kmnrt.data", "read_image", "kmnrt.data.frames"),
    ("kmnrt.evaluation", "evaluate", "kmnrt.evaluation.davis"),
    ("kmnrt.runtime", "StepResult", "kmnrt.runtime.state"),
])
def test_an_export_resolves_to_its_defining_module_and_is_listed(package, name, module):
    import importlib

    imported = importlib.import_module(package)
    assert getattr(imported, name) is getattr(importlib.import_module(module), name)
    assert name in dir(imported) and name in imported.__all__


def test_an_unknown_name_is_an_attribute_error_naming_the_package():
    import kmnrt.runtime

    with pytest.raises(AttributeError, match="'kmnrt.runtime' has no attribute 'Tracer'"):
        kmnrt.runtime.Tracer  # noqa: B018
