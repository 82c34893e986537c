"""raxnet.weights: weight sets are built from the best inner-validation fold per plane."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from raxnet.errors import InputError, StageInputError
from raxnet.weights import MANIFEST, export_weights, read_manifest

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def fake_run(tmp_path, losses):
    """A work dir with subjects.csv and 07_train/raxnet/<plane>/fold_<k>/{model.keras, run.json}."""
    t1 = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), AFFINE), str(t1))
    (tmp_path / "01_dataset").mkdir()
    pd.DataFrame({"subject": ["s1"], "t1_path": [str(t1)]}).to_csv(tmp_path / "01_dataset" / "subjects.csv")
    for plane in ("axial", "sagittal", "coronal"):
        for fold, loss in losses.items():
            d = tmp_path / "07_train" / "raxnet" / plane / f"fold_{fold}"
            d.mkdir(parents=True)
            (d / "model.keras").write_bytes(f"{plane}-{fold}".encode())
            (d / "run.json").write_text(json.dumps({"best_val_loss": loss, "best_epoch": 3, "input_shape": [8, 8, 1],
                                                    "seed": 20261}))
    return tmp_path


def test_export_picks_lowest_inner_validation_loss(tmp_path):
    work = fake_run(tmp_path, {1: 0.40, 2: 0.25, 3: 0.31})
    out = export_weights(work, tmp_path / "w", note="unit test")
    manifest = read_manifest(out)
    assert manifest["grid_shape"] == [4, 5, 6]
    np.testing.assert_allclose(manifest["affine"], AFFINE)
    for plane in ("axial", "sagittal", "coronal"):
        assert manifest["planes"][plane]["fold"] == 2
        assert (out / f"{plane}.keras").read_bytes() == f"{plane}-2".encode()
    assert manifest["note"] == "unit test"
    assert manifest["training_data"] == {"seed": 20261}  # no stage-04 fold table: only the seed


def test_export_refuses_a_model_that_is_not_the_one_stage_07_wrote(tmp_path):
    from raxnet.record import sha256_file

    work = fake_run(tmp_path, {1: 0.40, 2: 0.25})
    d = work / "07_train" / "raxnet" / "sagittal" / "fold_2"
    info = json.loads((d / "run.json").read_text())
    (d / "run.json").write_text(json.dumps({**info, "model_sha256": sha256_file(d / "model.keras")}))
    assert (export_weights(work, tmp_path / "ok") / "sagittal.keras").read_bytes() == b"sagittal-2"
    (d / "model.keras").write_bytes(b"sagittal-1")  # another run's model copied in
    with pytest.raises(StageInputError, match=r"sagittal/fold_2/model.keras: not the model stage 07 wrote"):
        export_weights(work, tmp_path / "swapped")
    assert not (tmp_path / "swapped").exists()  # refused before any plane was copied or the folder made


def test_manifest_records_the_subjects_the_models_trained_on(tmp_path):
    work = fake_run(tmp_path, {1: 0.40, 2: 0.25, 3: 0.31})
    (work / "04_cross_validation").mkdir()
    pd.DataFrame({"subject": ["a", "b", "c", "d"], "fold": [1, 2, 3, 3]}).to_csv(
        work / "04_cross_validation" / "subject_folds.csv", index=False)
    data = read_manifest(export_weights(work, tmp_path / "w"))["training_data"]
    # Fold 2 was chosen for every plane: its subject b never trained a model; a, c, d did.
    assert data == {"seed": 20261, "n_subjects_trained_on": 3, "subjects_trained_on": ["a", "c", "d"]}


def test_manifest_of_adopted_networks_carries_their_training_data(tmp_path):
    (tmp_path / "run").mkdir()
    work = fake_run(tmp_path / "run", {1: 0.40, 2: 0.25, 3: 0.31})
    (work / "04_cross_validation").mkdir()
    pd.DataFrame({"subject": ["a", "b", "c", "d"], "fold": [1, 2, 3, 3]}).to_csv(
        work / "04_cross_validation" / "subject_folds.csv", index=False)
    # the weight set the networks are then adopted from (stage 07 --epochs 0): trained on a, c, d of seed 20261
    source = export_weights(work, tmp_path / "source")
    trained_on = {"seed": 20261, "n_subjects_trained_on": 3, "subjects_trained_on": ["a", "c", "d"]}
    assert read_manifest(source)["training_data"] == trained_on

    def adopt(plane, folder=source):
        d = work / "07_train" / "raxnet" / plane / "fold_2"
        info = json.loads((d / "run.json").read_text())
        (d / "run.json").write_text(json.dumps({**info, "adopted": True, "init_weights": {"weights": str(folder)}}))

    adopt("coronal")
    data = read_manifest(export_weights(work, tmp_path / "w"))["training_data"]
    # one plane adopted: axial and sagittal trained on a, c, d; the coronal network's data is its source's
    assert data["adopted"] == ["coronal"] and data["subjects_trained_on"] == ["a", "c", "d"]
    assert data["init_weights"]["coronal"]["weights"] == str(source)
    adopt("axial")
    adopt("sagittal")
    data = read_manifest(export_weights(work, tmp_path / "w2"))["training_data"]
    # all three from one set: its record, and the run's fold-2 subject that chose the post-processing
    assert data == {**trained_on, "adopted_from": str(source),
                    "post_processing_chosen_on": {"seed": 20261, "n_subjects": 1, "subjects": ["b"]}}


def test_manifest_errors(tmp_path):
    with pytest.raises(InputError, match="weight manifest not found"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"grid_shape": [1, 1, 1], "affine": [], "planes": {"axial": {"file": "a.keras"}}}))
    with pytest.raises(InputError, match="a.keras: model file for plane axial not found"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"grid_shape": [1, 1, 1], "affine": [], "planes": {"axial": {"fold": 1}}}))
    with pytest.raises(InputError, match=r"weights.json: plane axial names no model file \('file', or 'files'"):
        read_manifest(tmp_path)


def test_export_without_training_is_a_clear_error(tmp_path):
    work = fake_run(tmp_path, {})
    with pytest.raises(StageInputError, match="no fold_<k>/model.keras"):
        export_weights(work, tmp_path / "w")


def test_manifest_carries_inference_decisions(tmp_path):
    from raxnet.weights import INFERENCE_KEYS

    work = fake_run(tmp_path, {1: 0.40, 2: 0.25})
    manifest = read_manifest(export_weights(work, tmp_path / "w"))
    assert manifest["format"] == 2 and manifest["inference"] == INFERENCE_KEYS
    chosen = {"fusion": "vote", "threshold": 0.4, "min_lesion_mm3": 64.0}
    manifest = read_manifest(export_weights(work, tmp_path / "w2", inference=chosen))
    assert manifest["inference"] == {**INFERENCE_KEYS, **chosen}
    with pytest.raises(InputError, match="threshold"):
        export_weights(work, tmp_path / "w3", inference={"threshold": 1.5})
    with pytest.raises(ValueError, match="unknown inference setting"):
        export_weights(work, tmp_path / "w3", inference={"brain_mask": True})
    large = {"threshold": 0.3, "large_mm3": 5000.0, "large_threshold": 0.6, "large_fragment_mm3": 500.0}
    assert read_manifest(export_weights(work, tmp_path / "w4", inference=large))["inference"]["large_mm3"] == 5000.0
    with pytest.raises(InputError, match="large_threshold must be above threshold"):  # would redraw nothing
        export_weights(work, tmp_path / "w3", inference={**large, "large_threshold": 0.3})
    with pytest.raises(InputError, match="large_mm3 and large_fragment_mm3 must be >= 0"):
        export_weights(work, tmp_path / "w3", inference={**large, "large_fragment_mm3": -1})


def test_manifest_records_stage_03_brain_mask(tmp_path):
    """What the models saw: stage 03's brain-mask record goes into the manifest (none recorded: none)."""
    from raxnet.brainmask import write_record

    work = fake_run(tmp_path, {1: 0.40})
    assert read_manifest(export_weights(work, tmp_path / "w"))["inference"]["brain_mask_mm"] is None
    (work / "03_moving_converting").mkdir()
    write_record(work / "03_moving_converting", 6.0)
    assert read_manifest(export_weights(work, tmp_path / "w2"))["inference"]["brain_mask_mm"] == 6.0
    with pytest.raises(InputError, match="brain_mask_mm"):
        export_weights(work, tmp_path / "w3", inference={"brain_mask_mm": -2})
    assert read_manifest(tmp_path / "w2")["inference"]["bias_correct"] is False
    write_record(work / "03_moving_converting", 6.0, bias_correct=True)  # N4 too: predict must run it
    assert read_manifest(export_weights(work, tmp_path / "w4"))["inference"]["bias_correct"] is True
    with pytest.raises(InputError, match=r"^export-weights: bias_correct must be true or false, got 1$"):
        export_weights(work, tmp_path / "w5", inference={"bias_correct": 1})


