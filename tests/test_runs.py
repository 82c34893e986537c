"""raxnet.runs: stage-07 layout, model selection by inner-validation loss, plane weights, shared readers."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raxnet import runs as R
from raxnet.errors import StageInputError

def _fake_fold(root, plane, fold, val_loss=None, metrics=None):
    d = root / plane / f"fold_{fold}"
    d.mkdir(parents=True)
    (d / "model.keras").write_bytes(b"")
    if val_loss is not None:
        (d / "run.json").write_text(json.dumps({"best_val_loss": val_loss, "plane": plane, "fold": fold}))
    if metrics is not None:
        metrics.to_csv(d / "metrics.csv", index=False)


def test_select_models_uses_inner_validation_loss_only(tmp_path):
    good_metrics = pd.DataFrame({"dice_3d_mean": [0.9]})
    _fake_fold(tmp_path, "axial", 1, 0.30, good_metrics)  # best outer Dice, worse val loss
    _fake_fold(tmp_path, "axial", 2, 0.10, pd.DataFrame({"dice_3d_mean": [0.1]}))
    _fake_fold(tmp_path, "axial", 3, None)  # no run.json: not eligible for best-fold selection
    sel = R.select_models(tmp_path, ["axial"], ensemble=False)
    assert [m.fold for m in sel["axial"]] == [2]
    assert [m.fold for m in R.select_models(tmp_path, ["axial"], ensemble=True)["axial"]] == [1, 2, 3]
    with pytest.raises(StageInputError, match="sagittal"):
        R.select_models(tmp_path, ["sagittal"], ensemble=False)


def test_plane_weights_read_stage07_metrics(tmp_path):
    _fake_fold(tmp_path, "axial", 1, 0.1, pd.DataFrame({"dice_3d_mean": [0.6]}))
    _fake_fold(tmp_path, "axial", 2, 0.1, pd.DataFrame({"dice_3d_mean": [0.4]}))
    _fake_fold(tmp_path, "sagittal", 1, 0.1, pd.DataFrame({"dice_3d_mean": [0.3]}))
    _fake_fold(tmp_path, "coronal", 1, 0.1, pd.DataFrame({"dice_3d_mean": [0.1]}))
    _fake_fold(tmp_path, "coronal", 2, 0.1, pd.DataFrame({"dice_3d_mean": [np.nan]}))  # NaN ignored
    w, source = R.plane_weights(tmp_path)
    assert source.startswith("cross-validation")
    raw = {"axial": 0.5, "sagittal": 0.3, "coronal": 0.1}
    for p in raw:
        assert w[p] == pytest.approx(raw[p] / 0.9)
    # only the layout stage 07 writes counts: per-subject tables are not outer-fold summaries
    (tmp_path / "coronal" / "fold_1" / "metrics.csv").write_text("subject,dice_3d\na,0.1\n")
    w, source = R.plane_weights(tmp_path)
    assert w == {p: pytest.approx(1 / 3) for p in raw} and "coronal" in source
    (tmp_path / "coronal" / "fold_1" / "metrics.csv").write_text("loss\n0.3\n")
    assert R.read_fold_dice(tmp_path / "coronal" / "fold_1" / "metrics.csv") is None


def test_run_names_and_folders(tmp_path: Path) -> None:
    from raxnet import losses

    assert R.DEFAULT_LOSS == losses.DEFAULT_LOSS
    assert R.run_name("raxnet", "tversky_focal") == "raxnet"
    assert R.run_name("unet", "dice") == "unet-dice"
    assert R.run_dir(tmp_path, "unet", "dice", "coronal", 3) == tmp_path / "07_train" / "unet-dice" / "coronal" / "fold_3"
    assert R.model_path(tmp_path, "raxnet", "axial", 2).name == "model.keras"
    # what stage 07 writes is what stages 08 / export find
    d = R.run_dir(tmp_path, "raxnet", R.DEFAULT_LOSS, "axial", 2)
    d.mkdir(parents=True)
    (d / "model.keras").write_bytes(b"")
    (d.parent / "fold_x").mkdir()  # not a fold folder
    found = R.find_plane_models(R.train_dir(tmp_path, "raxnet"), "axial")
    assert [(m.fold, m.path) for m in found] == [(2, R.model_path(tmp_path, "raxnet", "axial", 2))]
    by_fold = R.fold_models(R.train_dir(tmp_path, "raxnet"), ["axial", "coronal"])
    assert list(by_fold["axial"]) == [2] and by_fold["axial"][2].path == found[0].path and by_fold["coronal"] == {}


def test_read_subject_folds(tmp_path: Path) -> None:
    with pytest.raises(StageInputError, match="subject_folds.csv: not found"):
        R.read_subject_folds(tmp_path)
    (tmp_path / "04_cross_validation").mkdir()
    path = tmp_path / "04_cross_validation" / "subject_folds.csv"
    path.write_text("subject,fold\n007,2\n010,1\n")
    df = R.read_subject_folds(tmp_path)
    assert df["subject"].tolist() == ["007", "010"] and df["fold"].tolist() == [2, 1]  # names stay text
    path.write_text("subject\n007\n")
    with pytest.raises(StageInputError, match="missing column"):
        R.read_subject_folds(tmp_path)
    path.write_text("subject,fold\n")
    with pytest.raises(StageInputError, match="subject_folds.csv: no rows; re-run stage 04"):
        R.read_subject_folds(tmp_path)


def test_resolve_data_path_one_rule(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "t1.nii.gz").write_bytes(b"")
    cwd = tmp_path / "cwd"
    (cwd / "b").mkdir(parents=True)
    (cwd / "b" / "t1.nii.gz").write_bytes(b"")
    monkeypatch.chdir(cwd)
    assert R.resolve_data_path("", root) is None and R.resolve_data_path(float("nan"), root) is None
    assert R.resolve_data_path(str(tmp_path / "x.nii"), root) == tmp_path / "x.nii"  # absolute: as is
    assert R.resolve_data_path("a/t1.nii.gz", root) == root / "a" / "t1.nii.gz"  # under the data root
    assert R.resolve_data_path("b/t1.nii.gz", root) == Path("b/t1.nii.gz")  # found from the working dir
    assert R.resolve_data_path("c/t1.nii.gz", root) == root / "c" / "t1.nii.gz"  # missing: where expected
