"""Stage 01 end to end on a tiny synthetic ATLAS tree with good and bad subjects."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from raxnet import dataset_info
from raxnet.atlas import MASK_SUFFIX, T1_SUFFIX
from raxnet.errors import InputError

REPO = Path(__file__).resolve().parents[1]
SHAPE = (12, 14, 10)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
AFFINE[:3, 3] = [-12.0, -14.0, -10.0]  # array x index 6 is x = 0 mm


def _paths(root: Path, sub: str, site: str = "R001", ext: str = ".nii.gz") -> tuple[Path, Path]:
    anat = root / "Training" / site / sub / "ses-1" / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    return anat / f"{sub}_ses-1{T1_SUFFIX}{ext}", anat / f"{sub}_ses-1{MASK_SUFFIX}{ext}"


def _write(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    nib.save(nib.Nifti1Image(data, affine), str(path))


def _t1() -> np.ndarray:
    t1 = np.zeros(SHAPE, np.float32)
    t1[1:-1, 1:-1, 1:-1] = 100.0
    return t1


def _good(root: Path, sub: str, voxels: list[tuple[int, int, int]], ext: str = ".nii.gz", site: str = "R001") -> None:
    t1_path, mask_path = _paths(root, sub, site, ext)
    mask = np.zeros(SHAPE, np.uint8)
    for v in voxels:
        mask[v] = 1
    _write(t1_path, _t1())
    _write(mask_path, mask)


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "ATLAS_2"
    _good(root, "sub-r001s001", [(3, 4, 5), (3, 4, 6)])  # left (x = -6 mm), 2 voxels
    _good(root, "sub-r002s001", [(9, 2, 7), (10, 3, 8)], ext=".nii", site="R002")  # right, corner-touching
    # bad subjects
    t1, mask = _paths(root, "sub-r001s101")  # truncated gzip
    _write(t1, _t1())
    _write(mask, np.ones(SHAPE, np.uint8))
    mask.write_bytes(mask.read_bytes()[:60])
    t1, mask = _paths(root, "sub-r001s102")  # 4D T1
    _write(t1, np.zeros(SHAPE + (2,), np.float32))
    _write(mask, np.zeros(SHAPE, np.uint8))
    t1, mask = _paths(root, "sub-r001s103")  # shape mismatch
    _write(t1, _t1())
    _write(mask, np.zeros((12, 14, 9), np.uint8))
    t1, mask = _paths(root, "sub-r001s104")  # NaN in the T1
    bad = _t1()
    bad[5, 5, 5] = np.nan
    _write(t1, bad)
    _write(mask, np.zeros(SHAPE, np.uint8))
    t1, mask = _paths(root, "sub-r001s105")  # non-binary mask
    _write(t1, _t1())
    labels = np.zeros(SHAPE, np.uint8)
    labels[2, 2, 2], labels[3, 3, 3] = 1, 2
    _write(mask, labels)
    t1, mask = _paths(root, "sub-r001s106")  # affine mismatch
    _write(t1, _t1())
    _write(mask, np.zeros(SHAPE, np.uint8), np.eye(4))
    t1, _ = _paths(root, "sub-r001s107")  # unlabelled: not an error
    _write(t1, _t1())
    return root


BAD = {
    "sub-r001s101": ("mask", "cannot read"),
    "sub-r001s102": ("T1w", "3D"),
    "sub-r001s103": ("mask", "shape"),
    "sub-r001s104": ("T1w", "NaN"),
    "sub-r001s105": ("mask", "not binary"),
    "sub-r001s106": ("mask", "affine"),
}


def _run(root: Path, work: Path, jobs: int = 1) -> dict:
    cfg = {"dataset": {"dpi": 40}}  # small figures: the test checks they are written, not how they look
    return dataset_info.run(cfg, {"data_root": str(root), "work_dir": str(work), "seed": 1, "jobs": jobs})


def test_stage_good_and_bad_subjects(tree: Path, tmp_path: Path) -> None:
    res = _run(tree, tmp_path / "work")
    out = tmp_path / "work" / "01_dataset"
    assert res["processed"] == 2 and res["errors"] == 6 and res["found"] == 9 and res["labelled"] == 8

    subjects = pd.read_csv(out / "subjects.csv")
    assert list(subjects.columns) == dataset_info.SUBJECT_COLUMNS
    assert subjects["subject"].tolist() == ["sub-r001s001", "sub-r002s001"]
    s1, s2 = subjects.iloc[0], subjects.iloc[1]
    assert (s1.lesion_voxels, s1.lesion_volume_mm3, s1.n_lesions, s1.hemisphere) == (2, 16.0, 1, "left")
    assert (s1.centroid_x_mm, s1.centroid_y_mm, s1.centroid_z_mm) == (-6.0, -6.0, 1.0)
    assert (s2.n_lesions, str(s2.lesion_sizes), s2.site, s2.hemisphere) == (1, "2", "R002", "right")
    assert s1["shape"] == "12x14x10" and str(s1.spacing_mm) == "2x2x2"

    errors = pd.read_csv(out / "errors.csv")
    assert list(errors.columns) == ["subject", "file", "error"]
    assert errors["subject"].tolist() == sorted(BAD)
    for _, e in errors.iterrows():
        kind, words = BAD[e.subject]
        assert Path(e.file).name.endswith(f"{kind}.nii.gz"), e.subject
        assert e.error.startswith(e.file) and words in e.error, e.error

    # slice CSVs: a lesion voxel at (i, j, k) shows up at slice i (sagittal), j (coronal), k (axial)
    for plane, n, hits in [("sagittal", 12, [3]), ("coronal", 14, [4]), ("axial", 10, [5, 6])]:
        sl = pd.read_csv(out / f"slices_{plane}.csv")
        assert list(sl.columns) == ["subject", "slice", "lesion_pixels", "n_lesions", "brain_pixels"]
        one = sl[sl.subject == "sub-r001s001"]
        assert len(one) == n and len(sl) == 2 * n
        assert one.loc[one.lesion_pixels > 0, "slice"].tolist() == hits
        assert one.lesion_pixels.sum() == 2
    sag = pd.read_csv(out / "slices_sagittal.csv")
    # off the ATLAS grid brain_pixels is the T1 foreground: 12 x 8 interior voxels per inner sagittal slice
    assert sag.brain_pixels.tolist()[:2] == [0, 12 * 8]
    ax = pd.read_csv(out / "slices_axial.csv")
    two = ax[ax.subject == "sub-r002s001"].set_index("slice")
    assert two.loc[7, "n_lesions"] == 1 and two.loc[8, "n_lesions"] == 1

    summary = json.loads((out / "summary.json").read_text())
    assert summary["unlabelled"] == 1 and summary["processed"] == 2 and summary["errors"] == 6
    assert summary["lesion_volume_mm3"]["q50"] == 16.0
    assert summary["hemisphere_counts"] == {"left": 1, "right": 1}
    assert summary["connectivity"] == 26 and summary["slice_connectivity"] == 8  # recorded in the run
    for name in ("lesion_volume_distribution", "lesion_area_per_plane", "lesion_location", "lesion_frequency"):
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    freq = nib.load(str(out / "lesion_frequency.nii.gz")).get_fdata()
    assert freq.sum() == 4 and freq[3, 4, 5] == 1

    # re-running (here in parallel) gives byte-identical tables
    before = {f: (out / f).read_bytes() for f in ("subjects.csv", "slices_axial.csv", "errors.csv", "summary.json")}
    _run(tree, tmp_path / "work", jobs=2)
    assert {f: (out / f).read_bytes() for f in before} == before


def test_process_subject_missing_mask_names_file(tree: Path) -> None:
    t1, mask = _paths(tree, "sub-r001s001")
    row = {"subject": "sub-r001s001", "site": "R001", "t1_path": str(t1), "mask_path": str(mask) + ".gone"}
    with pytest.raises(InputError, match=r"\.gone: file not found"):
        dataset_info.process_subject(row)
    subject_row, planes = dataset_info.process_subject({**row, "mask_path": str(mask)})
    assert subject_row["lesion_voxels"] == 2 and set(planes) == {"axial", "sagittal", "coronal"}


def test_cli_exit_codes(tree: Path, tmp_path: Path) -> None:
    script = REPO / "01_dataset" / "extract_lesion_info.py"
    ok = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "--data-root" in ok.stdout
    bad_root = tmp_path / "bad"
    for sub in ("sub-r001s103", "sub-r001s105"):  # only unusable subjects
        src = tree / "Training" / "R001" / sub
        dst = bad_root / "Training" / "R001" / sub
        dst.parent.mkdir(parents=True, exist_ok=True)
        src.rename(dst)
    res = subprocess.run(
        [sys.executable, str(script), "--data-root", str(bad_root), "--work-dir", str(tmp_path / "w")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert "error:" in res.stderr and "none of the 2 labelled subjects" in res.stderr
    assert len(pd.read_csv(tmp_path / "w" / "01_dataset" / "errors.csv")) == 2
    res = subprocess.run(
        [sys.executable, str(script), "--data-root", str(tmp_path / "nowhere"), "--work-dir", str(tmp_path / "w")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2 and "data root not found" in res.stderr


def test_empty_and_shifted_scans_are_refused(tiny_atlas: Path, tmp_path: Path, capsys) -> None:
    """Issue repro: an all-zero T1 was accepted, and a T1 + mask pair shifted 60 mm off MNI space was
    accepted with ``location = outside``. Both are refused with one line; the stage exits 1 (some
    subjects failed) and keeps the good ones."""
    from conftest import run_stage

    root = tmp_path / "ATLAS_2"
    for t1 in sorted(tiny_atlas.glob("Training/*/*/ses-1/anat/*_T1w.nii.gz"))[:3]:
        dst = root / t1.parent.relative_to(tiny_atlas)
        dst.mkdir(parents=True)
        for f in t1.parent.iterdir():
            (dst / f.name).write_bytes(f.read_bytes())
    t1s = sorted(root.glob("Training/*/*/ses-1/anat/*_T1w.nii.gz"))
    empty, shifted = t1s[1], t1s[2]
    img = nib.load(str(empty))
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.int16), img.affine, img.header), str(empty))
    moved = np.array(nib.load(str(shifted)).affine)
    moved[0, 3] += 60.0
    for path in [shifted, *shifted.parent.glob("*_mask.nii.gz")]:
        src = nib.load(str(path))
        nib.save(nib.Nifti1Image(np.asarray(src.dataobj), moved, src.header), str(path))
    code, out, _ = run_stage(dataset_info.main, ["--data-root", root, "--work-dir", tmp_path / "w"], capsys)
    assert code == 1 and "2 subject(s) failed" in out
    errors = pd.read_csv(tmp_path / "w" / "01_dataset" / "errors.csv").set_index("file")["error"]
    assert errors[str(empty)] == f"{empty}: the T1w image is empty (every voxel is 0); check the file, or remove this subject"
    assert errors[str(shifted)].startswith(f"{shifted}: not in MNI152NLin2009aSym space (")
    assert "register it to MNI152NLin2009aSym first" in errors[str(shifted)]
    assert len(pd.read_csv(tmp_path / "w" / "01_dataset" / "subjects.csv")) == 1
