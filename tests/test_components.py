"""raxnet.components: one definition of a lesion — every stage counts the same lesions in the same mask."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from raxnet import components as C
from raxnet.components import LESION_CONNECTIVITY

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
SHAPE = (10, 10, 10)


def corner_mask() -> np.ndarray:
    """Two 2x2x2 cubes touching at one corner (one lesion at 26-, two at 6-connectivity) + a far voxel."""
    m = np.zeros(SHAPE, np.uint8)
    m[1:3, 1:3, 1:3] = 1
    m[3:5, 3:5, 3:5] = 1  # shares only the corner (2,2,2)-(3,3,3)
    m[8, 8, 8] = 1
    return m


def test_structure_and_label():
    m = corner_mask()
    assert C.label(m, 26)[1] == 2 and C.label(m, 18)[1] == 3 and C.label(m, 6)[1] == 3
    assert C.label(m)[1] == 2  # default: LESION_CONNECTIVITY
    assert LESION_CONNECTIVITY == 26
    assert C.structure(8, 2).sum() == 9 and C.structure(4, 2).sum() == 5 and C.structure(6).sum() == 7
    with pytest.raises(ValueError, match="connectivity"):
        C.structure(8, 3)
    with pytest.raises(ValueError, match="connectivity"):
        C.structure(6, 2)


def _save(path, data, dtype):
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=dtype), AFFINE), str(path))
    return path


def test_same_mask_same_lesion_count_in_stage01_stage08_and_predict(tmp_path, monkeypatch):
    """Default settings of stage 01 (subjects.csv n_lesions), stage 08 (subject_metrics.csv
    truth_lesions / pred_lesions) and predict (rows of lesions.csv) all see 2 lesions in corner_mask()."""
    from raxnet import dataset_info, fusion, predict

    mask = corner_mask()
    t1 = np.where(mask > 0, 300.0, 100.0).astype(np.float32)
    data = tmp_path / "data"
    data.mkdir()
    t1_path = _save(data / "sub-1_T1w.nii.gz", t1, np.float32)
    mask_path = _save(data / "sub-1_mask.nii.gz", mask, np.uint8)

    # stage 01
    row, _ = dataset_info.process_subject({"subject": "sub-1", "site": "R1", "t1_path": str(t1_path),
                                           "mask_path": str(mask_path)})
    n_stage01 = row["n_lesions"]

    # stage 08: score the mask against itself
    work = tmp_path / "work"
    (work / "01_dataset").mkdir(parents=True)
    pd.DataFrame([{"subject": "sub-1", "t1_path": str(t1_path), "mask_path": str(mask_path)}]).to_csv(
        work / "01_dataset" / "subjects.csv", index=False)
    pred = tmp_path / "pred"
    pred.mkdir()
    _save(pred / "sub-1.nii.gz", mask, np.uint8)
    res = fusion.evaluate_only({"fusion": {"qc": False}}, {"work_dir": str(work), "data_root": str(data)}, pred)
    metrics = pd.read_csv(res["subject_metrics"])
    n_stage08 = int(metrics.loc[0, "pred_lesions"])
    assert int(metrics.loc[0, "truth_lesions"]) == n_stage08

    # predict: a weight set on this grid whose plane probabilities are the mask itself
    weights = tmp_path / "w"
    weights.mkdir()
    planes = {p: {"file": f"{p}.keras"} for p in ("axial", "sagittal", "coronal")}
    for p in planes:
        (weights / f"{p}.keras").write_bytes(b"")
    (weights / "weights.json").write_text(json.dumps({"format": 2, "grid_shape": list(SHAPE), "affine": AFFINE.tolist(),
                                                      "spacing_mm": [2.0, 2.0, 2.0], "planes": planes}))

    class MaskAsProbabilities(predict.Predictor):
        @property
        def models(self):
            return {}

        def probabilities(self, volume, source="volume"):
            return {p: mask.astype(np.float32) for p in planes}

    out = tmp_path / "out"
    summary = predict.predict_file(MaskAsProbabilities(weights), t1_path, out,
                                   {"save_probabilities": False, "qc": False})
    n_predict = len(pd.read_csv(out / "sub-1_lesions.csv"))
    assert summary["n_lesions"] == n_predict

    assert n_stage01 == n_stage08 == n_predict == 2
