"""One training run per --out: a second run (or a --force start) is refused while the first is alive."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from kmnrt.cli import main as kmnrt_main
from kmnrt.errors import UserInputError
from kmnrt.training.run_lock import LOCK_NAME, hold, holder


def test_a_held_folder_is_refused_and_released_after(tmp_path):
    with hold(tmp_path):
        assert holder(tmp_path) == f"process {os.getpid()} on host {socket.gethostname()}"
        with pytest.raises(UserInputError, match="belongs to a training run still going"):
            with hold(tmp_path):
                pass
    assert not (tmp_path / LOCK_NAME).exists() and holder(tmp_path) is None


def test_a_dead_runs_lock_is_taken_over(tmp_path):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_NAME).write_text(f"{int(ended.stdout)} {socket.gethostname()}\n")  # that process is gone
    assert holder(tmp_path) is None
    with hold(tmp_path):
        assert holder(tmp_path).startswith(f"process {os.getpid()} ")
    assert not (tmp_path / LOCK_NAME).exists()


def test_train_refuses_a_folder_a_live_run_holds_even_with_force(tmp_path, capsys):
    """A live run's folder: --force must not delete its files, and a second run must not write among them."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"the live run's weights")
    (run / "train_state.pt").write_bytes(b"the live run's state")  # a folder that holds a run: the lock speaks first
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / LOCK_NAME).write_text(f"{other.pid} {socket.gethostname()}\n")
        for extra in ([], ["--force"], ["--resume", str(run)]):
            assert kmnrt_main(["train", "--iterations", "2", "--out", str(run), *extra]) != 0
            error = capsys.readouterr().err
            assert f"belongs to a training run still going (process {other.pid}" in error
            assert "Traceback" not in error
        assert (run / "model.safetensors").read_bytes() == b"the live run's weights"
        assert (run / "train_state.pt").read_bytes() == b"the live run's state"
    finally:
        other.kill()
        other.wait()


def test_a_finished_run_leaves_no_lock(small_config):
    from kmnrt.training.loop import train

    result = train(small_config, progress=False)
    assert result.checkpoint.is_file() and not (small_config.out / LOCK_NAME).exists()
