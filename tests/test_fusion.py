"""raxnet.fusion (stage 08): end to end on a tiny work dir, evaluate-only, the command line."""

import json
import shutil
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from raxnet import evaluation as E
from raxnet import fusion as F
from raxnet import metrics as M
from raxnet.errors import InputError
from raxnet.planes import padded_shape, slice_shape

SHAPE = (12, 16, 14)
AFFINE = np.array([[1.0, 0, 0, -6.0], [0, 1.0, 0, -8.0], [0, 0, 1.5, -10.0], [0, 0, 0, 1]])
SPACING = (1.0, 1.0, 1.5)


# --- end to end on a tiny work dir ----------------------------------------------------------------

keras = pytest.importorskip("keras")


def _pixel_model(plane, w, b):
    """sigmoid(w * x + b) per pixel; input padded to a multiple of 4 (exercises pad/crop)."""
    shape = padded_shape(slice_shape(SHAPE, plane), 2)
    inputs = keras.Input((*shape, 1))
    conv = keras.layers.Conv2D(
        1, 1, activation="sigmoid",
        kernel_initializer=keras.initializers.Constant(w), bias_initializer=keras.initializers.Constant(b),
    )
    return keras.Model(inputs, conv(inputs))


def _subject_volumes(i):
    """Head box of intensity 100 with one bright 3x3x3 lesion (300) at a subject-specific place."""
    t1 = np.zeros(SHAPE, np.float32)
    t1[1:11, 1:15, 1:13] = 100.0
    truth = np.zeros(SHAPE, np.uint8)
    x0 = 2 + i
    truth[x0 : x0 + 3, 5:8, 4:7] = 1
    t1[truth > 0] = 300.0
    return t1, truth


def _write(path, data, dtype):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), AFFINE)
    img.set_sform(AFFINE, code=4)
    img.set_qform(AFFINE, code=4)
    img.header["descrip"] = b"raxnet test"
    nib.save(img, str(path))
    return path


def _make_dataset(root, work, subjects):
    """subjects: list of (name, set, fold); writes NIfTI files, subjects.csv, split.csv, subject_folds.csv."""
    rows, split, folds = [], [], []
    for i, (name, set_name, fold) in enumerate(subjects):
        t1, truth = _subject_volumes(i % 4)
        anat = root / "Training" / "R001" / name / "ses-1" / "anat"
        t1p = _write(anat / f"{name}_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz", t1, np.float32)
        mp = _write(anat / f"{name}_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz", truth, np.uint8)
        # as stage 01 stores them: relative to the data root
        rows.append({"subject": name, "site": "R001", "t1_path": str(t1p.relative_to(root)),
                     "mask_path": str(mp.relative_to(root)),
                     "lesion_voxels": int(truth.sum())})
        split.append({"subject": name, "site": "R001", "lesion_voxels": int(truth.sum()),
                      "volume_bin": "small" if i % 2 else "large", "set": set_name})
        if fold is not None:
            folds.append({"subject": name, "fold": fold})
    for sub, name, df in (("01_dataset", "subjects.csv", rows), ("02_data_splitting", "split.csv", split),
                          ("04_cross_validation", "subject_folds.csv", folds)):
        (work / sub).mkdir(parents=True, exist_ok=True)
        pd.DataFrame(df).to_csv(work / sub / name, index=False)


GOOD, ZERO, HALF = (20.0, -10.0), (0.0, -10.0), (0.0, 0.0)


