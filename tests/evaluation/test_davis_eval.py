"""The evaluation against the reference numbers of docs/evaluation.md, and its input errors.

Reference predictions are made from the ground truth as evaluation.md describes: ``identity`` (= GT),
``shift10`` (every mask shifted 10 px right, zero fill) and ``gap`` (GT, but frames 20..29 empty). The
per-object rows are the official tool's values from evaluation.md. The global rows are over the four
shared sequences (evaluation.md's global table covers six): their J&F/J/F means were checked against
vos-benchmark 0.1.0, and recall/decay are the means of the per-object reference rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kmnrt.data import find_sequences, read_annotation, write_label_png
from kmnrt.errors import KmnrtWarning, UserInputError
from kmnrt.evaluation import OFFICIAL_COLUMNS, EvaluationResult, PredictionFolder, evaluate, evaluate_folders

# J-Mean, J-Recall, J-Decay, F-Mean, F-Recall, F-Decay per object (evaluation.md, section 8).
PER_OBJECT = {
    "shift10": {
        "davis2016_blackswan_1": (0.8096, 1.0, 0.0005, 0.6467, 1.0, -0.0111),
        "davis2016_bmx-trees_1": (0.3742, 0.0, 0.1457, 0.8503, 1.0, -0.0372),
        "davis2016_kite-surf_1": (0.4082, 0.0, 0.0135, 0.9394, 1.0, 0.0132),
        "davis2016_motocross-jump_1": (0.7776, 1.0, 0.0707, 0.7444, 1.0, -0.1101),
    },
    "gap": {
        "davis2016_blackswan_1": (0.7917, 0.7917, 0.0, 0.7917, 0.7917, 0.0),
        "davis2016_bmx-trees_1": (0.8718, 0.8718, -0.05, 0.8718, 0.8718, -0.05),
        "davis2016_kite-surf_1": (0.7917, 0.7917, 0.0, 0.7917, 0.7917, 0.0),
        "davis2016_motocross-jump_1": (0.7368, 0.7368, 0.1, 0.7368, 0.7368, 0.1),
    },
}
# J&F-Mean, J-Mean, J-Recall, J-Decay, F-Mean, F-Recall, F-Decay over the four shared sequences.
GLOBAL = {
    "identity": (1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0),
    "shift10": (0.6938, 0.5924, 0.5, 0.0576, 0.7952, 1.0, -0.0363),
    "gap": (0.7980, 0.7980, 0.7980, 0.0125, 0.7980, 0.7980, 0.0125),
}
SCORED_FRAMES = {
    "davis2016_blackswan": 48,
    "davis2016_bmx-trees": 78,
    "davis2016_kite-surf": 48,
    "davis2016_motocross-jump": 38,
}


def _make_prediction(case: str, gt: np.ndarray, frame_index: int) -> np.ndarray:
    if case == "shift10":
        shifted = np.zeros_like(gt)
        shifted[:, 10:] = gt[:, :-10]
        return shifted
    if case == "gap" and 20 <= frame_index <= 29:
        return np.zeros_like(gt)
    return gt


@pytest.fixture(scope="module", params=["identity", "shift10", "gap"])
def reference_case(request, shared_vos, tmp_path_factory) -> tuple[str, EvaluationResult]:
    case = request.param
    pred_root = tmp_path_factory.mktemp(f"pred_{case}")
    sequences = find_sequences(shared_vos)
    for sequence in sequences:
        for index, name in enumerate(sequence.annotation_names[1:-1], start=1):  # only scored frames needed
            gt = read_annotation(sequence, name)
            write_label_png(pred_root / sequence.name / f"{name}.png", _make_prediction(case, gt, index))
    return case, evaluate(sequences, PredictionFolder(pred_root), progress=False)


def _rounded(values) -> list[float]:
    return [round(value, 4) + 0.0 for value in values]  # + 0.0 turns -0.0 into 0.0


def test_global_row(reference_case) -> None:
    case, result = reference_case
    assert list(result.global_scores.as_dict()) == list(OFFICIAL_COLUMNS)
    assert _rounded(result.global_scores.as_dict().values()) == pytest.approx(GLOBAL[case], abs=1e-9)


def test_per_object_rows(reference_case) -> None:
    case, result = reference_case
    assert [row.name for row in result.objects] == [f"{name}_1" for name in SCORED_FRAMES]
    for row in result.objects:
        assert len(row.j_per_frame) == len(row.f_per_frame) == SCORED_FRAMES[row.sequence]
        assert row.frame_names[0] == "00001"  # the first (given) frame is not scored
        summary = (row.j_mean, row.j_recall, row.j_decay, row.f_mean, row.f_recall, row.f_decay)
        if case == "identity":
            assert summary == (1.0, 1.0, 0.0, 1.0, 1.0, 0.0)
        else:
            assert _rounded(summary) == pytest.approx(PER_OBJECT[case][row.name], abs=1e-9), row.name


def test_global_is_the_plain_mean_over_objects(reference_case) -> None:
    _, result = reference_case
    j_means = [row.j_mean for row in result.objects]
    f_means = [row.f_mean for row in result.objects]
    assert result.global_scores.j_mean == pytest.approx(np.mean(j_means))
    assert result.global_scores.j_and_f_mean == pytest.approx((np.mean(j_means) + np.mean(f_means)) / 2)


# --- small synthetic sequences: object handling, JSON and input errors -------------------------------


def _square(labels: np.ndarray, object_id: int, top: int, left: int, size: int = 6) -> None:
    labels[top : top + size, left : left + size] = object_id


def _write_two_object_dataset(root: Path) -> tuple[Path, Path]:
    """GT: ``pair`` (objects 1 and 2, 6 frames) and ``solo`` (object 1, 5 frames); perfect predictions
    except that ``pair`` never predicts object 2."""
    gt_root, pred_root = root / "gt", root / "pred"
    for index in range(6):
        labels = np.zeros((32, 40), np.uint8)
        _square(labels, 1, 4, 4 + index)
        _square(labels, 2, 18, 20)
        labels[0, :5] = 255  # void: counts as background
        write_label_png(gt_root / "pair" / f"{index:05d}.png", labels)
        prediction = np.where(labels == 1, 1, 0).astype(np.uint8)
        write_label_png(pred_root / "pair" / f"{index:05d}.png", prediction)
    for index in range(5):
        labels = np.zeros((32, 40), np.uint8)
        _square(labels, 1, 10, 10)
        write_label_png(gt_root / "solo" / f"{index:05d}.png", labels)
        write_label_png(pred_root / "solo" / f"{index:05d}.png", labels)
    return gt_root, pred_root


def test_objects_come_from_the_first_frame_and_are_averaged_over_objects(tmp_path) -> None:
    gt_root, pred_root = _write_two_object_dataset(tmp_path)
    result = evaluate_folders(gt_root, pred_root, progress=False)
    assert [row.name for row in result.objects] == ["pair_1", "pair_2", "solo_1"]
    pair_1, pair_2, solo_1 = result.objects
    assert pair_1.j_per_frame == (1.0,) * 4 and pair_1.frame_names == ("00001", "00002", "00003", "00004")
    assert pair_2.j_mean == 0.0 and pair_2.f_mean == 0.0  # never predicted: empty mask
    assert solo_1.j_mean == 1.0 and solo_1.f_mean == 1.0
    assert result.global_scores.j_mean == pytest.approx(2 / 3)  # per object; per sequence would be 3/4
    assert result.sequences == ("pair", "solo")


def test_ids_missing_from_the_first_frame_score_as_the_official_tool_scores_them_with_a_warning(tmp_path) -> None:
    """Objects 2 and 5 only: the official tool takes K = 5 objects, and 1, 3 and 4, empty in both masks, score a
    perfect 1.0 each, which lifts the mean; kmnrt scores the same and says so."""
    gt_root = tmp_path / "gt"
    for index in range(4):
        labels = np.zeros((32, 40), np.uint8)
        _square(labels, 2, 4, 4 + index)
        _square(labels, 5, 18, 20)
        write_label_png(gt_root / "gaps" / f"{index:05d}.png", labels)
    with pytest.warns(KmnrtWarning, match=r"sequence gaps: the first frame's ids run to 5, but 3 of them are absent "
                                          r"\(1, 3, 4\); .* score 1\.0 each; renumber the objects 1\.\.N"):
        result = evaluate_folders(gt_root, gt_root, progress=False)
    assert [row.j_mean for row in result.objects] == [1.0] * 5


def test_prediction_source_in_memory(tmp_path) -> None:
    gt_root, _ = _write_two_object_dataset(tmp_path)
    sequences = find_sequences(gt_root, ["solo"])

    class AllBackground:  # what a tracker run could hand over instead of a folder
        def check(self, sequence, frame_names) -> None:
            pass

        def read(self, sequence, frame_name) -> np.ndarray:
            return np.zeros((32, 40), np.uint8)

    result = evaluate(sequences, AllBackground(), progress=False)
    assert result.global_scores.j_mean == 0.0 and result.global_scores.f_recall == 0.0


def test_json_uses_official_names_and_is_written_atomically(tmp_path) -> None:
    gt_root, pred_root = _write_two_object_dataset(tmp_path)
    result = evaluate_folders(gt_root, pred_root, ["solo"], progress=False)
    document = json.loads(result.to_json())
    assert list(document["global"]) == list(OFFICIAL_COLUMNS)
    assert document["global"]["J&F-Mean"] == 1.0
    row = document["per_object"]["solo_1"]
    assert row["J-Mean"] == 1.0 and row["frames"] == ["00001", "00002", "00003"]
    assert row["J-per-frame"] == [1.0, 1.0, 1.0]
    out = tmp_path / "reports" / "scores.json"
    result.write_json(out)
    assert json.loads(out.read_text()) == document
    assert [path.name for path in out.parent.iterdir()] == ["scores.json"]
    table = result.format_table()
    assert table.splitlines()[1].split() == list(OFFICIAL_COLUMNS)
    assert "solo_1" in table


def test_missing_prediction_file_names_sequence_file_and_folder(tmp_path) -> None:
    gt_root, pred_root = _write_two_object_dataset(tmp_path)
    (pred_root / "pair" / "00003.png").unlink()
    (pred_root / "pair" / "00005.png").unlink()  # the last frame is not scored: not needed
    with pytest.raises(UserInputError, match=r"sequence pair: prediction .*pred/pair/00003\.png is missing") as info:
        evaluate_folders(gt_root, pred_root, progress=False)
    assert f"into {pred_root / 'pair'}" in str(info.value)


def test_missing_prediction_folder_names_the_expected_folder(tmp_path) -> None:
    gt_root, pred_root = _write_two_object_dataset(tmp_path)
    # A sequence folder given as PRED_ROOT: PNGs directly, not <seq>/ folders.
    expected = r"no predictions for sequence pair: expected the folder .*pred/pair/pair"
    with pytest.raises(UserInputError, match=expected) as info:
        evaluate_folders(gt_root, pred_root / "pair", progress=False)
    assert f"did you mean {pred_root}?" in str(info.value)
    flat = tmp_path / "flat"  # the sequence's PNGs straight in PRED_ROOT, under another name
    flat.mkdir()
    for png in (pred_root / "pair").iterdir():
        (flat / png.name).write_bytes(png.read_bytes())
    with pytest.raises(UserInputError, match=f"move them into {flat / 'pair'}"):
        evaluate_folders(gt_root, flat, ["pair"], progress=False)
    with pytest.raises(UserInputError, match=r"prediction folder .*nowhere does not exist"):
        evaluate_folders(gt_root, tmp_path / "nowhere", progress=False)


def test_prediction_of_another_size_names_the_file(tmp_path) -> None:
    gt_root, pred_root = _write_two_object_dataset(tmp_path)
    write_label_png(pred_root / "solo" / "00002.png", np.zeros((16, 20), np.uint8))
    with pytest.raises(UserInputError, match=r"sequence solo: prediction 00002\.png is 20x16 .* ground truth is 40x32"):
        evaluate_folders(gt_root, pred_root, progress=False)


def test_predicted_ids_above_the_first_frame_objects_are_an_error(tmp_path) -> None:
    gt_root, pred_root = _write_two_object_dataset(tmp_path)
    labels = np.zeros((32, 40), np.uint8)
    labels[0:3, 0:3] = 2
    labels[5:8, 5:8] = 7
    write_label_png(pred_root / "solo" / "00001.png", labels)
    with pytest.raises(UserInputError, match=r"sequence solo: prediction 00001\.png holds object id\(s\) 2, 7"):
        evaluate_folders(gt_root, pred_root, progress=False)


def test_unscorable_ground_truth_is_an_error(tmp_path) -> None:
    for index in range(4):
        write_label_png(tmp_path / "gt" / "blank" / f"{index:05d}.png", np.zeros((8, 8), np.uint8))
    for index in range(2):
        write_label_png(tmp_path / "gt" / "short" / f"{index:05d}.png", np.ones((8, 8), np.uint8))
    (tmp_path / "pred" / "blank").mkdir(parents=True)
    with pytest.raises(UserInputError, match=r"sequence short has 2 annotated frame\(s\)"):
        evaluate_folders(tmp_path / "gt", tmp_path / "pred", ["short"], progress=False)
    for index in range(4):
        write_label_png(tmp_path / "pred" / "blank" / f"{index:05d}.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(UserInputError, match=r"sequence blank: the first ground-truth frame .* holds no object"):
        evaluate_folders(tmp_path / "gt", tmp_path / "pred", ["blank"], progress=False)
