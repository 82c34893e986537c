"""raxnet.io: validated NIfTI reading and atomic writers."""

import errno
import gzip
import os

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from raxnet.errors import EXIT_IO, InputError, OutputError
from raxnet.io import (
    atomic_path,
    check_same_grid,
    clean_temp_files,
    is_temp_file,
    make_dirs,
    read_mask,
    read_t1,
    read_volume,
    save_csv,
    save_json,
    save_nifti,
    save_npy,
)

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
AFFINE[:3, 3] = [-98, -134, -72]


def write(path, data, affine=AFFINE, dtype=np.float32):
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=dtype), affine), str(path))
    return path


def test_read_volume_roundtrip(tmp_path):
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    vol, img = read_volume(write(tmp_path / "a.nii.gz", data))
    np.testing.assert_array_equal(vol, data)
    assert vol.dtype == np.float32
    np.testing.assert_allclose(img.affine, AFFINE)


def test_read_volume_squeezes_singleton_time(tmp_path):
    vol, _ = read_volume(write(tmp_path / "a.nii.gz", np.ones((2, 3, 4, 1))))
    assert vol.shape == (2, 3, 4)


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("four_d.nii.gz", np.ones((2, 3, 4, 2)), "expected a 3D image"),
        ("nan.nii.gz", np.where(np.eye(4)[:2, :, None] > 0, np.nan, 1.0) * np.ones((2, 4, 3)), "NaN/Inf"),
    ],
)
def test_read_volume_refuses_bad_images(tmp_path, name, data, message):
    path = write(tmp_path / name, data)
    with pytest.raises(InputError, match=message) as err:
        read_volume(path)
    assert name in str(err.value)


def test_read_volume_missing_and_truncated(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_volume(tmp_path / "missing.nii.gz")
    path = write(tmp_path / "t.nii.gz", np.random.default_rng(0).random((20, 20, 20)))
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2])[:-8])  # truncated gzip stream
    with pytest.raises(InputError, match="t.nii.gz"):
        read_volume(path)
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti at all")
    with pytest.raises(InputError, match="junk.nii.gz"):
        read_volume(tmp_path / "junk.nii.gz")


def test_read_mask_binary_rules(tmp_path):
    m, _ = read_mask(write(tmp_path / "m255.nii.gz", np.array([[[0, 255], [255, 0]]]), dtype=np.uint8))
    assert m.dtype == np.uint8 and m.sum() == 2 and m.max() == 1
    m, _ = read_mask(write(tmp_path / "empty.nii.gz", np.zeros((2, 2, 2))))
    assert m.sum() == 0
    with pytest.raises(InputError, match="not binary"):
        read_mask(write(tmp_path / "labels.nii.gz", np.array([[[0, 1], [2, 0]]])))
    with pytest.raises(InputError, match="not binary"):
        read_mask(write(tmp_path / "prob.nii.gz", np.array([[[0.5, 1.0], [1.0, 0.5]]])))


def test_check_same_grid(tmp_path):
    a = nib.Nifti1Image(np.zeros((2, 3, 4), np.float32), AFFINE)
    check_same_grid(a, nib.Nifti1Image(np.zeros((2, 3, 4), np.uint8), AFFINE.copy()), "a", "b")
    with pytest.raises(InputError, match="shape"):
        check_same_grid(a, nib.Nifti1Image(np.zeros((2, 3, 5), np.uint8), AFFINE), "a", "b")
    shifted = AFFINE.copy()
    shifted[0, 3] += 1
    with pytest.raises(InputError, match="affine"):
        check_same_grid(a, nib.Nifti1Image(np.zeros((2, 3, 4), np.uint8), shifted), "a", "b")


def test_save_nifti_keeps_affine_header_and_uint8(tmp_path):
    ref_img = nib.Nifti1Image(np.zeros((2, 3, 4), np.int16), AFFINE)
    ref_img.header.set_slope_inter(2.0, 1.0)
    ref_img.header["descrip"] = b"reference"
    out = save_nifti(np.ones((2, 3, 4)), ref_img, tmp_path / "mask.nii.gz")
    back = nib.load(str(out))
    assert back.get_data_dtype() == np.uint8
    np.testing.assert_allclose(back.affine, AFFINE)
    assert back.header["descrip"].tobytes().startswith(b"reference")
    assert np.asarray(back.dataobj).max() == 1  # no slope applied
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz"]


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_save_csv_and_json_are_deterministic(tmp_path):
    import pandas as pd

    df = pd.DataFrame({"b": [1, 2], "a": ["x", "y"]})
    p1 = save_csv(df, tmp_path / "t.csv").read_bytes()
    p2 = save_csv(df, tmp_path / "t.csv").read_bytes()
    assert p1 == p2 == b"b,a\n1,x\n2,y\n"
    j = save_json({"z": np.int64(3), "a": np.float32(0.5)}, tmp_path / "s.json").read_text()
    assert j.index('"a"') < j.index('"z"') and '"z": 3' in j


