"""raxnet.native_synthetic: known transforms off MNI, the native grid and the exact inverse."""

import nibabel as nib
import numpy as np

from raxnet import native_synthetic as ns


def _transform(seed=0, **kw):
    return ns.random_transform(np.random.default_rng(seed), **kw)


def test_inverse_undoes_the_transform():
    tr = _transform(3)
    pts = np.random.default_rng(1).uniform(-80, 80, (500, 3))
    assert np.abs(tr.inverse(tr(pts)) - pts).max() < 1e-3
    # the warp is mild but present: at most warp_mm, and not zero
    disp = np.linalg.norm(tr.displacement(pts), axis=1)
    assert 0.1 < disp.max() <= 2.0 + 1e-9


def test_random_transform_bounds():
    for seed in range(5):
        tr = _transform(seed, rotation_deg=10, shift_mm=5, scale=0.05, shear=0.0, warp_mm=0.0)
        lin = tr.affine[:3, :3]
        assert np.all(np.abs(tr.affine[:3, 3]) <= 5)
        sv = np.linalg.svd(lin, compute_uv=False)
        assert sv.min() >= 0.95 - 1e-9 and sv.max() <= 1.05 + 1e-9
        # rotation angle of the closest rotation <= sqrt(3) * 10 degrees (three axes)
        u, _, vt = np.linalg.svd(lin)
        angle = np.degrees(np.arccos((np.trace(u @ vt) - 1) / 2))
        assert angle <= np.sqrt(3) * 10 + 1e-6


def test_native_grid_is_lps_with_the_voxel_size_and_holds_the_moved_grid():
    mni_shape, mni_affine = (20, 24, 18), np.array([[2.0, 0, 0, -20], [0, 2, 0, -24], [0, 0, 2, -18], [0, 0, 0, 1]])
    tr = _transform(5, warp_mm=0.0)
    shape, affine = ns.native_grid(tr, mni_shape, mni_affine, voxel_mm=(1.0, 1.0, 1.2))
    assert nib.aff2axcodes(affine) == ("L", "P", "S")
    assert np.allclose(np.linalg.norm(affine[:3, :3], axis=0), [1.0, 1.0, 1.2])
    # every MNI grid corner, mapped back to native world, falls inside the native grid
    ijk = np.array([[i, j, k] for i in (0, 19) for j in (0, 23) for k in (0, 17)], float)
    world = tr.inverse(ijk @ mni_affine[:3, :3].T + mni_affine[:3, 3])
    vox = world @ np.linalg.inv(affine)[:3, :3].T + np.linalg.inv(affine)[:3, 3]
    assert (vox >= 0).all() and (vox <= np.array(shape) - 1).all()


def test_a_landmark_lands_where_the_inverse_transform_puts_it():
    mni_shape, mni_affine = (40, 48, 36), np.array([[2.0, 0, 0, -40], [0, 2, 0, -48], [0, 0, 2, -36], [0, 0, 0, 1]])
    vol = np.zeros(mni_shape, np.float32)
    vol[24:27, 30:33, 10:13] = 1.0  # a 6 mm cube centred on voxel (25, 31, 11)
    centre_mni = mni_affine[:3, :3] @ [25, 31, 11] + mni_affine[:3, 3]
    tr = _transform(7)
    shape, affine = ns.native_grid(tr, mni_shape, mni_affine, voxel_mm=(1.0, 1.0, 1.2))
    native = ns.resample_to_native(vol, mni_affine, tr, shape, affine, order=0)
    assert set(np.unique(native)) <= {0.0, 1.0}
    centroid_vox = np.argwhere(native > 0).mean(0)
    centroid = affine[:3, :3] @ centroid_vox + affine[:3, 3]
    expected = tr.inverse(centre_mni[None])[0]
    assert np.linalg.norm(centroid - expected) < 1.0  # mm
    # the cube's volume survives (216 mm^3 +- a partial layer of voxels)
    assert abs(native.sum() * 1.2 - 216.0) < 80.0
    # and the exact inverse brings it back onto the MNI grid
    back = ns.resample_to_mni(native, affine, tr, mni_shape, mni_affine, order=0)
    assert np.allclose(np.argwhere(back > 0).mean(0), [25, 31, 11], atol=0.5)