def test_format_1_manifest_reads_with_its_threshold(tmp_path):
    (tmp_path / "a.keras").write_bytes(b"")
    old = {"format": 1, "grid_shape": [1, 1, 1], "affine": np.eye(4).tolist(), "threshold": 0.4,
           "planes": {"axial": {"file": "a.keras"}}}
    (tmp_path / MANIFEST).write_text(json.dumps(old))
    inference = read_manifest(tmp_path)["inference"]
    assert inference["threshold"] == 0.4 and inference["fusion"] == "mean" and inference["min_lesion_mm3"] == 0
    (tmp_path / MANIFEST).write_text(json.dumps({**old, "inference": {"fusion": "median"}}))
    with pytest.raises(InputError, match="median"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({**old, "inference": {"brain": 1}}))
    with pytest.raises(InputError, match="unknown inference setting"):
        read_manifest(tmp_path)


def test_shipped_demo_manifest_is_format_2():
    from pathlib import Path

    manifest = read_manifest(Path(__file__).resolve().parents[1] / "weights" / "demo")
    assert manifest["format"] == 2
    # The shipped set carries stage 08's out-of-fold choice, the brain-mask step its models saw, and its
    # training seed (20262: no README example regenerates its subjects).
    inference = manifest["inference"]
    assert (inference["fusion"], inference["threshold"], inference["min_lesion_mm3"], inference["min_peak"]) == (
        "weighted", 0.3, 50.0, 0.7)
    # lesions of >= 10 mL redrawn at 0.5 (bench/results/size_rule_2026-12-07)
    assert (inference["large_mm3"], inference["large_threshold"], inference["large_fragment_mm3"]) == (
        10000.0, 0.5, 500.0)
    assert manifest["model"] == "raxnet-tversky_focal_slice"  # phase 2's loss (configs/weights_demo_restart.toml)
    assert inference["brain_mask_mm"] == 6.0
    assert "out-of-fold" in manifest["inference_source"]["on"]
    assert manifest["inference_source"]["metric"] == "dice_lesion_f1"
    data = manifest["training_data"]
    assert data["seed"] == 20262 and data["n_subjects_trained_on"] == len(data["subjects_trained_on"]) == 432
    # Phase 2 of `make weights` is a warm restart: each plane names the phase-1 network it started from.
    assert set(data["init_weights"]) == {"axial", "sagittal", "coronal"}
    assert all(len(i["sha256"]) == 64 and i["training_data"]["seed"] == 20262 for i in data["init_weights"].values())