@pytest.fixture(scope="session")
def tiny_work(tmp_path_factory):
    """Work dir with 3 hold-out + 3 train subjects and tiny per-pixel plane models for folds 1-3.

    Per plane: fold_1 = GOOD (lowest val loss but the *worst* reported outer Dice), fold_2 = ZERO
    (always ~0), fold_3 = GOOD for axial/sagittal only (coronal fold_3 missing). Coronal folds 1-2 are
    HALF (0.5 on every voxel of a non-empty slice: a bad plane that fusion must outvote).
    """
    base = tmp_path_factory.mktemp("fusion_e2e")
    root, work = base / "data", base / "work"
    subjects = [("sub-h1", "holdout", None), ("sub-h2", "holdout", None), ("sub-h3", "holdout", None),
                ("sub-t1", "train", 1), ("sub-t2", "train", 2), ("sub-t3", "train", 3)]
    _make_dataset(root, work, subjects)
    # one hold-out subject with a corrupt (truncated) T1, one listed in split.csv but not subjects.csv
    t1 = next((root / "Training" / "R001" / "sub-h3").rglob("*_T1w.nii.gz"))
    t1.write_bytes(t1.read_bytes()[:60])
    split = pd.read_csv(work / "02_data_splitting" / "split.csv")
    extra = {"subject": "sub-h4", "site": "R001", "lesion_voxels": 27, "volume_bin": "small", "set": "holdout"}
    pd.concat([split, pd.DataFrame([extra])]).to_csv(work / "02_data_splitting" / "split.csv", index=False)

    spec = {1: (GOOD, 0.1, 0.2), 2: (ZERO, 0.3, 0.9), 3: (GOOD, 0.2, 0.5)}
    for plane in ("axial", "sagittal", "coronal"):
        for fold, (wb, loss, outer_dice) in spec.items():
            if plane == "coronal":
                if fold == 3:
                    continue
                wb, outer_dice = HALF, 0.1
            d = work / "07_train" / "raxnet" / plane / f"fold_{fold}"
            d.mkdir(parents=True)
            _pixel_model(plane, *wb).save(d / "model.keras")
            (d / "run.json").write_text(json.dumps({"best_val_loss": loss, "plane": plane, "fold": fold,
                                                    "best_epoch": 3}))
            pd.DataFrame([{"plane": plane, "fold": fold, "dice_3d_mean": outer_dice}]).to_csv(
                d / "metrics.csv", index=False)
    return root, work


def _run(root, work, **fusion):
    # Every [fusion] setting given: the shared work dir's config.toml keeps what an earlier test gave.
    cfg = {"fusion": {**F.DEFAULTS, **fusion}}
    return F.run(cfg, {"work_dir": str(work), "data_root": str(root), "seed": 0, "jobs": 1})