def test_atomic_outputs_get_normal_permissions(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        path = save_json({"a": 1}, tmp_path / "x.json")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_read_t1_refuses_an_empty_scan(tmp_path):
    """Issue repro: an all-zero T1 was accepted (trained on, predicted with 0 lesions)."""
    path = write(tmp_path / "zero_T1w.nii.gz", np.zeros((4, 5, 6)))
    with pytest.raises(InputError, match=r"zero_T1w.nii.gz: the T1w image is empty \(every voxel is 0\)"):
        read_t1(path)
    data, _ = read_t1(write(tmp_path / "ok.nii.gz", np.arange(120).reshape(4, 5, 6)))
    assert data.max() == 119


@pytest.mark.parametrize("code, hint", [(errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only"),
                                        (errno.EACCES, "no permission")])
def test_write_failures_are_one_output_error_naming_the_file(tmp_path, monkeypatch, code, hint):
    """A full disk or read-only folder while writing: OutputError (exit code 3) naming the output."""
    def failing_save(file, arr, *args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OutputError) as exc:
        save_npy(np.zeros(3), tmp_path / "x_mask.npy")
    assert exc.value.exit_code == EXIT_IO
    assert str(exc.value).startswith(f"{tmp_path / 'x_mask.npy'}: {os.strerror(code)}; ") and hint in str(exc.value)
    assert list(tmp_path.iterdir()) == []  # the temporary file is removed


def test_output_below_a_file_is_one_output_error(tmp_path):
    """Issue repro: an output folder that is a file gave a NotADirectoryError traceback."""
    (tmp_path / "work").write_text("not a folder")
    for target in (tmp_path / "work" / "01_dataset" / "a.csv", tmp_path / "work" / "b.csv"):
        with pytest.raises(OutputError, match="is a file, not a folder|Not a directory"):
            save_csv(pd.DataFrame({"a": [1]}), target)
    with pytest.raises(OutputError, match="work: Not a directory; a part of this path is a file"):
        make_dirs(tmp_path / "work")


def test_h5py_style_errno_in_text_is_understood(tmp_path):
    from raxnet.io import os_error_message

    exc = OSError("Unable to synchronously create file (file write failed: errno = 28, error message = 'x')")
    assert "No space left on device; the disk is full" in os_error_message(exc, tmp_path / "w.h5")
    exc = OSError("1100385 requested and 55232 written")  # NumPy's short write on a full disk
    assert os_error_message(exc, "x.npy") == ("x.npy: only 55232 of 1100385 bytes written; the disk is full: "
                                              "free space or choose another --work-dir / --output")


def test_stale_temp_files_are_recognised_and_cleaned(tmp_path):
    """Issue repro: a SIGKILL left .last.keras.*.keras and .<subject>_mask.npy.*.npy forever."""
    names = [".last.keras.k2j_h4g5.keras", ".sub-r001s001_mask.npy.a1b2c3d4.npy", ".errors.csv.q9w8e7r6.csv",
             ".best.weights.h5.abcdefgh.weights.h5", ".summary.txt.0a1b2c3d.txt"]
    keep = [".gitignore", ".last.keras", "last.keras", ".sub_mask.npy.toolong123.npy", ".x.npy.a1b2c3d4.csv"]
    (tmp_path / "deep" / "er").mkdir(parents=True)
    for i, name in enumerate(names + keep):
        (tmp_path / ("deep/er" if i % 2 else "") / name).write_text("x")
    assert all(is_temp_file(n) for n in names) and not any(is_temp_file(n) for n in keep)
    removed = clean_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted(names)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(keep)
    # The names atomic_path really uses are recognised.
    for target in ("out.nii.gz", "last.keras", "index.csv", "noext"):
        with atomic_path(tmp_path / target) as tmp:
            assert is_temp_file(tmp.name), tmp.name
            tmp.write_text("x")


def test_voxel_spacing_from_the_affine_hand_values() -> None:
    from raxnet.io import voxel_spacing

    assert voxel_spacing(np.diag([2.0, 3.0, 4.0, 1.0])) == (2.0, 3.0, 4.0)
    # axes permuted and flipped (i -> -y, j -> x, k -> z), 1.5 mm along the first array axis
    aff = np.array([[0, 1, 0, 0], [-1.5, 0, 0, 0], [0, 0, 2.5, 0], [0, 0, 0, 1]], float)
    assert voxel_spacing(aff) == pytest.approx((1.5, 1.0, 2.5))
    # 45-degree rotation in-plane: column norms, not the diagonal
    c = np.sqrt(0.5)
    assert voxel_spacing(np.array([[c, -c, 0, 0], [c, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])) == pytest.approx((1, 1, 1))