def test_export_takes_stage08_choice_for_its_model_only(tmp_path, capsys):
    from raxnet.weights import INFERENCE_KEYS
    from raxnet.weights_cli import main

    work = fake_run(tmp_path, {1: 0.40, 2: 0.25})
    (work / "08_fusion").mkdir()
    chosen = {"fusion": "vote", "threshold": 0.4, "min_lesion_mm3": 50.0, "connectivity": 26, "tta": True,
              "weights": {}}
    record = {"model": "raxnet", "source": "out-of-fold", "inference": chosen,
              "chosen": {"metric": "dice", "score": 0.7, "n_subjects": 12}}
    (work / "08_fusion" / "postprocessing.json").write_text(json.dumps(record))
    assert main(["--work-dir", str(work), "--out", str(tmp_path / "w")]) == 0
    assert "fusion vote, threshold 0.4, min_lesion_mm3 50.0" in capsys.readouterr().out
    manifest = read_manifest(tmp_path / "w")
    # no stage-03 record: neither step; a stage-08 record from before the peak rule and the large-lesion
    # outline: min_peak 0 (keep all), large_mm3 0 (redraw none)
    assert manifest["inference"] == {**chosen, "min_peak": 0.0, "large_mm3": 0.0, "large_threshold": 0.0,
                                     "large_fragment_mm3": 0.0, "brain_mask_mm": None, "bias_correct": False}
    assert manifest["inference_source"]["validation_score"] == 0.7 and manifest["inference_source"]["n_subjects"] == 12
    # chosen for another model, or nothing chosen: the defaults, with the reason
    for other in ({**record, "model": "unet"}, {**record, "inference": None, "reason": "no out-of-fold subject"}):
        (work / "08_fusion" / "postprocessing.json").write_text(json.dumps(other))
        manifest = read_manifest(export_weights(work, tmp_path / "w2"))
        assert manifest["inference"] == INFERENCE_KEYS and manifest["inference_source"]["from"] == "defaults"
    assert "no out-of-fold subject" in manifest["inference_source"]["reason"]
    # an explicit choice wins over stage 08's
    manifest = read_manifest(export_weights(work, tmp_path / "w3", inference={"threshold": 0.6}))
    assert manifest["inference"]["threshold"] == 0.6 and manifest["inference_source"]["from"] == "given to export_weights"


