from __future__ import annotations

import json

import numpy as np

from kmnrt.cli import main
from kmnrt.data import find_sequences, read_annotation, write_label_png


def _write_dataset(root, sequences=("alpha", "beta")) -> None:
    for number, name in enumerate(sequences):
        for index in range(5):
            labels = np.zeros((24, 32), np.uint8)
            labels[6:14, 6 + index : 14 + index] = 1
            write_label_png(root / "gt" / name / f"{index:05d}.png", labels)
            if number == 1:
                labels = np.zeros_like(labels)  # the second sequence predicts nothing
            write_label_png(root / "pred" / name / f"{index:05d}.png", labels)


def test_eval_prints_the_table_and_writes_json(tmp_path, capsys) -> None:
    _write_dataset(tmp_path)
    json_path = tmp_path / "out" / "scores.json"
    status = main(["eval", str(tmp_path / "gt"), str(tmp_path / "pred"), "--json", str(json_path)])
    captured = capsys.readouterr()
    assert status == 0
    lines = captured.out.splitlines()
    assert lines[1].split() == ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
    assert lines[2].split() == ["all", "0.5000", "0.5000", "0.5000", "0.0000", "0.5000", "0.5000", "0.0000"]
    assert any(line.split()[:2] == ["alpha_1", "1.0000"] for line in lines)
    assert any(line.split()[:2] == ["beta_1", "0.0000"] for line in lines)
    document = json.loads(json_path.read_text())
    assert document["global"]["J&F-Mean"] == 0.5
    assert sorted(document["per_object"]) == ["alpha_1", "beta_1"]


def test_eval_sequences_option(tmp_path, capsys) -> None:
    _write_dataset(tmp_path)
    status = main(["eval", str(tmp_path / "gt"), str(tmp_path / "pred"), "--sequences", "beta"])
    out = capsys.readouterr().out
    assert status == 0
    assert "beta_1" in out and "alpha_1" not in out


def test_eval_on_a_real_davis_sequence_folder(shared_vos, tmp_path, capsys) -> None:
    (sequence,) = find_sequences(shared_vos / "davis2016_blackswan")
    for name in sequence.annotation_names:
        gt = read_annotation(sequence, name)
        shifted = np.zeros_like(gt)
        shifted[:, 10:] = gt[:, :-10]
        write_label_png(tmp_path / sequence.name / f"{name}.png", shifted)
    status = main(["eval", str(shared_vos / "davis2016_blackswan"), str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0
    row = next(line.split() for line in out.splitlines() if line.startswith("davis2016_blackswan_1"))
    # J&F, then J M/R/D and F M/R/D of evaluation.md's shift10 row for blackswan
    assert row[1:] == ["0.7282", "0.8096", "1.0000", "0.0005", "0.6467", "1.0000", "-0.0111"]


def test_eval_reports_a_missing_folder_without_traceback(tmp_path, capsys) -> None:
    _write_dataset(tmp_path)
    status = main(["eval", str(tmp_path / "no-such-gt"), str(tmp_path / "pred")])
    err = capsys.readouterr().err
    assert status != 0
    assert err.startswith("error: ") and "no-such-gt does not exist" in err
    assert "Traceback" not in err

    status = main(["eval", str(tmp_path / "gt"), str(tmp_path / "no-such-pred")])
    err = capsys.readouterr().err
    assert status != 0 and err.startswith("error: prediction folder") and "no-such-pred" in err

    status = main(["eval", str(tmp_path / "gt"), str(tmp_path / "pred"), "--json", "."])  # before any scoring
    assert status == 2 and capsys.readouterr().err.startswith("error: --json .: give the path of a file")


def test_eval_rejects_an_empty_sequence_list(tmp_path, capsys) -> None:
    _write_dataset(tmp_path)
    status = main(["eval", str(tmp_path / "gt"), str(tmp_path / "pred"), "--sequences", " , "])
    assert status != 0
    assert "error: --sequences is empty" in capsys.readouterr().err
