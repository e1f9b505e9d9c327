"""`kmnrt export` and `kmnrt inspect` from the command line: the summary, and clean refusals of bad input."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from kmnrt.cli import main


def test_export_prints_a_summary_table(verified_tiny_export):
    bundle, stdout = verified_tiny_export
    lines = stdout.splitlines()
    assert lines[0].split() == ["graph", "nodes", "size", "export", "parity", "max|err|", "/", "tolerance",
                                "verify", "TRT", "ops"]
    rows = {line.split()[0]: line for line in lines[2:6]}
    assert set(rows) == {"query_encoder", "memory_read", "decoder", "memory_encoder"}
    assert all(" ok " in row and row.rstrip().endswith("ok") for row in rows.values())
    assert lines[-1].startswith(f"bundle written to {bundle}")


def test_inspect_shows_manifest_io_and_audit(verified_tiny_export, capsys):
    bundle, _ = verified_tiny_export
    assert main(["inspect", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "all 6 files match their sha256" in out
    assert "input       64x112; max objects 3, max memory 6" in out
    assert "in  memory_key    float32  [T, N, 8, 4, 7]" in out
    assert "out probs         float32  [K, 64, 112]" in out
    assert "TensorRT op audit against ONNX-TensorRT supported operators" in out
    assert out.count("all supported") == 4


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (["--height", "470"], "error: --height 470 is not a multiple of 16; the nearest valid height is 464"),
    (["--width", "100"], "error: --width 100 is not a multiple of 16; the nearest valid width is 96"),
    (["--max-memory", "1"], "error: --max-memory 1: the bank needs at least 2 slots"),
])
def test_bad_sizes_are_refused(tmp_path: Path, capsys, extra: list[str], message: str):
    code, err = _run(["export", "--config", "tiny", "--out", str(tmp_path / "b"), *extra], capsys)
    assert code == 2 and err.strip() == message or err.startswith(message)
    assert list(tmp_path.iterdir()) == []


def test_unknown_config_is_refused(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--config", "huge", "--out", str(tmp_path / "b")])
    assert exit_info.value.code == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_existing_output_is_refused_without_force(tiny_bundle: Path, capsys):
    code, err = _run(["export", "--config", "tiny", "--height", "64", "--width", "112", "--out", str(tiny_bundle)],
                     capsys)
    assert code == 2 and f"output folder {tiny_bundle} already exists; pass --force" in err


def test_a_checkpoint_that_does_not_fit_is_refused(tmp_path: Path, capsys):
    from kmnrt.model.checkpoint import save_checkpoint
    from kmnrt.model.config import get_config
    from kmnrt.model.kmn import build_model

    checkpoint = save_checkpoint(build_model(get_config("tiny")), tmp_path / "tiny.safetensors")
    code, err = _run(["export", "--config", "lite", "--checkpoint", str(checkpoint), "--height", "64", "--width",
                      "64", "--out", str(tmp_path / "b")], capsys)
    assert code == 2
    assert "was saved for config 'tiny', not 'lite': pass --config tiny" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.safetensors"]


def test_tensorrt_engine_without_tensorrt_is_refused_before_any_work(tmp_path: Path, capsys):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    code, err = _run(["export", "--config", "tiny", "--height", "64", "--width", "64", "--engine", "tensorrt",
                      "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "--engine tensorrt needs the `tensorrt` Python package" in err
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_leaves_nothing_behind(tmp_path: Path, capsys, monkeypatch):
    """A full disk cannot be produced here; the weights writer fails the way a full disk makes it fail."""
    import kmnrt.model.checkpoint as checkpoint

    def no_space(model, path):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint, "save_checkpoint", no_space)
    code, err = _run(["export", "--config", "tiny", "--height", "64", "--width", "64", "--out",
                      str(tmp_path / "b")], capsys)
    assert code == 2
    assert f"no space left on the device holding {tmp_path}" in err
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_an_export_leaves_nothing_behind(tmp_path):
    """`timeout`, `kill` or a scheduler stopping an export: the half-built bundle is removed as after Ctrl-C
    (Python's default for SIGTERM ends the process at once, and the staging folder stayed)."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "bundle"
    export = subprocess.Popen([sys.executable, "-m", "kmnrt", "export", "--config", "tiny", "--height", "64",
                               "--width", "96", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".bundle.partial-*")) and export.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert export.poll() is None, "the export ended before it could be stopped"
    export.send_signal(signal.SIGTERM)
    _, err = export.communicate(timeout=60)
    assert export.returncode == 143 and err.decode().strip().splitlines()[-1] == "terminated"
    assert list(tmp_path.iterdir()) == []