def test_export_ensemble_ships_every_fold_and_follows_stage_08(tmp_path):
    from raxnet.weights import plane_files

    work = fake_run(tmp_path, {1: 0.40, 2: 0.25, 3: 0.31})
    (work / "04_cross_validation").mkdir()
    pd.DataFrame({"subject": ["a", "b", "c", "d"], "fold": [1, 2, 3, 3]}).to_csv(
        work / "04_cross_validation" / "subject_folds.csv", index=False)
    manifest = read_manifest(export_weights(work, tmp_path / "ens", ensemble=True))
    for plane in ("axial", "sagittal", "coronal"):
        entry = manifest["planes"][plane]
        assert entry["folds"] == [1, 2, 3] and entry["best_val_loss"] == [0.40, 0.25, 0.31]
        assert plane_files(manifest, plane) == [f"{plane}_fold{k}.keras" for k in (1, 2, 3)]
        for k in (1, 2, 3):
            assert (tmp_path / "ens" / f"{plane}_fold{k}.keras").read_bytes() == f"{plane}-{k}".encode()
    # every subject is outside some fold's outer-validation fold: all four trained a model
    assert manifest["training_data"]["subjects_trained_on"] == ["a", "b", "c", "d"]
    # a member missing: one error naming it
    (tmp_path / "ens" / "coronal_fold2.keras").unlink()
    with pytest.raises(InputError, match=r"coronal_fold2.keras: model file for plane coronal not found"):
        read_manifest(tmp_path / "ens")
    # by default, what stage 08 evaluated the hold-out with: all folds (its ensemble) ...
    (work / "08_fusion").mkdir()
    record = {"model": "raxnet", "holdout_folds": {p: [1, 2, 3] for p in ("axial", "sagittal", "coronal")}}
    (work / "08_fusion" / "fusion.json").write_text(json.dumps(record))
    assert read_manifest(export_weights(work, tmp_path / "d1"))["planes"]["axial"]["folds"] == [1, 2, 3]
    # ... and only those: a fold trained after stage 08 ran is not shipped unevaluated
    (work / "08_fusion" / "fusion.json").write_text(json.dumps(
        {**record, "holdout_folds": {p: [1, 3] for p in ("axial", "sagittal", "coronal")}}))
    assert read_manifest(export_weights(work, tmp_path / "d4"))["planes"]["axial"]["files"] == [
        "axial_fold1.keras", "axial_fold3.keras"]
    (work / "08_fusion" / "fusion.json").write_text(json.dumps(
        {**record, "holdout_folds": {p: [1, 4] for p in ("axial", "sagittal", "coronal")}}))
    with pytest.raises(StageInputError, match=r"fold\(s\) \[4\] that stage 08 evaluated the hold-out with are gone"):
        export_weights(work, tmp_path / "d5")
    (work / "08_fusion" / "fusion.json").write_text(json.dumps(record))
    # ... or the best fold, also when stage 08 ran for another model
    (work / "08_fusion" / "fusion.json").write_text(json.dumps({**record, "model": "unet"}))
    assert read_manifest(export_weights(work, tmp_path / "d2"))["planes"]["axial"]["fold"] == 2
    assert read_manifest(export_weights(work, tmp_path / "d3", ensemble=False))["planes"]["axial"]["fold"] == 2


def test_a_fold_ensemble_cannot_start_fine_tuning(tmp_path):
    from raxnet.errors import ConfigError
    from raxnet.training import init_source

    work = fake_run(tmp_path, {1: 0.40, 2: 0.25})
    ens = export_weights(work, tmp_path / "ens", ensemble=True)
    with pytest.raises(ConfigError, match=r"holds 2 axial models \(a fold ensemble\).*without --ensemble"):
        init_source(ens, "axial")
    assert init_source(export_weights(work, tmp_path / "one"), "axial")["file"].endswith("axial.keras")
