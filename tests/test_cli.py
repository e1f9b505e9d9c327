"""The ``kmnrt`` entry point: arguments no command takes are reported under that command's usage; an empty
path is refused."""

import pytest

from kmnrt.cli import main


def run_failing(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_an_unknown_option_is_reported_with_the_commands_own_usage(capsys):
    err = run_failing(["track", "--input", "a", "--mask", "b", "--out", "c", "--threads", "1"], capsys)
    assert err.startswith("usage: kmnrt track")  # not the top-level "kmnrt [-h] [--version] COMMAND ..."
    assert err.strip().endswith("kmnrt track: error: unrecognized arguments: --threads 1")  # no far-fetched hint


def test_a_mistyped_option_names_the_one_meant(capsys):
    err = run_failing(["train", "--out", "run", "--itrations", "5", "--sead=3"], capsys)
    assert "kmnrt train: error: unrecognized arguments: --itrations 5 --sead=3" in err
    assert "--itrations: did you mean --iterations?" in err and "--sead=3: did you mean --seed?" in err


def test_an_unknown_option_before_any_command_gets_the_top_level_usage(capsys):
    err = run_failing(["--bogus"], capsys)
    assert err.startswith("usage: kmnrt [-h]") and "kmnrt: error: unrecognized arguments: --bogus" in err


def test_no_command_prints_the_help(capsys):
    assert main([]) == 0
    assert "Run `kmnrt COMMAND --help`" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["track", "--input", "v.mp4", "--mask", "m.png", "--out", ""],
                                  ["export", "--out", " "], ["eval", ""], ["train", "--out=", "--stage", "main"]])
def test_an_empty_path_is_refused_not_read_as_the_current_folder(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Path("") is "."; a run there would have written into it
    err = run_failing(argv, capsys)
    assert "error: argument " in err and err.strip().endswith(": an empty path; give a file or folder name")
    assert not any(tmp_path.iterdir())

