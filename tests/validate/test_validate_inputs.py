"""Bad predictions files get an InputError naming the file, the column/row, expected vs found, and the fix."""

import json

import numpy as np
import pandas as pd
import pytest

from sobre.errors import GeometryError, InputError
from sobre.validate import (
    MaskGeometryError,
    MaskReadError,
    PredictionsError,
    SingleClassError,
    evaluate,
    read_predictions,
)


def write(tmp_path, rows, name="predictions.csv"):
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def binary_rows(n=40, seed=0):
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n // 2, int), np.ones(n - n // 2, int)]
    score = np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1)
    return {"subject_id": [f"s{i}" for i in range(n)], "label": y, "score": score}


def test_errors_are_input_errors():
    assert issubclass(PredictionsError, InputError)
    assert issubclass(SingleClassError, PredictionsError)
    assert issubclass(MaskGeometryError, InputError) and issubclass(MaskGeometryError, GeometryError)
    assert issubclass(MaskReadError, InputError)


def test_reads_a_good_file_and_infers_the_task(tmp_path):
    p = read_predictions(write(tmp_path, binary_rows()))
    assert p.task == "binary" and p.classes == [0, 1] and len(p.test) == 40
    assert len(p.sha256) == 64


def test_missing_subjects(tmp_path):
    path = write(tmp_path, binary_rows(10))
    with pytest.raises(PredictionsError, match=r"predictions\.csv: 2 expected subjects are missing.*no row for "
                                               r"'x1', 'x2'.*add a row for every subject"):
        read_predictions(path, expected_subjects=[f"s{i}" for i in range(10)] + ["x1", "x2"])
    (tmp_path / "run.json").write_text(json.dumps({"expected_subjects": ["s0", "gone"]}))
    with pytest.raises(PredictionsError, match="'gone'"):
        read_predictions(tmp_path)  # the run folder: predictions.csv + run.json


def test_empty_and_duplicate_subject_ids(tmp_path):
    rows = binary_rows(6)
    rows["subject_id"][2] = ""
    with pytest.raises(PredictionsError, match=r"subject_id is empty.*empty on line 4"):
        read_predictions(write(tmp_path, rows))
    rows = binary_rows(6)
    rows["subject_id"][3] = "s1"
    with pytest.raises(PredictionsError, match=r"not unique.*'s1' on line 3, line 5.*keep one prediction"):
        read_predictions(write(tmp_path, rows))


def test_wrong_label_types(tmp_path):
    rows = binary_rows(6)
    rows["label"] = [0, 1, 0.5, 1, 0, 1]
    with pytest.raises(PredictionsError, match=r"column 'label' holds non-integer numbers.*0\.5 on line 4.*"
                                               r"--task regression"):
        read_predictions(write(tmp_path, rows), task="binary")
    rows = binary_rows(6)
    rows["label"] = [10.5, 20, "abc", 30, 40, 50]
    with pytest.raises(PredictionsError, match=r"column 'label' holds numbers but for a few values that are not "
                                               r"numbers.*found 'abc' on line 4"):
        read_predictions(write(tmp_path, rows), task="regression")
    rows = binary_rows(6)
    rows["label"] = ["no", "yes"] * 3
    with pytest.raises(PredictionsError, match=r"cannot tell which label is the positive class.*found labels 'no', "
                                               r"'yes'.*--positive"):
        read_predictions(write(tmp_path, rows))
    assert read_predictions(write(tmp_path, rows), positive="yes").classes == ["no", "yes"]
    rows["label"] = ["a", "b", "c"] * 2
    with pytest.raises(PredictionsError, match="one score column per class"):
        read_predictions(write(tmp_path, rows))
    rows["label"] = [1, 2, 3] * 2
    with pytest.raises(PredictionsError, match=r"cannot tell the task.*label values 1, 2, 3.*--task regression"):
        read_predictions(write(tmp_path, rows))
    assert read_predictions(write(tmp_path, rows), task="regression").task == "regression"


def test_scores_must_be_numbers(tmp_path):
    rows = binary_rows(6)
    rows["score"] = ["0.1", "0.5", "high", "0.3", "0.9", "0.2"]
    with pytest.raises(PredictionsError, match=r"column 'score' holds non-numeric values.*'high' on line 4"):
        read_predictions(write(tmp_path, rows))
    rows["score"] = [0.1, 0.5, None, 0.3, 0.9, 0.2]
    with pytest.raises(PredictionsError, match=r"column 'score' has empty values.*empty on line 4.*biases"):
        read_predictions(write(tmp_path, rows))
    rows = binary_rows(6)
    del rows["score"]
    with pytest.raises(PredictionsError, match=r"missing column 'score'.*found columns subject_id, label"):
        read_predictions(write(tmp_path, rows))


