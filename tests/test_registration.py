"""raxnet.registration: NIfTI <-> ANTs geometry, input checks, the cost-function mask, and registrations of
synthetic scans moved off MNI by a known transform (2 mm, cheap settings)."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("ants")

from raxnet import native_synthetic as ns  # noqa: E402
from raxnet import registration as reg  # noqa: E402
from raxnet import templates  # noqa: E402
from raxnet.errors import InputError  # noqa: E402


def test_to_ants_matches_ants_reading_the_same_nifti(tmp_path):
    import ants

    rot = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    affine = np.eye(4)
    affine[:3, :3] = ns.LPS @ rot @ np.diag([1.0, 1.2, 0.9])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    data = np.random.default_rng(1).random((5, 6, 7)).astype(np.float32)
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, tmp_path / "x.nii.gz")
    read = ants.image_read(str(tmp_path / "x.nii.gz"))
    ours = reg.to_ants(data, affine)
    assert np.allclose(ours.origin, read.origin, atol=1e-4)
    assert np.allclose(ours.spacing, read.spacing, atol=1e-5)
    assert np.allclose(ours.direction, read.direction, atol=1e-5)
    assert np.array_equal(ours.numpy(), read.numpy())


def test_check_registrable_refuses_2d_thin_and_sheared_images():
    path = Path("scan_T1w.nii.gz")
    ok = np.eye(4)
    reg.check_registrable(np.zeros((100, 100, 80)), nib.Nifti1Image(np.zeros((1, 1, 1)), ok), path)
    with pytest.raises(InputError, match=r"scan_T1w\.nii\.gz: a 2D image"):
        reg.check_registrable(np.zeros((100, 100, 1)), nib.Nifti1Image(np.zeros((1, 1, 1)), ok), path)
    with pytest.raises(InputError, match="too thin"):
        reg.check_registrable(np.zeros((100, 100, 10)), nib.Nifti1Image(np.zeros((1, 1, 1)), np.diag([1, 1, 3, 1.0])), path)
    sheared = np.eye(4)
    sheared[0, 1] = 0.3
    with pytest.raises(InputError, match="shear"):
        reg.check_registrable(np.zeros((100, 100, 80)), nib.Nifti1Image(np.zeros((1, 1, 1)), sheared), path)


def test_cost_function_mask_is_the_dilated_brain_without_the_dilated_lesion():
    s = reg.Settings(spacing=2, brain_dilation_mm=4.0, lesion_dilation_mm=4.0)
    brain = templates.template_data("brain_mask", 2) > 0.5
    mask = reg.cost_function_mask(s)
    assert mask[brain].all() and mask.sum() > brain.sum()
    # dilated by 2 voxels: no mask voxel is more than 2 voxels from the brain
    from scipy import ndimage

    assert ndimage.distance_transform_edt(~brain)[mask].max() <= 2.0 + 1e-6
    lesion = np.zeros(brain.shape, bool)
    lesion[30:36, 60:66, 50:56] = True
    masked = reg.cost_function_mask(s, lesion, templates.template("t1", 2).affine)
    near = ndimage.distance_transform_edt(~lesion) <= 2.0  # voxels within 4 mm of the lesion
    assert near[32, 63, 57] and not near[32, 63, 58] and not masked[near].any()
    assert masked[brain & ~near].all()
    # a lesion given on the 1 mm grid lands on the same voxels
    lesion_1mm = np.zeros(templates.grid(1)[0], bool)
    lesion_1mm[60:72, 120:132, 100:112] = True
    masked_1mm = reg.cost_function_mask(s, lesion_1mm, templates.grid(1)[1])
    assert np.array_equal(masked_1mm, masked)