def test_end_to_end_fusion_holdout_and_oof(tiny_work, capsys):
    root, work = tiny_work
    res = _run(root, work, oof=True, min_size=2)
    out = work / "08_fusion"
    table = capsys.readouterr().out
    assert "Dice mean" in table and "[hold-out]" in table and res["table"] in table

    # selection by inner-validation loss (fold_1), not by the reported outer Dice (fold_2 has 0.9)
    assert res["selected_folds"] == {"axial": [1], "sagittal": [1], "coronal": [1]}
    # weights = mean outer Dice per plane, normalised: axial, sagittal (0.2+0.9+0.5)/3, coronal 0.1
    raw = {"axial": 1.6 / 3, "sagittal": 1.6 / 3, "coronal": 0.1}
    for p, v in raw.items():
        assert res["weights"][p] == pytest.approx(v / sum(raw.values()))

    df = pd.read_csv(out / "subject_metrics.csv", keep_default_na=False, na_values=[""])
    assert list(df.columns[:13]) == list(E.SUBJECT_METRIC_COLUMNS[:13])
    assert list(df.columns) == list(E.SUBJECT_METRIC_COLUMNS)
    methods = ["axial", "sagittal", "coronal", "mean", "vote", "weighted", "mean_clean", "vote_clean",
               "weighted_clean", "selected"]
    hold = df[df["set"] == "holdout"]
    # EVERY hold-out subject is present for every method, failures with their error and NaN metrics
    assert sorted(hold["subject"].unique()) == ["sub-h1", "sub-h2", "sub-h3", "sub-h4"]
    assert len(hold) == 4 * len(methods)
    failed = hold[hold["subject"].isin(["sub-h3", "sub-h4"])]
    assert failed["dice"].isna().all() and failed["error"].notna().all()
    assert failed[failed["subject"] == "sub-h3"]["error"].str.contains("T1w.nii.gz").all()
    assert failed[failed["subject"] == "sub-h4"]["error"].str.contains("subjects.csv").all()
    ok = hold[hold["subject"].isin(["sub-h1", "sub-h2"])].set_index(["subject", "method"])
    for s in ("sub-h1", "sub-h2"):
        for m in ("axial", "sagittal", "mean", "vote", "weighted", "mean_clean"):
            assert ok.loc[(s, m), "dice"] == pytest.approx(1.0), (s, m)
            assert ok.loc[(s, m), "hd95_mm"] == 0.0 and ok.loc[(s, m), "lesion_f1"] == 1.0
        assert ok.loc[(s, "coronal"), "dice"] < 0.2  # the bad plane alone; fusion outvotes it
        # plane agreement: every plane (coronal at p = 0.5 everywhere, >= threshold) calls the fused lesion
        # lesion, but the coronal mask is mostly voxels that axial and sagittal reject
        assert ok.loc[(s, "mean"), "plane_agreement"] == 1.0 and ok.loc[(s, "coronal"), "plane_agreement"] < 0.2
        assert ok.loc[(s, "selected"), "dice"] == pytest.approx(1.0)
        assert ok.loc[(s, "coronal"), "lesion_voxels"] == 27

    # out-of-fold (set "oof"): sub-t1 by fold_1 (good), sub-t2 by fold_2 (zero -> empty prediction),
    # sub-t3 skipped: fold_3 was not trained, which is a choice, not a failure
    train = df[df["set"] == "oof"].set_index(["subject", "method"])
    assert sorted({s for s, _ in train.index}) == ["sub-t1", "sub-t2"]
    assert "selected" not in {m for _, m in train.index}  # chosen on them: never scored on them
    assert train.loc[("sub-t1", "mean"), "dice"] == pytest.approx(1.0)
    assert train.loc[("sub-t2", "mean"), "dice"] == 0.0 and np.isnan(train.loc[("sub-t2", "mean"), "hd95_mm"])
    assert res["oof_skipped_folds"] == [3]
    errors = pd.read_csv(out / "errors.csv")
    assert set(errors["subject"]) == {"sub-h3", "sub-h4"} and res["n_failed"] == 2
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped.to_dict(orient="records") == [{"subject": "sub-t3", "set": "oof", "reason": "fold_3 not trained "
                                                  "(coronal)"}] and res["n_skipped"] == 1

    summary = pd.read_csv(out / "summary.csv").set_index(["set", "method"])
    assert summary.loc[("holdout", "mean"), "n"] == 4 and summary.loc[("holdout", "mean"), "n_failed"] == 2
    assert summary.loc[("holdout", "mean"), "dice_mean"] == pytest.approx(1.0)
    assert summary.loc[("oof", "mean"), "hd95_mm_n_undefined"] == 1
    assert summary.loc[("oof", "mean"), "hd95_mm_mean"] == 0.0  # NaN excluded from the mean
    assert "[out-of-fold (train subjects)]" in res["table"] and "[train]" not in res["table"]

    # masks: uint8, the T1's affine and header; QC overlays and figures exist
    t1_img = nib.load(next((root / "Training").rglob("sub-h1_*_T1w.nii.gz")))
    mimg = nib.load(out / "masks" / "sub-h1_vote.nii.gz")
    assert mimg.get_data_dtype() == np.uint8
    np.testing.assert_allclose(mimg.affine, t1_img.affine)
    assert mimg.header["descrip"] == t1_img.header["descrip"]
    assert int(mimg.header["sform_code"]) == 4 and mimg.header.get_zooms() == t1_img.header.get_zooms()
    truth = np.asarray(nib.load(next((root / "Training").rglob("sub-h1_*_mask.nii.gz"))).dataobj)
    np.testing.assert_array_equal(np.asarray(mimg.dataobj), truth)
    assert (out / "qc" / "sub-h1_qc.png").stat().st_size > 10_000
    assert not (out / "qc" / "sub-h3_qc.png").exists()
    assert (out / "dice_boxplot.png").is_file() and (out / "dice_by_volume_bin.png").is_file()
    info = json.loads((out / "fusion.json").read_text())
    assert info["holdout_folds"]["axial"] == [1] and info["weight_source"].startswith("cross-validation")
    assert info["brain_mask_mm"] is None  # no stage-03 record (03_moving_converting/convert.json): no mask step
    assert info["bias_correct"] is False

    # evaluate-only on the masks just written reproduces the metrics exactly (independent path), in
    # its own folder: the fusion results are not overwritten
    before = (out / "subject_metrics.csv").read_bytes()
    ev = F.evaluate_only({"fusion": {"oof": True, "qc": False}},
                         {"work_dir": str(work), "data_root": str(root)}, out / "masks")
    assert ev["methods"] == methods and ev["out_dir"] == str(out / "evaluate_masks")
    assert (out / "subject_metrics.csv").read_bytes() == before
    df2 = pd.read_csv(out / "evaluate_masks" / "subject_metrics.csv", keep_default_na=False, na_values=[""])
    ok2 = df2[df2["error"].isna()].set_index(["subject", "method"]).sort_index()
    ok1 = df[df["error"].isna()].set_index(["subject", "method"]).sort_index()
    pd.testing.assert_frame_equal(ok1[list(M.METRIC_KEYS[:8])], ok2[list(M.METRIC_KEYS[:8])])


