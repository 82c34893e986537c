"""raxnet.io: validated NIfTI reading and atomic writers."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from raxnet.errors import InputError
from raxnet.io import (
    atomic_path,
    check_same_grid,
    read_mask,
    read_volume,
    save_csv,
    save_json,
    save_nifti,
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
