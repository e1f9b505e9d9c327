"""How errors reach the user: one line and an exit status, never a traceback."""

from __future__ import annotations

import subprocess
import sys



def test_a_path_that_cannot_be_written_is_a_one_line_error(tmp_path, capsys):
    """An OSError the commands do not anticipate (a file where a folder must be) still names the path."""
    from kmnrt.errors import exit_status

    (tmp_path / "file").write_text("not a folder")
    assert exit_status(lambda: (tmp_path / "file" / "videos").mkdir(parents=True) or 0) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: Not a directory: ") and str(tmp_path / "file") in error
    assert error.endswith("(check the path and its permissions)")


def test_a_reader_that_leaves_early_ends_the_command_quietly():
    """`kmnrt inspect | head -1`: the broken pipe is the reader's choice, not an error worth a traceback."""
    script = ("import sys; from kmnrt.errors import exit_status; "
              "sys.exit(exit_status(lambda: [print('x' * 100) for _ in range(100_000)] and 0))")
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert writer.stdout.read(10) == b"x" * 10
    writer.stdout.close()  # the reader goes away
    assert writer.wait(timeout=60) == 141 and writer.stderr.read() == b""


def test_an_interruption_a_library_wraps_into_its_own_error_is_still_an_interruption():
    """torch.onnx.export turns a KeyboardInterrupt into "Failed to export the model ... submit a PR to PyTorch"
    (exit status 1 and a long traceback); a signal that arrived makes any such error the interruption it is."""
    import signal

    script = ("import sys, time; from kmnrt.errors import exit_status\n"
              "def main():\n"
              "    try:\n"
              "        print('ready', flush=True); time.sleep(60)\n"
              "    except KeyboardInterrupt:\n"
              "        raise RuntimeError('a library wrapped the interruption')\n"
              "sys.exit(exit_status(main))\n")
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline() == b"ready\n"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143 and process.stderr.read() == b"terminated\n"