def test_single_class_says_auc_is_undefined(tmp_path):
    rows = binary_rows(6)
    rows["label"] = [1] * 6
    with pytest.raises(SingleClassError, match=r"only one class.*AUC, sensitivity and specificity are undefined.*"
                                               r"found only 1"):
        read_predictions(write(tmp_path, rows))


def test_split_values(tmp_path):
    rows = binary_rows(6)
    rows["split"] = ["test", "test", "val", "test", "holdout", "test"]
    with pytest.raises(PredictionsError, match=r"unknown value in column 'split'.*'holdout' on line 6"):
        read_predictions(write(tmp_path, rows))
    rows["split"] = ["test", "test", "val", "validation", "train", "test"]
    p = read_predictions(write(tmp_path, rows))
    assert len(p.test) == 3 and len(p.validation) == 2
    assert any("training rows ignored" in q.message for q in p.problems)


def test_parquet(tmp_path):
    df = pd.DataFrame(binary_rows())
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        path = tmp_path / "predictions.parquet"
        path.write_bytes(b"PAR1")
        with pytest.raises(PredictionsError, match="pip install pyarrow"):
            read_predictions(path)
    else:
        df.to_parquet(tmp_path / "p.parquet")
        assert read_predictions(tmp_path / "p.parquet").task == "binary"


def test_unknown_grouping_column(tmp_path):
    path = write(tmp_path, binary_rows())
    with pytest.raises(PredictionsError, match=r"grouping column 'scanner' not found.*remove it from --by"):
        evaluate(path, by=["scanner"], n_bootstrap=0)
    with pytest.raises(PredictionsError, match="no 'age' or 'age_band' column"):
        evaluate(path, by=["age_band"], n_bootstrap=0)


def _nifti(path, arr, spacing=(1.0, 1.0, 2.0)):
    import nibabel as nib

    nib.save(nib.Nifti1Image(arr.astype(np.uint8), np.diag(list(spacing) + [1.0])), str(path))


def test_mask_geometry_refused_unless_resampling(tmp_path):
    ref = np.zeros((20, 20, 8), bool)
    ref[5:15, 5:15, 2:6] = True
    _nifti(tmp_path / "ref.nii.gz", ref)
    _nifti(tmp_path / "pred.nii.gz", ref[::2, ::2, :], spacing=(2.0, 2.0, 2.0))
    path = write(tmp_path, {"subject_id": ["a"], "mask_path": ["ref.nii.gz"], "pred_path": ["pred.nii.gz"]})
    with pytest.raises(MaskGeometryError, match=r"pred\.nii\.gz.*not have the same shape.*expected shape "
                                                r"\(20, 20, 8\).*found shape \(10, 10, 8\).*--resample"):
        evaluate(path, n_bootstrap=0)
    ev = evaluate(path, n_bootstrap=0, resample_masks=True)
    assert ev.metrics["dice"].value == pytest.approx(1.0)


def test_missing_mask_file(tmp_path):
    path = write(tmp_path, {"subject_id": ["a"], "mask_path": ["nope.nii.gz"], "pred_path": ["nope2.nii.gz"]})
    with pytest.raises(MaskReadError, match=r"nope\.nii\.gz: mask file not found.*relative paths are resolved"):
        evaluate(path, n_bootstrap=0)


def test_empty_masks_report_the_convention(tmp_path):
    ref = np.zeros((16, 16, 6), bool)
    ref[4:10, 4:10, 1:4] = True
    _nifti(tmp_path / "ref.nii.gz", ref)
    _nifti(tmp_path / "empty.nii.gz", np.zeros_like(ref))
    path = write(tmp_path, {"subject_id": ["missed", "both", "same"],
                            "mask_path": ["ref.nii.gz", "empty.nii.gz", "ref.nii.gz"],
                            "pred_path": ["empty.nii.gz", "empty.nii.gz", "ref.nii.gz"]})
    ev = evaluate(path, n_bootstrap=0)
    assert ev.details["counts"]["empty_prediction"] == 1 and ev.details["counts"]["both_empty"] == 1
    notes = [q.message for q in ev.problems]
    assert any("empty masks" in m and "image diagonal" in m for m in notes)
    assert ev.metrics["dice"].value == pytest.approx((0 + 1 + 1) / 3)
    assert any("empty prediction" in x for x in ev.limits)
