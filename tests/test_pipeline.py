"""`raxnet demo` end to end on a tiny configuration: every stage runs and the summary is printed."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import TINY_TOML

from raxnet.config import STAGE_DIRS
from raxnet.pipeline import main

TINY = TINY_TOML  # the shared tiny configuration (conftest.py)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    config = root / "tiny.toml"
    config.write_text(TINY)
    work, data = root / "work", root / "ATLAS_2"
    assert main(["--config", str(config), "--work-dir", str(work), "--data-root", str(data)]) == 0
    return work, data


def test_every_stage_wrote_its_folder(demo):
    work, data = demo
    assert (data / "Training").is_dir()
    for folder in STAGE_DIRS.values():
        assert (work / folder).is_dir(), folder
    # contents, not just files: 8 subjects, 2 (25 %) held out; 3 folds over the 6 train subjects
    subjects = pd.read_csv(work / "01_dataset" / "subjects.csv")
    split = pd.read_csv(work / "02_data_splitting" / "split.csv")
    assert len(subjects) == 8 and sorted(split["subject"]) == sorted(subjects["subject"])
    assert (split["set"] == "holdout").sum() == 2
    folds = pd.read_csv(work / "04_cross_validation" / "subject_folds.csv")
    assert set(folds["subject"]) == set(split.loc[split["set"] == "train", "subject"])
    assert sorted(folds["fold"].value_counts().tolist()) == [2, 2, 2]
    # the weight set: three plane models that exist, on the scans' grid (2 mm)
    import json

    manifest = json.loads((work / "weights" / "weights.json").read_text())
    assert set(manifest["planes"]) == {"axial", "sagittal", "coronal"}
    for plane, entry in manifest["planes"].items():
        assert (work / "weights" / entry["file"]).stat().st_size > 1000, plane
    scan = nib.load(data / subjects["t1_path"].iloc[0])
    assert tuple(manifest["grid_shape"]) == scan.shape and np.allclose(manifest["affine"], scan.affine)
    assert manifest["spacing_mm"] == [2.0, 2.0, 2.0]


def test_weight_set_carries_the_postprocessing_chosen_out_of_fold(demo):
    import json

    work, _ = demo
    record = json.loads((work / "08_fusion" / "postprocessing.json").read_text())
    manifest = json.loads((work / "weights" / "weights.json").read_text())
    # stage 08's choice, plus what the models saw: stage 03's brain-mask step (default 6 mm)
    assert record["subjects"] and {**record["inference"], "brain_mask_mm": 6.0, "bias_correct": False} == manifest["inference"]
    assert json.loads((work / "08_fusion" / "fusion.json").read_text())["brain_mask_mm"] == 6.0
    assert manifest["inference_source"]["from"].endswith("postprocessing.json")
    split = pd.read_csv(work / "02_data_splitting" / "split.csv")
    assert not set(record["subjects"]) & set(split.loc[split["set"] == "holdout", "subject"])


def test_holdout_table_has_planes_and_fusions(demo, capsys):
    work, _ = demo
    summary = pd.read_csv(work / "08_fusion" / "summary.csv")
    holdout = summary[summary["set"] == "holdout"]
    assert {"axial", "sagittal", "coronal", "mean", "vote", "weighted", "mean_clean", "selected"} <= set(holdout["method"])
    assert (holdout["n"] == 2).all()  # every hold-out subject scored
    metrics = pd.read_csv(work / "08_fusion" / "subject_metrics.csv")
    assert metrics["dice"].between(0, 1).all()
    # the summary is the mean of the subjects' rows, per method
    scored = metrics[(metrics["set"] == "holdout") & metrics["error"].isna()]
    for _, row in holdout.iterrows():
        dice = scored.loc[scored["method"] == row["method"], "dice"]
        assert len(dice) == 2 and row["dice_mean"] == pytest.approx(dice.mean(), rel=1e-4, abs=1e-6), row["method"]  # CSVs: 6 digits


def test_prediction_matches_input_grid(demo):
    work, data = demo
    split = pd.read_csv(work / "02_data_splitting" / "split.csv")
    subjects = pd.read_csv(work / "01_dataset" / "subjects.csv").set_index("subject")
    # Image paths are stored relative to the data root.
    scan = nib.load(data / subjects.loc[split.loc[split["set"] == "holdout", "subject"].iloc[0], "t1_path"])
    (mask_path,) = (work / "09_predict").glob("*_desc-lesion_mask.nii.gz")
    mask = nib.load(str(mask_path))
    assert mask.shape == scan.shape and np.allclose(mask.affine, scan.affine)
    assert mask.get_data_dtype() == np.uint8
    # the batch summary describes this mask: voxels, and mm³ with the scan's voxel volume (2 mm: 8 mm³)
    row = pd.read_csv(work / "09_predict" / "summary.csv").iloc[0]
    voxels = int(np.asarray(mask.dataobj).sum())
    assert row["lesion_voxels"] == voxels
    assert row["lesion_volume_mm3"] == pytest.approx(voxels * abs(np.linalg.det(scan.affine[:3, :3])))


def test_rerun_skips_generation_and_finished_training(demo, capsys):
    """Re-running is safe: the dataset is reused and finished runs are skipped, same results."""
    work, data = demo
    before = pd.read_csv(work / "08_fusion" / "summary.csv")
    config = work.parent / "tiny.toml"
    assert main(["--config", str(config), "--work-dir", str(work), "--data-root", str(data)]) == 0
    out = capsys.readouterr().out
    assert "RAX-Net demo finished" in out and "Time per stage" in out and "_qc.png" in out
    after = pd.read_csv(work / "08_fusion" / "summary.csv")
    pd.testing.assert_frame_equal(before, after)


def test_run_report_and_logs(demo):
    """report.html of the tiny run parses, every image and link it references exists, every hold-out subject is
    in the gallery worst first; every stage wrote log.txt without escape codes; predict wrote its batch files."""
    from html_checks import check_html

    from raxnet.report import qc_table

    work, _ = demo
    page = check_html(work / "report.html")
    split = pd.read_csv(work / "02_data_splitting" / "split.csv")
    holdout = set(split.loc[split["set"] == "holdout", "subject"])
    assert {f"qc-{s}" for s in holdout} <= set(page.ids)
    table, _ = qc_table(work)
    assert set(table["subject"]) == holdout and table["dice"].is_monotonic_increasing
    for run in ("axial", "sagittal", "coronal"):
        assert f"07_train/raxnet/{run}/fold_1/curves.png" in page.refs
    assert {"08_fusion/dice_boxplot.png", "08_fusion/dice_by_volume_bin.png",
            "02_data_splitting/split_distribution.png"} <= set(page.refs)
    for folder in STAGE_DIRS.values():
        text = (work / folder / "log.txt").read_text()
        assert "started" in text and "finished" in text, folder
        assert "\x1b" not in text and "\r" not in text, folder
    assert "epoch 1: loss" in (work / "07_train" / "log.txt").read_text()
    fusion_log = (work / "08_fusion" / "log.txt").read_text()
    assert "0 failed (errors.csv)" in fusion_log and "skipped" in fusion_log
    assert pd.read_csv(work / "08_fusion" / "errors.csv").empty
    batch = pd.read_csv(work / "09_predict" / "summary.csv")
    assert len(batch) == 1 and batch.loc[0, "status"] == "ok"
    check_html(work / "09_predict" / "report.html")


def test_trained_run_name_follows_the_first_model_and_loss():
    from raxnet.pipeline import trained_run_name

    assert trained_run_name({"train": {"model": "raxnet", "loss": "tversky_focal"}}) == "raxnet"
    assert trained_run_name({"train": {"model": "raxnet", "loss": "tversky_focal_slice"}}) == "raxnet-tversky_focal_slice"
    assert trained_run_name({"train": {"model": "unet, raxnet", "loss": ["dice", "tversky_focal"]}}) == "unet-dice"
