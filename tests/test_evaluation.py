"""raxnet.evaluation: finding prediction files, subject rows and their columns."""

from raxnet import evaluation as E

def test_find_predictions_prefers_longest_subject_name(tmp_path):
    for name in ("sub-1_mean.nii.gz", "sub-10_mean.nii.gz", "sub-10.nii.gz", "sub-2-vote.nii", "other.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    found = E.find_predictions(tmp_path, ["sub-1", "sub-10", "sub-2"])
    assert set(found["sub-1"]) == {"mean"}
    assert set(found["sub-10"]) == {"mean", "prediction"}
    assert set(found["sub-2"]) == {"vote"}




def test_subject_metric_columns_cover_every_metric():
    from raxnet.metrics import METRIC_KEYS

    assert set(METRIC_KEYS) <= set(E.SUBJECT_METRIC_COLUMNS)
    assert E.SUBJECT_METRIC_COLUMNS[:3] == ("subject", "set", "method")
    s = E.Subject("sub-1", "holdout", None, None, 27.0, "small")
    row = E.subject_row(s, "mean", None, "boom")
    assert list(row) == list(E.SUBJECT_METRIC_COLUMNS) or set(row) == set(E.SUBJECT_METRIC_COLUMNS)
    assert row["error"] == "boom" and row["lesion_voxels"] == 27.0 and row["dice"] != row["dice"]  # NaN
