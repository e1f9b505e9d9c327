"""The GPU-run scripts (benchmarks/gpu/, docs/benchmarks.md#gpu-runs): they parse, and the device check refuses a
missing or damaged piece with a message saying what to do, before it installs anything."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu"


@pytest.mark.parametrize("script", ["stage.sh", "device_check.sh"])
def test_the_scripts_parse(script):
    subprocess.run(["bash", "-n", str(SCRIPTS / script)], check=True)


def run_install(tmp_path: Path, carry: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPU_CARRY": str(carry), "GPU_SITE": str(tmp_path / "site"), "OUT": str(tmp_path / "out"),
           "STEPS": "install"}
    return subprocess.run(["bash", str(SCRIPTS / "device_check.sh")], env=env, capture_output=True, text=True,
                          timeout=60)


def write_pieces(carry: Path, pieces: dict[str, bytes]) -> None:
    """Pieces as stage.sh lays them out, with their SHA256SUMS in the last part."""
    lines = []
    for part, data in pieces.items():
        (carry / part).mkdir(parents=True)
        (carry / part / "piece").write_bytes(data)
        lines.append(f"{hashlib.sha256(data).hexdigest()}  {part}/piece\n")
    (carry / list(pieces)[-1] / "SHA256SUMS").write_text("".join(lines))


def test_device_check_wants_every_piece_carried(tmp_path):
    write_pieces(tmp_path / "carry", {"part-1": b"first", "part-2": b"second"})
    (tmp_path / "carry" / "part-1" / "piece").unlink()  # the first call's piece never arrived
    result = run_install(tmp_path, tmp_path / "carry")
    assert result.returncode == 1
    assert "a piece is missing or damaged: carry it again" in result.stdout
    assert "install: FAILED" in result.stdout
    assert not (tmp_path / "site" / ".installed").exists()


def test_device_check_refuses_a_damaged_piece(tmp_path):
    write_pieces(tmp_path / "carry", {"part-1": b"first", "part-2": b"second"})
    (tmp_path / "carry" / "part-2" / "piece").write_bytes(b"secomd")
    result = run_install(tmp_path, tmp_path / "carry")
    assert result.returncode == 1
    assert "part-2/piece: FAILED" in result.stdout
    assert not (tmp_path / "site" / "packages").exists()


def test_device_check_says_to_stage_first(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_install(tmp_path, tmp_path / "empty")
    assert result.returncode == 1
    assert "carry every piece first (bash benchmarks/gpu/stage.sh)" in result.stdout