def test_postprocessing_chosen_out_of_fold_before_any_holdout_subject_is_read(tiny_work, monkeypatch, tmp_path):
    """Every candidate ties on the out-of-fold subjects here (sub-t1 perfect, sub-t2 empty: mean Dice 0.5),
    so the choice is the first method at the default threshold without removal; the spy shows that no
    hold-out subject had been read when it was made."""
    root, src = tiny_work
    work = tmp_path / "work"
    shutil.copytree(src, work, ignore=shutil.ignore_patterns("08_fusion"))
    read, seen_at_choice = [], []
    real_load, real_choose = F.load_truth, F._choose_postprocessing

    def spy_load(s):
        read.append(s.subject)
        return real_load(s)

    def spy_choose(*args, **kwargs):
        seen_at_choice.extend(read)
        return real_choose(*args, **kwargs)

    monkeypatch.setattr(F, "load_truth", spy_load)
    monkeypatch.setattr(F, "_choose_postprocessing", spy_choose)
    res = _run(root, work, qc=False, select_thresholds=[0.3, 0.5, 0.7], select_min_lesion_mm3=[0, 10],
                select_min_peak=[0, 0.6])
    assert seen_at_choice == ["sub-t1", "sub-t2"]  # fold order; sub-t3's fold has no coronal model
    assert {"sub-h1", "sub-h2"} <= set(read)
    out = work / "08_fusion"
    record = json.loads((out / "postprocessing.json").read_text())
    assert record["subjects"] == ["sub-t1", "sub-t2"] and record == res["postprocessing"]
    assert record["inference"] == {"fusion": "mean", "threshold": 0.5, "min_lesion_mm3": 0.0, "min_peak": 0.0,
                                   "large_mm3": 0.0, "large_threshold": 0.0, "large_fragment_mm3": 0.0,
                                   "connectivity": 26, "tta": False, "weights": {}}
    assert record["chosen"]["score"] == pytest.approx(0.5) and record["chosen"]["n_subjects"] == 2
    cand = pd.read_csv(out / "postprocessing_candidates.csv")
    # methods x sizes x (0.3 and 0.5: peaks 0 and 0.6; 0.7: peak 0 only)
    assert len(cand) == 3 * 2 * (2 + 2 + 1) and cand["chosen"].sum() == 1 and (cand["dice_mean"] == 0.5).all()
    # the large-lesion outline, on top of that choice: none plus 3 sizes x (0.6, the one outline threshold above
    # 0.5) x 3 fragment floors; nothing to gain here, so none is chosen
    large = pd.read_csv(out / "postprocessing_large_candidates.csv")
    assert len(large) == 1 + 3 * 1 * 3 and large.loc[large["chosen"], "large_mm3"].tolist() == [0.0]
    df = pd.read_csv(out / "subject_metrics.csv")
    assert set(df["set"]) == {"holdout"}  # oof off: the train subjects chose, they are not reported
    assert df[(df["method"] == "selected") & (df["subject"] == "sub-h1")]["dice"].item() == pytest.approx(1.0)
    assert json.loads((out / "fusion.json").read_text())["postprocessing"] == record["inference"]

    # the weight set exported from this run carries the choice, and says where it came from
    from raxnet.weights import export_weights, read_manifest

    manifest = read_manifest(export_weights(work, tmp_path / "weights"))
    assert manifest["inference"] == {**record["inference"], "brain_mask_mm": None, "bias_correct": False}  # no stage-03 record
    assert manifest["inference_source"]["from"] == str(out / "postprocessing.json")
    assert manifest["inference_source"]["validation_score"] == pytest.approx(0.5)


