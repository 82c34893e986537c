"""`raxnet predict` end to end with the shipped weights (weights/demo) on generated scans."""

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from raxnet.cli_common import run_cli
from raxnet.predict import find_inputs, main, output_stem
from raxnet.weights import default_weights_dir, read_manifest

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights" / "demo"


def run_predict(args):
    with pytest.raises(SystemExit) as exc:
        run_cli(main, [str(a) for a in args])
    return exc.value.code


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """A generated 2 mm subject with an obvious lesion, as the user's own T1 (plus its true mask)."""
    from raxnet.synthetic import generate_subject

    manifest = read_manifest(WEIGHTS)
    for index in range(40):
        t1, mask, affine, _ = generate_subject(index, seed=2024, spacing=2)
        if mask.sum() * 8 > 20_000 and t1.shape == tuple(manifest["grid_shape"]):
            break
    folder = tmp_path_factory.mktemp("scan")
    img = nib.Nifti1Image(t1.astype(np.float32), affine)
    img.header["descrip"] = b"user scan"
    path = folder / "sub-01_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz"
    nib.save(img, str(path))
    return path, mask


@pytest.fixture(scope="module")
def predicted(scan, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    code = run_predict(["--input", scan[0], "--output", out, "--weights", WEIGHTS, "--save-uncertainty"])
    return code, out


def test_default_weights_are_shipped():
    assert default_weights_dir() == WEIGHTS or default_weights_dir().is_dir()
    manifest = read_manifest(WEIGHTS)
    assert set(manifest["planes"]) == {"axial", "sagittal", "coronal"}


def test_mask_on_input_grid_and_lesion_found(scan, predicted):
    code, out = predicted
    assert code == 0
    stem = "sub-01_ses-1_space-MNI152NLin2009aSym"
    mask_img = nib.load(str(out / f"{stem}_desc-lesion_mask.nii.gz"))
    src = nib.load(str(scan[0]))
    assert mask_img.shape == src.shape
    np.testing.assert_allclose(mask_img.affine, src.affine)
    assert mask_img.get_data_dtype() == np.uint8
    assert mask_img.header["descrip"].tobytes().startswith(b"user scan")
    pred = np.asarray(mask_img.dataobj) > 0
    truth = scan[1] > 0
    dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    assert dice > 0.3, f"obvious lesion not found (Dice {dice:.2f})"
    lesions = pd.read_csv(out / f"{stem}_lesions.csv")
    assert len(lesions) >= 1 and lesions["voxels"].sum() == pred.sum()
    # how sure each lesion is: the planes' mean probability over it, the share all three call lesion
    assert lesions["mean_probability"].between(0, 1).all() and lesions["plane_agreement"].between(0, 1).all()
    assert lesions["planes_detecting"].between(0, 3).all() and lesions.loc[0, "planes_detecting"] == 3
    assert lesions.loc[0, "mean_probability"] >= 0.5  # the largest lesion is a confident one
    summary = pd.read_csv(out / f"{stem}_summary.csv")
    assert summary.loc[0, "lesion_voxels"] == pred.sum()
    assert summary.loc[0, "lowest_plane_agreement"] == lesions["plane_agreement"].min()
    assert (out / f"{stem}_qc.png").stat().st_size > 10_000


def test_uncertainty_map_and_run_report(predicted):
    """--save-uncertainty: the plane spread on the input grid (0 .. 0.471), its overlay, and the batch report."""
    from html_checks import check_html

    code, out = predicted
    stem = "sub-01_ses-1_space-MNI152NLin2009aSym"
    unc = nib.load(str(out / f"{stem}_desc-uncertainty.nii.gz"))
    values = np.asarray(unc.dataobj)
    assert unc.get_data_dtype() == np.float32 and unc.shape == nib.load(str(out / f"{stem}_desc-lesion_mask.nii.gz")).shape
    assert values.min() >= 0 and 0 < values.max() <= np.std([0, 0, 1]) + 1e-6
    assert (out / f"{stem}_uncertainty.png").stat().st_size > 10_000
    batch = pd.read_csv(out / "summary.csv")
    assert batch["name"].tolist() == [stem] and batch["status"].tolist() == ["ok"]
    page = check_html(out / "report.html")
    assert f"{stem}_qc.png" in page.refs and f"{stem}_uncertainty.png" in page.refs
    log_text = (out / "log.txt").read_text()
    assert "raxnet predict started" in log_text and "\x1b" not in log_text


def test_other_grid_in_same_space_is_resampled(scan, tmp_path):
    """A 1 mm-grid scan is predicted on the weights' 2 mm grid and the mask comes back at 1 mm."""
    from nilearn.image import resample_img

    from raxnet.templates import grid

    shape, affine = grid(1)
    img1 = resample_img(nib.load(str(scan[0])), target_affine=affine, target_shape=shape,
                        interpolation="linear", force_resample=True, copy_header=True)
    path = tmp_path / "one_mm_T1w.nii.gz"
    nib.save(img1, str(path))
    assert run_predict(["--input", path, "--output", tmp_path / "o", "--weights", WEIGHTS, "--no-qc",
                        "--save-probabilities", "--save-uncertainty"]) == 0
    mask = nib.load(str(tmp_path / "o" / "one_mm_desc-lesion_mask.nii.gz"))
    assert mask.shape == shape and np.allclose(mask.affine, affine)
    assert np.asarray(mask.dataobj).sum() > 0
    prob = nib.load(str(tmp_path / "o" / "one_mm_desc-lesion_probability.nii.gz"))
    assert prob.shape == shape and prob.get_data_dtype() == np.float32
    values = np.asarray(prob.dataobj)
    assert 0.0 <= values.min() and values.max() <= 1.0 and values.max() > 0.5
    unc = nib.load(str(tmp_path / "o" / "one_mm_desc-uncertainty.nii.gz"))  # resampled back like the mask
    assert unc.shape == shape and np.allclose(unc.affine, affine)
    lesions = pd.read_csv(tmp_path / "o" / "one_mm_lesions.csv")  # read on the 2 mm grid through the affines
    assert lesions["plane_agreement"].notna().all() and lesions["mean_probability"].between(0, 1).all()


def bad_inputs(folder, good):
    img = nib.load(str(good))
    data = np.asarray(img.dataobj, dtype=np.float32)
    nib.save(nib.Nifti1Image(np.stack([data, data], -1), img.affine), str(folder / "fourd_T1w.nii.gz"))
    nan = data.copy()
    nan[10, 10, 10] = np.nan
    nib.save(nib.Nifti1Image(nan, img.affine), str(folder / "nan_T1w.nii.gz"))
    (folder / "corrupt_T1w.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    far = img.affine.copy()
    far[:3, 3] += 400.0  # field of view nowhere near the template
    nib.save(nib.Nifti1Image(data, far), str(folder / "native_T1w.nii.gz"))
    return {
        "fourd_T1w.nii.gz": "3D",
        "nan_T1w.nii.gz": "NaN",
        "corrupt_T1w.nii.gz": "cannot read",
        "native_T1w.nii.gz": "not in MNI152NLin2009aSym space",
    }


def test_bad_inputs_are_refused_one_line_exit_2(scan, tmp_path, capsys):
    cases = bad_inputs(tmp_path, scan[0])
    for name, message in cases.items():
        code = run_predict(["--input", tmp_path / name, "--output", tmp_path / "o", "--weights", WEIGHTS])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, name
        assert err[-1].startswith("error: ") and name in err[-1] and message in err[-1], err[-1]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").glob("*mask*"))


def test_folder_run_goes_on_and_lists_failures(scan, tmp_path, capsys):
    bad_inputs(tmp_path, scan[0])
    good = tmp_path / "sub-02_T1w.nii.gz"
    good.write_bytes(Path(scan[0]).read_bytes())
    code = run_predict(["--input", tmp_path, "--output", tmp_path / "o", "--weights", WEIGHTS, "--no-qc"])
    out = capsys.readouterr().out
    assert code == 1
    assert "4 scan(s) failed" in out and "1 scan(s) segmented" in out
    assert (tmp_path / "o" / "sub-02_desc-lesion_mask.nii.gz").is_file()
    # the batch table: one row per input, the failed ones with their error
    batch = pd.read_csv(tmp_path / "o" / "summary.csv", keep_default_na=False)
    cases = bad_inputs(tmp_path, scan[0])
    assert len(batch) == 5 and set(batch["input"].map(lambda p: Path(p).name)) == set(cases) | {good.name}
    for row in batch.itertuples():
        name = Path(row.input).name
        if name == good.name:
            assert row.status == "ok" and row.error == "" and float(row.lesion_voxels) > 0 and float(row.seconds) > 0
        else:
            assert row.status == "failed" and name in row.error and cases[name] in row.error
            assert row.lesion_voxels == ""
    from html_checks import check_html

    page = check_html(tmp_path / "o" / "report.html")
    assert sum(i.startswith("scan-") for i in page.ids) == 5


def test_console_script_and_errors(tmp_path):
    """The installed entry point (the one the Docker image runs) refuses a missing input with exit 2."""
    proc = subprocess.run([sys.executable, "-m", "raxnet", "predict", "--input", str(tmp_path / "nope.nii.gz"),
                           "--output", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'nope.nii.gz'}: input not found"


def test_names_and_discovery(tmp_path):
    assert output_stem("a/sub-1_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz") == "sub-1_ses-1_space-MNI152NLin2009aSym"
    assert output_stem("scan.nii") == "scan"
    for name in ("a_T1w.nii.gz", "b.nii", "a_label-L_desc-T1lesion_mask.nii.gz", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in find_inputs(tmp_path)] == ["a_T1w.nii.gz", "b.nii"]


# --------------------------------------------------------------- the weight set's inference decisions

PROB_AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _probabilities():
    """Hand-made plane probabilities on a 6x6x6 grid (2 mm voxels, 8 mm³), isolated voxels A, B, D and a
    2-voxel blob E:  A (.9, .3, .4): mean .533, 1 vote at .5, 2 at .35;  B (.55, .55, 0): mean .367,
    2 votes at .5 and .35;  D (.9, .2, .2): mean .433, 1 vote at .35;  E (.9, .9, .9) on 2 voxels."""
    probs = {p: np.zeros((6, 6, 6), np.float32) for p in ("axial", "sagittal", "coronal")}
    for (x, y, z), values in {(0, 0, 0): (.9, .3, .4), (0, 4, 0): (.55, .55, 0), (4, 0, 0): (.9, .2, .2),
                              (4, 4, 4): (.9, .9, .9), (4, 4, 5): (.9, .9, .9)}.items():
        for p, v in zip(probs, values):
            probs[p][x, y, z] = v
    return probs


def _fixed_weight_set(folder, inference):
    folder.mkdir()
    planes = {p: {"file": f"{p}.keras"} for p in ("axial", "sagittal", "coronal")}
    for p in planes:
        (folder / f"{p}.keras").write_bytes(b"")
    manifest = {"format": 2, "grid_shape": [6, 6, 6], "affine": PROB_AFFINE.tolist(), "spacing_mm": [2.0, 2.0, 2.0],
                "planes": planes, "inference": inference}
    (folder / "weights.json").write_text(json.dumps(manifest))
    return folder


def test_predict_uses_the_manifest_decisions_and_flags_override(tmp_path, monkeypatch):
    import raxnet.predict as predict_module

    class FixedProbabilities(predict_module.Predictor):
        @property
        def models(self):
            return {}

        def probabilities(self, volume, source="volume"):
            return _probabilities()

    monkeypatch.setattr(predict_module, "Predictor", FixedProbabilities)
    weights = _fixed_weight_set(tmp_path / "w", {"fusion": "vote", "threshold": 0.35})
    scan = tmp_path / "scan_T1w.nii.gz"
    data = np.full((6, 6, 6), 100.0, np.float32)
    data[5, 5, 5] = 0.0  # not an empty (constant) scan, which predict refuses
    nib.save(nib.Nifti1Image(data, PROB_AFFINE), str(scan))

    def lesion_voxels(*flags):
        out = tmp_path / f"o{len(list(tmp_path.iterdir()))}"
        assert run_predict(["--input", scan, "--output", out, "--weights", weights, "--no-qc", *flags]) == 0
        mask = np.asarray(nib.load(str(out / "scan_desc-lesion_mask.nii.gz")).dataobj)
        summary = pd.read_csv(out / "scan_summary.csv").iloc[0]
        return {tuple(int(i) for i in v) for v in np.argwhere(mask)}, summary

    A, B, D, E = (0, 0, 0), (0, 4, 0), (4, 0, 0), {(4, 4, 4), (4, 4, 5)}
    got, summary = lesion_voxels()  # the manifest's: vote at 0.35
    assert got == {A, B} | E
    assert summary["fusion"] == "vote" and summary["threshold"] == 0.35 and summary["connectivity"] == 26
    assert lesion_voxels("--fusion", "mean")[0] == {A, B, D} | E  # mean at the manifest's 0.35
    assert lesion_voxels("--threshold", "0.5")[0] == {B} | E  # vote at 0.5
    assert lesion_voxels("--min-lesion-mm3", "16")[0] == E  # 8 mm³ single voxels removed, the 16 mm³ blob kept
    # vote's lesions whose peak (the planes' mean) is under 0.5 removed: B (.367) goes, A (.533) and E stay
    assert lesion_voxels("--min-peak", "0.5")[0] == {A} | E
    # the large-lesion outline: lesions of >= 16 mm³ (E alone) redrawn where the planes' mean is >= 0.95: E goes
    got, summary = lesion_voxels("--large-mm3", "16", "--large-threshold", "0.95")
    assert got == {A, B} and summary["large_mm3"] == 16.0 and summary["large_threshold"] == 0.95
    assert lesion_voxels("--large-mm3", "16", "--large-threshold", "0.85")[0] == {A, B} | E  # E's .9 stays
    # the clean-up size comes from the manifest as well
    (tmp_path / "w2").mkdir()
    weights = _fixed_weight_set(tmp_path / "w2" / "set", {"fusion": "mean", "threshold": 0.5, "min_lesion_mm3": 9.0})
    assert lesion_voxels()[0] == E  # mean at 0.5: A and E; A (8 mm³) is under 9 mm³
    # the brain-mask step: the manifest's, or the flags'; reported in the summary
    assert np.isnan(lesion_voxels()[1]["brain_mask_mm"])  # none recorded: none applied
    (tmp_path / "w3").mkdir()
    weights = _fixed_weight_set(tmp_path / "w3" / "set", {"brain_mask_mm": 6.0})
    assert lesion_voxels()[1]["brain_mask_mm"] == 6.0
    assert lesion_voxels("--brain-mask-mm", "2")[1]["brain_mask_mm"] == 2.0
    assert np.isnan(lesion_voxels("--no-brain-mask")[1]["brain_mask_mm"])
    # the bias-correction step likewise: the manifest's, or the flag's
    assert not lesion_voxels()[1]["bias_correct"]
    (tmp_path / "w4").mkdir()
    weights = _fixed_weight_set(tmp_path / "w4" / "set", {"bias_correct": True})
    assert lesion_voxels()[1]["bias_correct"] and not lesion_voxels("--no-bias-correct")[1]["bias_correct"]


def test_same_file_name_in_two_folders_writes_two_sets_of_outputs(scan, tmp_path, capsys):
    """Issue repro: a/dup_T1w.nii.gz and b/dup_T1w.nii.gz were both reported segmented, but the second
    overwrote the first's outputs. Outputs now mirror the input's relative path."""
    src = tmp_path / "in"
    for sub in ("a", "b"):
        (src / sub).mkdir(parents=True)
        (src / sub / "dup_T1w.nii.gz").write_bytes(Path(scan[0]).read_bytes())
    out = tmp_path / "out"
    assert run_predict(["--input", src, "--output", out, "--weights", WEIGHTS, "--no-qc"]) == 0
    for sub in ("a", "b"):
        assert (out / sub / "dup_desc-lesion_mask.nii.gz").is_file() and (out / sub / "dup_lesions.csv").is_file()
    batch = pd.read_csv(out / "summary.csv")
    assert batch["name"].tolist() == ["a/dup", "b/dup"] and (batch["status"] == "ok").all()
    assert batch["mask"].tolist() == [str(out / "a" / "dup_desc-lesion_mask.nii.gz"),
                                      str(out / "b" / "dup_desc-lesion_mask.nii.gz")]


def test_output_names_mirror_folders_and_refuse_what_would_collide(tmp_path):
    from raxnet.errors import InputError
    from raxnet.predict import output_names

    root = tmp_path / "in"
    files = [root / "a" / "dup_T1w.nii.gz", root / "b" / "dup_T1w.nii.gz", root / "top_T1w.nii"]
    assert output_names(files, root) == ["a/dup", "b/dup", "top"]
    assert output_names([files[2]]) == ["top"]
    with pytest.raises(InputError, match=r"x_T1w.nii: would write the same outputs \(x_\*\) as .*x_T1w.nii.gz"):
        output_names([root / "x_T1w.nii.gz", root / "x_T1w.nii"], root)


def test_oversized_and_empty_scans_are_refused_before_reading(scan, tmp_path, capsys):
    """Issue repro: a 600³ float32 input took 6.7 GB; an all-zero T1 was 'segmented' with 0 lesions."""
    header = nib.Nifti1Header()
    header.set_data_shape((600, 600, 600))
    header.set_data_dtype(np.float32)
    header.set_sform(nib.load(str(scan[0])).affine, code=4)
    huge = tmp_path / "huge_T1w.nii"
    huge.write_bytes(header.binaryblock + b"\0" * 4)  # the header alone: the data is never read
    code = run_predict(["--input", huge, "--output", tmp_path / "o", "--weights", WEIGHTS])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"error: {huge}: 600x600x600 = 216 M voxels, 25 times a 1 mm MNI152 volume "
                                 "(at most 4 times is read); resample it to 1 mm MNI152NLin2009aSym first"]
    img = nib.load(str(scan[0]))
    empty = tmp_path / "empty_T1w.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.float32), img.affine), str(empty))
    code = run_predict(["--input", empty, "--output", tmp_path / "o", "--weights", WEIGHTS])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"error: {empty}: the T1w image is empty (every voxel is 0); check the file, "
                                 "or remove this subject"]


def test_io_failure_stops_the_batch_with_exit_3(scan, tmp_path, capsys, monkeypatch):
    """Issue repro: predict exited 1 both when some scans failed and when an I/O failure (Errno 28)
    stopped the batch after the first scan. A full disk now stops the batch: one line, exit code 3."""
    import errno
    import os

    from raxnet import io as rio

    src = tmp_path / "in"
    src.mkdir()
    for name in ("sub-01_T1w.nii.gz", "sub-02_T1w.nii.gz"):
        (src / name).write_bytes(Path(scan[0]).read_bytes())
    calls = []

    def full_disk(img, filename):
        calls.append(filename)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(rio.nib, "save", full_disk)
    code = run_predict(["--input", src, "--output", tmp_path / "out", "--weights", WEIGHTS, "--no-qc"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 3 and len(calls) == 1  # the second scan was not attempted
    assert err == [f"error: {tmp_path / 'out' / 'sub-01_desc-lesion_mask.nii.gz'}: No space left on device; "
                   "the disk is full: free space or choose another --work-dir / --output"]
    monkeypatch.undo()
    (tmp_path / "file").write_text("not a folder")
    code = run_predict(["--input", src / "sub-01_T1w.nii.gz", "--output", tmp_path / "file" / "o",
                        "--weights", WEIGHTS])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 3 and len(err) == 1 and "is a file, not a folder" in err[0]



@pytest.mark.slow
def test_whole_head_scan_gives_the_brain_only_mask() -> None:
    """The same subject (seed 7, never trained on; a 50 mL lesion) brain-only and whole-head:
    with the weight set's brain-mask step the masks agree; without it the head ruins the whole-head one.
    Weights trained without the step (none recorded) get the undilated mask (0 mm), the input closest to
    the brain-only scans they saw."""
    from raxnet import synthetic
    from raxnet.metrics import dice
    from raxnet.predict import Predictor

    brain_only, truth, _, _ = synthetic.generate_subject(6, 7, 2)
    head = synthetic.generate_subject(6, 7, 2, params={"whole_head": True})[0]
    predictor = Predictor(WEIGHTS)
    recorded = predictor.settings["brain_mask_mm"]
    predictor.settings["brain_mask_mm"] = 0.0 if recorded is None else recorded
    a = predictor.mask(predictor.probabilities(brain_only))
    b = predictor.mask(predictor.probabilities(head))
    assert a.sum() > 0.3 * truth.sum() and dice(a, truth) > 0.3  # a real prediction, not an empty mask
    assert dice(a, b) > 0.9
    predictor.settings["brain_mask_mm"] = None
    c = predictor.mask(predictor.probabilities(head))
    assert dice(c, truth) < dice(b, truth) - 0.2


def test_a_fold_ensemble_weight_set_averages_its_models(scan, tmp_path):
    """A weight set with two models per plane (``files``, as ``export-weights --ensemble`` writes it) predicts
    the mean of what its two members predict alone."""
    import shutil

    import keras

    from raxnet.predict import Predictor, to_model_grid

    manifest = read_manifest(WEIGHTS)
    ens, other = tmp_path / "ensemble", tmp_path / "other"
    ens.mkdir()
    other.mkdir()
    for p in ("axial", "sagittal", "coronal"):
        shutil.copyfile(WEIGHTS / f"{p}.keras", ens / f"{p}_fold1.keras")
        model = keras.saving.load_model(str(WEIGHTS / f"{p}.keras"), compile=False)
        last = model.get_layer("head_logits")
        kernel, bias = last.get_weights()
        last.set_weights([kernel, bias - 1.5])  # another member: lower logits everywhere
        model.save(str(ens / f"{p}_fold2.keras"))
        shutil.copyfile(ens / f"{p}_fold2.keras", other / f"{p}.keras")
    members = {p: {"files": [f"{p}_fold1.keras", f"{p}_fold2.keras"], "folds": [1, 2]} for p in manifest["planes"]}
    (ens / "weights.json").write_text(json.dumps({**manifest, "planes": members}))
    (other / "weights.json").write_text(json.dumps(manifest))

    img = nib.load(str(scan[0]))
    on_grid, _ = to_model_grid(np.asarray(img.dataobj, np.float32), img, read_manifest(WEIGHTS), str(scan[0]))
    mean_of = Predictor(ens).probabilities(on_grid)
    first, second = Predictor(WEIGHTS).probabilities(on_grid), Predictor(other).probabilities(on_grid)
    for p in mean_of:
        assert not np.allclose(first[p], second[p], atol=1e-3)
        np.testing.assert_allclose(mean_of[p], (first[p] + second[p]) / 2, atol=1e-5)
