"""Stage 03 (raxnet.slices): conversion round trip, axis conventions, resumability, bad subjects."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from raxnet.errors import InputError, StageInputError
from raxnet.intensity import normalise
from raxnet.planes import PLANES
from raxnet.slices import convert, load_volume_from_stacks, open_stack, run

SHAPE = (7, 9, 11)  # three different sizes so any axis mix-up changes a shape
AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])
REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


def _subject(root: Path, name: str, seed: int) -> tuple[str, str, np.ndarray]:
    rng = np.random.default_rng(seed)
    t1 = rng.uniform(10, 500, SHAPE).astype(np.float32)
    t1[0] = 0  # background
    mask = np.zeros(SHAPE, np.uint8)
    mask[2:4, 3:6, 4:7] = 1
    return (_write(root / f"{name}_T1w.nii.gz", t1), _write(root / f"{name}_mask.nii.gz", mask), t1)


@pytest.fixture
def work(tmp_path: Path) -> tuple[Path, dict, dict]:
    """A work dir with subjects.csv + split.csv for 3 train subjects and 1 hold-out subject."""
    data = tmp_path / "data"
    rows, vols = [], {}
    for i, name in enumerate(["s01", "s02", "s03", "s04"]):
        t1, msk, vol = _subject(data, name, i)
        rows.append({"subject": name, "site": "R001", "t1_path": t1, "mask_path": msk,
                     "lesion_voxels": 18, "spacing_mm": 1})
        vols[name] = vol
    w = tmp_path / "work"
    (w / "01_dataset").mkdir(parents=True)
    (w / "02_data_splitting").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(w / "01_dataset" / "subjects.csv", index=False)
    split = pd.DataFrame({"subject": ["s01", "s02", "s03", "s04"], "site": "R001", "lesion_voxels": 18,
                          "volume_bin": "b", "set": ["train", "train", "train", "holdout"]})
    split.to_csv(w / "02_data_splitting" / "split.csv", index=False)
    run_cfg = {"work_dir": str(w), "data_root": str(data), "seed": 0, "jobs": 1}
    return w, run_cfg, vols


def test_round_trip_and_index(work):
    w, run_cfg, vols = work
    index = convert({"convert": {"brain_mask": False}}, run_cfg)
    assert sorted(index["subject"].unique()) == ["s01", "s02", "s03"]  # hold-out left out by default
    assert len(index) == 3 * len(PLANES)
    row = index[(index.subject == "s02") & (index.plane == "axial")].iloc[0]
    assert (row.n_slices, row.height, row.width) == (11, 7, 9)
    row = index[(index.subject == "s02") & (index.plane == "sagittal")].iloc[0]
    assert (row.n_slices, row.height, row.width) == (7, 9, 11)
    row = index[(index.subject == "s02") & (index.plane == "coronal")].iloc[0]
    assert (row.n_slices, row.height, row.width) == (9, 7, 11)
    assert row.image_path == "coronal/s02_image.npy"
    assert pd.read_csv(w / "03_moving_converting" / "index.csv").equals(index)

    expected = normalise(vols["s02"])
    for plane in PLANES:
        vol, mask = load_volume_from_stacks(w, "s02", plane=plane)
        # float16 keeps ~11 significant bits: relative error <= 2**-11 on values in [0, 1.5]
        np.testing.assert_allclose(vol, expected, rtol=2**-11, atol=1e-7)
        assert mask.sum() == 2 * 3 * 3 and mask[2:4, 3:6, 4:7].all()

    img, msk = open_stack(w, "s02", "axial")
    assert isinstance(img, np.memmap) and img.dtype == np.float16 and msk.dtype == np.uint8
    assert img.flags.c_contiguous and img.shape == (11, 7, 9)


def test_axis_conventions(work):
    """A voxel at (x, y, z) is in sagittal slice x, coronal slice y, axial slice z."""
    w, run_cfg, _ = work
    mask = np.zeros(SHAPE, np.uint8)
    mask[5, 2, 8] = 1
    _write(Path(run_cfg["data_root"]) / "s01_mask.nii.gz", mask)
    convert({}, run_cfg)
    for plane, (i, r, c) in {"sagittal": (5, 2, 8), "coronal": (2, 5, 8), "axial": (8, 5, 2)}.items():
        _, msk = open_stack(w / "03_moving_converting", "s01", plane)
        assert msk[i, r, c] == 1 and msk.sum() == 1, plane


def test_holdout_and_planes_option(work):
    w, run_cfg, _ = work
    index = convert({"convert": {"planes": "axial"}}, run_cfg, include_holdout=True)
    assert set(index["set"]) == {"train", "holdout"} and set(index["plane"]) == {"axial"}
    assert not (w / "03_moving_converting" / "sagittal").exists()


def test_resume_skips_and_redoes_corrupt(work):
    w, run_cfg, _ = work
    first = convert({}, run_cfg)
    stage = w / "03_moving_converting"
    img = stage / "axial" / "s01_image.npy"
    other = stage / "axial" / "s03_image.npy"
    mtime_other = other.stat().st_mtime_ns
    good = img.read_bytes()
    img.write_bytes(good[: len(good) // 2])  # truncated .npy: header promises more data than there is
    second = convert({}, run_cfg)
    assert other.stat().st_mtime_ns == mtime_other  # untouched subject skipped
    assert img.read_bytes() == good  # corrupted stack redone, byte-identical
    assert second.equals(first)
    wrong = stage / "coronal" / "s02_mask.npy"
    np.save(wrong, np.zeros((9, 7, 11), np.float32))  # right shape, wrong dtype -> redone
    convert({}, run_cfg)
    assert np.load(wrong).dtype == np.uint8


def test_bad_subject_goes_to_errors(work):
    w, run_cfg, _ = work
    data = Path(run_cfg["data_root"])
    _write(data / "s02_mask.nii.gz", np.zeros((7, 9, 12), np.uint8))  # wrong grid
    (data / "s03_T1w.nii.gz").write_bytes(b"not a nifti")  # corrupt
    summary = run({}, run_cfg)
    assert summary["subjects"] == 1 and summary["n_errors"] == 2
    errors = pd.read_csv(w / "03_moving_converting" / "errors.csv")
    assert list(errors["subject"]) == ["s02", "s03"]
    assert "s02_mask.nii.gz" in errors.loc[0, "error"] and "s03_T1w.nii.gz" in errors.loc[1, "error"]
    assert not (w / "03_moving_converting" / "axial" / "s02_image.npy").exists()
    with pytest.raises(StageInputError):
        open_stack(w, "s02", "axial")


def test_parallel_matches_serial(work, tmp_path):
    w, run_cfg, _ = work
    convert({}, run_cfg)
    serial = {p.name: p.read_bytes() for p in (w / "03_moving_converting" / "axial").glob("*.npy")}
    par_dir = tmp_path / "work_par"
    (par_dir).mkdir()
    for sub in ("01_dataset", "02_data_splitting"):
        (par_dir / sub).symlink_to(w / sub)
    convert({}, {**run_cfg, "work_dir": str(par_dir), "jobs": 2})
    par = {p.name: p.read_bytes() for p in (par_dir / "03_moving_converting" / "axial").glob("*.npy")}
    assert par == serial


def test_missing_inputs_and_cli(work, tmp_path):
    _, run_cfg, _ = work
    with pytest.raises(StageInputError, match="split.csv"):
        convert({}, {**run_cfg, "work_dir": str(tmp_path / "empty")})
    script = REPO / "03_moving_converting" / "convert_to_2d.py"
    proc = subprocess.run([sys.executable, str(script), "--work-dir", str(tmp_path / "empty")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "split.csv" in proc.stderr
    proc = subprocess.run([sys.executable, str(script), "--work-dir", run_cfg["work_dir"], "--all",
                           "--data-root", run_cfg["data_root"], "--planes", "axial"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "4 subject(s)" in proc.stdout


def test_open_stack_rejects_bad_file(work):
    w, run_cfg, _ = work
    convert({"convert": {"planes": "axial"}}, run_cfg)
    (w / "03_moving_converting" / "axial" / "s01_mask.npy").write_bytes(b"garbage")
    with pytest.raises(InputError, match="s01_mask.npy"):
        open_stack(w, "s01", "axial")


def test_empty_t1_is_refused_and_exit_code_is_1(work, capsys):
    """Issue repro: an all-zero T1 was converted and trained on."""
    from conftest import run_stage

    from raxnet.slices import main

    w, run_cfg, _ = work
    data = Path(run_cfg["data_root"])
    _write(data / "s02_T1w.nii.gz", np.zeros(SHAPE, np.float32))
    code, out, err = run_stage(main, ["--work-dir", w, "--data-root", data], capsys)
    assert code == 1 and not err and "1 subject(s) failed" in out
    errors = pd.read_csv(w / "03_moving_converting" / "errors.csv")
    assert errors["error"].tolist() == [f"{data / 's02_T1w.nii.gz'}: the T1w image is empty (every voxel is 0); "
                                        "check the file, or remove this subject"]


def test_full_disk_is_one_error_line_exit_3(work, capsys, monkeypatch):
    """Issue repro: a full disk (Errno 28) in stage 03 gave a traceback."""
    import errno
    import os

    from conftest import run_stage

    from raxnet import io as rio
    from raxnet.slices import main

    def full(file, arr, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(rio.np, "save", full)
    w, run_cfg, _ = work
    code, out, err = run_stage(main, ["--work-dir", w, "--data-root", run_cfg["data_root"]], capsys)
    assert code == 3 and len(err) == 1, (out, err)
    assert err[0].startswith(f"error: {w / '03_moving_converting' / 'axial' / 's01_image.npy'}: No space left on device")
    assert "free space or choose another --work-dir" in err[0]


def test_work_dir_that_is_a_file_is_one_error_line_exit_3(tmp_path, capsys):
    """Issue repro: NotADirectoryError / FileExistsError tracebacks for an output folder that is a file."""
    from conftest import run_stage

    from raxnet.slices import main

    (tmp_path / "work").write_text("a file")
    code, _, err = run_stage(main, ["--work-dir", tmp_path / "work"], capsys)
    assert code == 3 and err == [f"error: {tmp_path / 'work' / '03_moving_converting'}: Not a directory; a part "
                                 "of this path is a file, not a folder: choose another --work-dir / --output"]


def test_brain_mask_step_zeroes_outside_and_is_recorded(tmp_path, monkeypatch):
    """A coarse MNI grid (20 mm voxels over the whole head): stage 03 writes exactly brainmask.prepare's
    output, zero beyond the dilated template brain; convert.json records the setting; changing it redoes
    every subject."""
    from raxnet import brainmask

    affine = np.diag([20.0, 20.0, 20.0, 1.0])
    affine[:3, 3] = (-70.0, -110.0, -80.0)
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    t1 = rng.uniform(10, 500, SHAPE).astype(np.float32)
    mask = np.zeros(SHAPE, np.uint8)
    mask[3, 4, 5] = 1
    t1p, mp = _write(root / "a_T1w.nii.gz", t1, affine), _write(root / "a_mask.nii.gz", mask, affine)
    w = tmp_path / "work"
    (w / "01_dataset").mkdir(parents=True)
    (w / "02_data_splitting").mkdir(parents=True)
    pd.DataFrame({"subject": ["a"], "t1_path": [t1p], "mask_path": [mp]}).to_csv(w / "01_dataset" / "subjects.csv", index=False)
    pd.DataFrame({"subject": ["a"], "set": ["train"]}).to_csv(w / "02_data_splitting" / "split.csv", index=False)
    run_cfg = {"work_dir": str(w), "data_root": str(root), "jobs": 1}
    convert({"convert": {"planes": "axial", "brain_mask_mm": 6.0}}, run_cfg)
    vol, _ = load_volume_from_stacks(w, "a", plane="axial")
    keep = brainmask.brain_mask(affine, SHAPE, 6.0)
    assert 0 < keep.sum() < keep.size  # the grid reaches beyond the head
    assert not vol[~keep].any() and (vol[keep] > 0).any()
    np.testing.assert_allclose(vol, brainmask.prepare(t1, affine, 6.0), rtol=2**-11, atol=1e-7)
    assert brainmask.read_record(w / "03_moving_converting") == (True, 6.0)
    stack = w / "03_moving_converting" / "axial" / "a_image.npy"
    before = stack.stat().st_mtime_ns
    convert({"convert": {"planes": "axial", "brain_mask": False}}, run_cfg)
    assert stack.stat().st_mtime_ns != before  # setting changed: converted again
    assert brainmask.read_record(w / "03_moving_converting") == (True, None)
    np.testing.assert_allclose(load_volume_from_stacks(w, "a", plane="axial")[0], normalise(t1), rtol=2**-11, atol=1e-7)
    # the bias-correction step: stacks of prepare(..., bias_correct=True), recorded, redone when switched on
    monkeypatch.setattr(brainmask, "n4_correct", lambda v, spacing: v * np.linspace(1.0, 2.0, v.shape[0])[:, None, None])
    sources = w / "03_moving_converting" / "sources" / "a.json"
    assert "bias_correct" not in json.loads(sources.read_text())  # off: the record made before the setting existed
    before = stack.stat().st_mtime_ns
    convert({"convert": {"planes": "axial", "brain_mask": True, "brain_mask_mm": 6.0, "bias_correct": True}}, run_cfg)
    assert stack.stat().st_mtime_ns != before and json.loads(sources.read_text())["bias_correct"] is True
    assert brainmask.read_bias_correct(w / "03_moving_converting") is True
    np.testing.assert_allclose(load_volume_from_stacks(w, "a", plane="axial")[0],
                               brainmask.prepare(t1, affine, 6.0, bias_correct=True), rtol=2**-11, atol=1e-7)