def test_end_to_end_ensemble_tta_is_reproducible(tiny_work, tmp_path):
    root, src = tiny_work
    work = tmp_path / "work"
    shutil.copytree(src, work, ignore=shutil.ignore_patterns("08_fusion"))
    kw = dict(ensemble=True, tta=True, methods=["axial", "mean", "vote"], qc=False, save_probabilities=True)
    res = _run(root, work, **kw)
    # ensemble of all folds: axial mean of GOOD, ZERO, GOOD -> ~2/3 on the lesion -> still perfect
    assert res["selected_folds"] == {"axial": [1, 2, 3], "sagittal": [1, 2, 3], "coronal": [1, 2]}
    df = pd.read_csv(work / "08_fusion" / "subject_metrics.csv")
    got = df[(df["subject"] == "sub-h1")].set_index("method")["dice"]
    assert got["axial"] == pytest.approx(1.0) and got["mean"] == pytest.approx(1.0)
    prob = nib.load(work / "08_fusion" / "probabilities" / "sub-h1_axial.nii.gz")
    assert prob.get_data_dtype() == np.float32
    p = np.asarray(prob.dataobj)
    t1, truth = _subject_volumes(0)
    assert p[truth > 0].min() == pytest.approx(2 / 3, abs=1e-3)
    assert got["selected"] == pytest.approx(1.0)
    outputs = ("subject_metrics.csv", "summary.csv", "postprocessing.json", "postprocessing_candidates.csv")
    first = {name: (work / "08_fusion" / name).read_bytes() for name in outputs}
    _run(root, work, **kw)
    for name in outputs:
        assert (work / "08_fusion" / name).read_bytes() == first[name], name


# --- evaluate-only without TensorFlow models ----------------------------------------------------


def test_evaluate_only_missing_corrupt_and_wrong_grid_predictions(tmp_path):
    root, work = tmp_path / "data", tmp_path / "work"
    names = ["sub-a", "sub-b", "sub-c", "sub-d", "sub-e"]
    _make_dataset(root, work, [(n, "holdout", None) for n in names])
    pred = tmp_path / "pred"
    pred.mkdir()
    _, truth_a = _subject_volumes(0)
    _write(pred / "sub-a_mine.nii.gz", truth_a, np.uint8)  # perfect
    shifted = np.roll(truth_a, 1, axis=0)
    _write(pred / "sub-b_mine.nii.gz", shifted, np.uint8)  # off by one voxel along x
    (pred / "sub-c_mine.nii.gz").write_bytes(b"not a nifti at all")  # corrupt
    _write(pred / "sub-d_mine.nii.gz", np.zeros((12, 16, 13)), np.uint8)  # wrong grid
    # sub-e: no prediction at all
    res = F.evaluate_only({"fusion": {"qc": True}}, {"work_dir": str(work), "data_root": str(root)}, pred)
    assert res["methods"] == ["mine"]
    df = pd.read_csv(work / "08_fusion" / "evaluate_pred" / "subject_metrics.csv").set_index("subject")
    assert list(df.index) == names
    assert df.loc["sub-a", "dice"] == 1.0
    _, truth_b = _subject_volumes(1)
    assert df.loc["sub-b", "dice"] == pytest.approx(M.dice(np.roll(truth_a, 1, axis=0), truth_b))
    assert df.loc[["sub-c", "sub-d", "sub-e"], "dice"].isna().all()
    assert "sub-c_mine.nii.gz" in df.loc["sub-c", "error"]
    assert "shape" in df.loc["sub-d", "error"]
    assert "not found" in df.loc["sub-e", "error"]
    summary = pd.read_csv(work / "08_fusion" / "evaluate_pred" / "summary.csv")
    assert summary.loc[0, "n"] == 5 and summary.loc[0, "n_failed"] == 3
    assert (work / "08_fusion" / "evaluate_pred" / "qc" / "sub-b_qc.png").is_file()
    with pytest.raises(InputError, match=f"^{re.escape(str(tmp_path / 'nope'))}: prediction directory not found$"):
        F.evaluate_only({}, {"work_dir": str(work), "data_root": str(root)}, tmp_path / "nope")


def test_cli_main_writes_outputs(tmp_path):
    root, work = tmp_path / "data", tmp_path / "work"
    _make_dataset(root, work, [("sub-a", "holdout", None)])
    pred = tmp_path / "pred"
    _, truth = _subject_volumes(0)
    _write(pred / "sub-a.nii.gz", truth, np.uint8)
    assert F.main(["--work-dir", str(work), "--data-root", str(root), "--evaluate-only", str(pred), "--no-qc"]) == 0
    df = pd.read_csv(work / "08_fusion" / "evaluate_pred" / "subject_metrics.csv")
    assert df["method"].tolist() == ["prediction"] and df["dice"].tolist() == [1.0]
    assert not (work / "08_fusion" / "evaluate_pred" / "qc").exists()


def test_data_root_is_honoured_and_a_missing_one_refused(tiny_work, tmp_path, capsys):
    """Issue repro: ``fuse.py --data-root /nonexistent`` exited 0 and scored 6 subjects (absolute paths in
    subjects.csv were used instead). Paths are relative to the data root, which must exist."""
    from conftest import run_stage

    root, work = tiny_work
    subjects = pd.read_csv(work / "01_dataset" / "subjects.csv")
    assert not any(Path(p).is_absolute() for p in subjects["t1_path"])
    copy = tmp_path / "work"
    shutil.copytree(work, copy, ignore=shutil.ignore_patterns("08_fusion"))
    code, _, err = run_stage(F.main, ["--work-dir", copy, "--data-root", tmp_path / "nonexistent", "--no-qc"], capsys)
    assert code == 2 and err == [f"error: {tmp_path / 'nonexistent'}: data root not found (--data-root: the folder "
                                 "that contains Training/)"]
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    res = _run(moved, copy, qc=False, select=False)
    assert res["n_subjects"] == 4 and res["n_failed"] == 2  # the same subjects fail as from the original root


def test_stage_08_uses_the_run_name_of_stage_07s_settings(tiny_work, tmp_path):
    """Stage 08 fuses the models stage 07 trained with the run's settings: loss dice -> 07_train/raxnet-dice."""
    root, work = tiny_work
    copy = tmp_path / "work"
    shutil.copytree(work, copy, ignore=shutil.ignore_patterns("08_fusion"))
    (copy / "07_train" / "raxnet").rename(copy / "07_train" / "raxnet-dice")
    fusion = {k: v for k, v in F.DEFAULTS.items() if k != "model"}
    cfg = {"train": {"loss": "dice"}, "fusion": {**fusion, "qc": False, "select": False, "methods": ["mean"]}}
    res = F.run(cfg, {"work_dir": str(copy), "data_root": str(root)})
    assert json.loads((copy / "08_fusion" / "fusion.json").read_text())["model"] == "raxnet-dice"
    assert res["n_subjects"] == 4


def test_a_model_keras_swapped_in_after_stage_07_is_refused(tiny_work, tmp_path):
    """A model.keras that is not the one its run.json records (copied in from another run) must not be fused
    silently; the recorded one passes."""
    from raxnet import record
    from raxnet.errors import StageInputError

    root, work = tiny_work
    copy = tmp_path / "work"
    shutil.copytree(work, copy, ignore=shutil.ignore_patterns("08_fusion"))
    d = copy / "07_train" / "raxnet" / "axial" / "fold_1"
    info = json.loads((d / "run.json").read_text())
    (d / "run.json").write_text(json.dumps({**info, "model_sha256": record.sha256_file(d / "model.keras")}))
    res = _run(root, copy, qc=False, select=False, methods=["mean"])
    assert res["n_subjects"] == 4  # recorded model: fused as before
    shutil.copy(copy / "07_train" / "raxnet" / "axial" / "fold_2" / "model.keras", d / "model.keras")
    with pytest.raises(StageInputError, match=r"axial/fold_1/model.keras: not the model stage 07 wrote"):
        _run(root, copy, qc=False, select=False, methods=["mean"])
