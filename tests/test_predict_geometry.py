"""raxnet.predict's geometry on tiny synthetic grids, without networks: the field-of-view and oblique checks,
resampling to the weights' grid and back (the probabilities linearly, thresholded on the scan's grid), and the
lesion volume in the input's mm³.

``predict_file`` runs with a stand-in predictor whose probabilities are a known block on a 2 mm grid, so the
mask on the input grid and every volume can be computed by hand.
"""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from raxnet.errors import InputError
from raxnet.weights import INFERENCE_KEYS
from raxnet.predict import Predictor, _fov_coverage, _is_oblique, back_to_input_grid, predict_file, to_model_grid

GRID_SHAPE = (10, 12, 8)
GRID_AFFINE = np.array([[2.0, 0, 0, -10.0], [0, 2.0, 0, -12.0], [0, 0, 2.0, -8.0], [0, 0, 0, 1]])
#: The 2 mm voxels of the block the stand-in predictor calls lesion (probability 0.9, elsewhere 0.1).
BLOCK = (slice(3, 6), slice(4, 7), slice(2, 5))
#: The input scan: 1 x 1 x 1.5 mm voxels over the same field of view, offset so that no input voxel centre
#: lies half way between two grid voxel centres (no ties at the threshold): index on the 2 mm grid =
#: 0.15 + k / 2 (axes 0, 1), 0.15 + 0.75 k (axis 2).
INPUT_SHAPE = (19, 23, 10)
INPUT_AFFINE = np.array([[1.0, 0, 0, -9.7], [0, 1.0, 0, -11.7], [0, 0, 1.5, -7.7], [0, 0, 0, 1]])


def manifest() -> dict:
    return {"grid_shape": list(GRID_SHAPE), "affine": GRID_AFFINE.tolist(), "spacing_mm": [2.0, 2.0, 2.0]}


class StandInPredictor:
    """What predict_file uses of :class:`raxnet.predict.Predictor`, with known probabilities."""

    def __init__(self) -> None:
        self.manifest = manifest()
        self.settings = {**INFERENCE_KEYS, "fusion": "mean", "threshold": 0.5, "connectivity": 26, "weights": None}
        self.seen: list[np.ndarray] = []
        self.sources: list[str] = []
        self.spacings: list = []

    @property
    def models(self) -> dict:
        import time

        time.sleep(0.3)  # "loading": predict_file must leave it out of the per-scan seconds
        return {}

    def probabilities(self, volume: np.ndarray, source: str = "volume") -> dict[str, np.ndarray]:
        self.seen.append(volume)
        self.sources.append(source)
        p = np.full(GRID_SHAPE, 0.1, np.float32)
        p[BLOCK] = 0.9
        return {"axial": p, "sagittal": p.copy(), "coronal": p.copy()}

    on_scan_grid = Predictor.on_scan_grid  # the real resampling back (uses only .manifest)
    scan_probabilities = Predictor.scan_probabilities  # the real choice: back to the scan's grid only if resampled

    def mask(self, probs: dict[str, np.ndarray], spacing=None, fusion=None) -> np.ndarray:
        self.spacings.append(spacing)
        return (np.mean([probs[k] for k in probs], axis=0) >= 0.5).astype(np.uint8)


def block_weight_on_input() -> np.ndarray:
    """The block's indicator interpolated (trilinearly) at each input voxel, by hand: the indicator is a
    product over the axes, so its trilinear interpolation is the product of 1D linear ones, each
    ``clip(1 - distance to the block's voxel range, 0, 1)`` in 2 mm grid units."""
    ijk = np.indices(INPUT_SHAPE).reshape(3, -1).T
    mm = ijk * np.diag(INPUT_AFFINE)[:3] + INPUT_AFFINE[:3, 3]
    g = (mm - GRID_AFFINE[:3, 3]) / 2.0
    w = np.ones(len(g))
    for a, s in enumerate(BLOCK):
        dist = np.maximum.reduce([s.start - g[:, a], np.zeros(len(g)), g[:, a] - (s.stop - 1)])
        w *= np.clip(1.0 - dist, 0.0, 1.0)
    return w.reshape(INPUT_SHAPE)


def linear_block_on_input() -> np.ndarray:
    """The mask predict must write: probability 0.1 + 0.8 x the interpolated block, >= 0.5."""
    return (0.1 + 0.8 * block_weight_on_input() >= 0.5).astype(np.uint8)


def nearest_block_on_input() -> np.ndarray:
    """The 2 mm block on the input grid by nearest neighbour, by hand: each input voxel centre in mm, then
    the 2 mm voxel whose centre is closest."""
    ijk = np.indices(INPUT_SHAPE).reshape(3, -1).T
    mm = ijk * np.diag(INPUT_AFFINE)[:3] + INPUT_AFFINE[:3, 3]
    grid_idx = np.rint((mm - GRID_AFFINE[:3, 3]) / 2.0).astype(int)
    inside = np.ones(len(grid_idx), bool)
    for a, s in enumerate(BLOCK):
        inside &= (grid_idx[:, a] >= s.start) & (grid_idx[:, a] < s.stop)
    return inside.reshape(INPUT_SHAPE).astype(np.uint8)


def write_scan(path, shape=INPUT_SHAPE, affine=INPUT_AFFINE) -> None:
    rng = np.random.default_rng(0)
    data = rng.uniform(50, 100, shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, affine), str(path))


def test_hand_nearest_block_is_what_the_test_expects():
    m = nearest_block_on_input()
    # 2 mm voxels 3..5 (centres -4, -2, 0 mm) <- 1 mm voxels at -4.7 .. 0.3 mm: 6 per axis 0; axis 1 the same;
    # axis 2 (1.5 mm): centres -7.7 + 1.5 k nearest to -4, -2, 0 (+-1 mm): k = 3, 4, 5 -> 3 voxels... by hand:
    assert m.sum(axis=(1, 2)).astype(bool).sum() == 6
    assert m.sum(axis=(0, 2)).astype(bool).sum() == 6
    assert m.sum(axis=(0, 1)).astype(bool).sum() == 4
    assert m.sum() == 6 * 6 * 4
    # thresholding the interpolated probabilities keeps the same 6 x 6 x 4 box but not its corners: the edge
    # voxels weigh 0.65 (grid index 2.65 on axis 0, 3.65 on axis 1), so voxel (5, 7, 4), on both edges and in
    # the core along axis 2 (index 3.15), is 0.65² = 0.42 of the block: 0.1 + 0.8 x 0.42 = 0.44 < 0.5
    lin = linear_block_on_input()
    assert lin.sum() < m.sum() and not (lin & ~m.astype(bool)).any()
    w = block_weight_on_input()
    assert w[5, 7, 4] == pytest.approx(0.65 * 0.65) and lin[5, 7, 4] == 0 and m[5, 7, 4] == 1


def test_predict_file_thresholds_probabilities_on_the_input_grid_and_volume_in_input_mm3(tmp_path):
    """A 1 x 1 x 1.5 mm scan: predicted on the 2 mm grid, the probabilities come back linearly and are
    thresholded there (the hand-computed mask, not the blockier nearest-neighbour one), cleaned with the scan's
    spacing, and the lesion volume is counted in the input's voxels x 1.5 mm³ (not the 2 mm grid's 8 mm³)."""
    path = tmp_path / "scan_T1w.nii.gz"
    write_scan(path)
    predictor = StandInPredictor()
    opts = {"save_probabilities": True, "save_uncertainty": True, "qc": False}
    row = predict_file(predictor, path, tmp_path / "out", opts)
    # the network input was the scan resampled (linearly) onto the 2 mm grid
    assert predictor.seen[0].shape == GRID_SHAPE and row["resampled"] is True
    assert predictor.sources == [str(path)]  # errors in the brain-mask step name the scan
    assert predictor.spacings == [pytest.approx((1.0, 1.0, 1.5))]  # min lesion size in the scan's mm³
    expected = linear_block_on_input()
    n = int(expected.sum())
    assert n < 144  # the nearest-neighbour box would be 6 x 6 x 4
    mask_img = nib.load(str(tmp_path / "out" / "scan_desc-lesion_mask.nii.gz"))
    np.testing.assert_allclose(mask_img.affine, INPUT_AFFINE)
    assert mask_img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(mask_img.dataobj), expected)
    assert row["lesion_voxels"] == n and row["lesion_volume_mm3"] == pytest.approx(1.5 * n)
    assert row["n_lesions"] == 1 and row["mask"] == str(tmp_path / "out" / "scan_desc-lesion_mask.nii.gz")
    summary = pd.read_csv(tmp_path / "out" / "scan_summary.csv")
    assert summary.loc[0, "lesion_volume_mm3"] == pytest.approx(1.5 * n) and summary.loc[0, "lesion_voxels"] == n
    assert summary.loc[0, "fusion"] == "mean" and summary.loc[0, "threshold"] == 0.5
    lesions = pd.read_csv(tmp_path / "out" / "scan_lesions.csv")
    assert lesions["voxels"].tolist() == [n] and lesions["volume_mm3"].tolist() == pytest.approx([1.5 * n])
    # each lesion's mean probability: the interpolated map over its voxels, by hand
    w = block_weight_on_input()
    assert lesions.loc[0, "mean_probability"] == pytest.approx(float((0.1 + 0.8 * w)[expected > 0].mean()), abs=1e-4)
    # between the threshold and the core's 0.9; the three planes are identical, so they detect it together
    assert 0.5 < lesions.loc[0, "mean_probability"] < 0.9 and lesions.loc[0, "planes_detecting"] == 3
    # probability map back on the input grid (linear): 0.9 deep inside the block, 0.1 far away, float32
    prob = nib.load(str(tmp_path / "out" / "scan_desc-lesion_probability.nii.gz"))
    pv = np.asarray(prob.dataobj)
    assert prob.get_data_dtype() == np.float32 and pv.shape == INPUT_SHAPE
    assert pv[9, 11, 5] == pytest.approx(0.9, abs=1e-5) and pv[0, 0, 9] == pytest.approx(0.1, abs=1e-5)
    assert 0.1 < pv[6, 11, 5] < 0.9  # the block's edge is interpolated
    # the three planes agree everywhere: the uncertainty map is zero, on the input grid
    unc = nib.load(str(tmp_path / "out" / "scan_desc-uncertainty.nii.gz"))
    assert unc.shape == INPUT_SHAPE and np.abs(np.asarray(unc.dataobj)).max() < 1e-6
    assert unc.get_data_dtype() == np.float32
    assert not (tmp_path / "out" / "scan_qc.png").exists()


def test_predict_file_on_the_weights_grid_is_not_resampled(tmp_path):
    """A scan already on the 2 mm grid: the volume goes in as it is, the mask is the block itself (27 voxels,
    27 x 8 = 216 mm³), with a QC overlay."""
    path = tmp_path / "grid_T1w.nii.gz"
    write_scan(path, GRID_SHAPE, GRID_AFFINE)
    predictor = StandInPredictor()
    row = predict_file(predictor, path, tmp_path / "out", {"save_probabilities": False, "qc": True}, name="x/y")
    assert row["resampled"] is False
    np.testing.assert_array_equal(predictor.seen[0], np.asarray(nib.load(str(path)).dataobj))
    mask = np.asarray(nib.load(str(tmp_path / "out" / "x" / "y_desc-lesion_mask.nii.gz")).dataobj)
    expected = np.zeros(GRID_SHAPE, np.uint8)
    expected[BLOCK] = 1
    np.testing.assert_array_equal(mask, expected)
    assert row["lesion_volume_mm3"] == pytest.approx(216.0) and row["lesion_voxels"] == 27
    assert (tmp_path / "out" / "x" / "y_qc.png").stat().st_size > 1000
    assert not (tmp_path / "out" / "x" / "y_desc-lesion_probability.nii.gz").exists()


def test_back_to_input_grid_nearest_and_linear():
    mask = np.zeros(GRID_SHAPE, np.uint8)
    mask[BLOCK] = 1
    img = nib.Nifti1Image(np.zeros(INPUT_SHAPE, np.float32), INPUT_AFFINE)
    near = back_to_input_grid(mask, manifest(), img, "nearest")
    assert near.shape == INPUT_SHAPE and near.dtype == np.float32
    np.testing.assert_array_equal(near, nearest_block_on_input())
    lin = back_to_input_grid(mask, manifest(), img, "linear")
    assert set(np.unique(near)) == {0.0, 1.0} and len(np.unique(lin)) > 2
    assert ((lin > 0.5) != near.astype(bool)).any()  # linear > 0.5 is not the nearest mask


def test_to_model_grid_same_grid_resampled_or_refused(tmp_path):
    data = np.arange(np.prod(GRID_SHAPE), dtype=np.float32).reshape(GRID_SHAPE)
    same = nib.Nifti1Image(data, GRID_AFFINE)
    out, resampled = to_model_grid(data, same, manifest(), tmp_path / "a.nii.gz")
    assert resampled is False and out is data
    # 1 mm voxels whose centres fall on the 2 mm centres and half way between: linear resampling picks the
    # 2 mm centres exactly (values of a linear ramp are reproduced)
    ramp = lambda mm: mm[..., 0] + 10 * mm[..., 1] + 100 * mm[..., 2]  # noqa: E731
    fine_affine = np.array([[1.0, 0, 0, -10.0], [0, 1.0, 0, -12.0], [0, 0, 1.0, -8.0], [0, 0, 0, 1]])
    fine_shape = (19, 23, 15)
    ijk = np.indices(fine_shape).transpose(1, 2, 3, 0)
    fine = ramp(ijk + fine_affine[:3, 3]).astype(np.float32)
    out, resampled = to_model_grid(fine, nib.Nifti1Image(fine, fine_affine), manifest(), tmp_path / "b.nii.gz")
    assert resampled is True and out.shape == GRID_SHAPE and out.dtype == np.float32
    expected = ramp(np.indices(GRID_SHAPE).transpose(1, 2, 3, 0) * 2.0 + GRID_AFFINE[:3, 3])
    np.testing.assert_allclose(out, expected, atol=1e-3)
    # nearly the same affine (within 1e-3 mm) counts as the same grid
    close = GRID_AFFINE.copy()
    close[0, 3] += 5e-4
    assert to_model_grid(data, nib.Nifti1Image(data, close), manifest(), tmp_path / "c")[1] is False
    far = GRID_AFFINE.copy()
    far[:3, 3] += 100.0
    with pytest.raises(InputError, match=r"^c.nii: not in MNI152NLin2009aSym space \(its field of view covers 0% of "
                                         r"the template's\); register the scan to MNI152NLin2009aSym first$"):
        to_model_grid(data, nib.Nifti1Image(data, far), manifest(), "c.nii")
    tilted = GRID_AFFINE.copy()
    c, s = np.cos(0.2), np.sin(0.2)
    tilted[:2, :2] = 2.0 * np.array([[c, -s], [s, c]])
    with pytest.raises(InputError, match="d.nii: oblique affine"):
        to_model_grid(data, nib.Nifti1Image(data, tilted), manifest(), "d.nii")


def test_fov_coverage_hand_computed():
    """The reference box (voxel centres) spans 18 x 22 x 14 mm; an image box shifted by 9 mm along x covers
    half of it; a larger image covers all of it; a disjoint one none."""
    assert _fov_coverage(GRID_AFFINE, GRID_SHAPE, GRID_AFFINE, GRID_SHAPE) == pytest.approx(1.0)
    shifted = GRID_AFFINE.copy()
    shifted[0, 3] += 9.0
    assert _fov_coverage(shifted, GRID_SHAPE, GRID_AFFINE, GRID_SHAPE) == pytest.approx(0.5)
    shifted[1, 3] -= 11.0  # and half along y: a quarter
    assert _fov_coverage(shifted, GRID_SHAPE, GRID_AFFINE, GRID_SHAPE) == pytest.approx(0.25)
    big = np.diag([1.0, 1.0, 1.0, 1.0])
    big[:3, 3] = -50
    assert _fov_coverage(big, (100, 100, 100), GRID_AFFINE, GRID_SHAPE) == pytest.approx(1.0)
    zshift = GRID_AFFINE.copy()
    zshift[2, 3] += 7.0  # half of the 14 mm along z
    assert _fov_coverage(zshift, GRID_SHAPE, GRID_AFFINE, GRID_SHAPE) == pytest.approx(0.5)
    zshift[2, 3] -= 14.0
    assert _fov_coverage(zshift, GRID_SHAPE, GRID_AFFINE, GRID_SHAPE) == pytest.approx(0.5)
    far = GRID_AFFINE.copy()
    far[2, 3] += 100
    assert _fov_coverage(far, GRID_SHAPE, GRID_AFFINE, GRID_SHAPE) == 0.0
    # a flipped axis (negative spacing) spans the same box
    flipped = GRID_AFFINE.copy()
    flipped[0, 0], flipped[0, 3] = -2.0, 8.0
    assert _fov_coverage(flipped, GRID_SHAPE, GRID_AFFINE, GRID_SHAPE) == pytest.approx(1.0)


def test_is_oblique():
    assert not _is_oblique(GRID_AFFINE)
    assert not _is_oblique(np.diag([-1.0, 1.5, 3.0, 1.0]))  # flips and anisotropy are not oblique
    perm = np.zeros((4, 4))
    perm[0, 1], perm[1, 0], perm[2, 2], perm[3, 3] = 2.0, 2.0, 2.0, 1.0
    assert not _is_oblique(perm)  # axes swapped, still aligned
    for angle in (0.2, 0.05):
        c, s = np.cos(angle), np.sin(angle)
        rot = np.eye(4)
        rot[1:3, 1:3] = [[c, -s], [s, c]]
        assert _is_oblique(rot @ np.diag([1.0, 1.0, 2.0, 1.0]))
    # a small tilt (0.02 rad) of a grid with 5 mm slices: each voxel axis is judged on its own direction,
    # whatever the spacings (columns normalised, not rows)
    c, s = np.cos(0.02), np.sin(0.02)
    tilt = np.eye(4)
    tilt[1:3, 1:3] = [[c, -s], [s, c]]
    assert not _is_oblique(tilt @ np.diag([1.0, 1.0, 5.0, 1.0]))
    assert not _is_oblique(tilt @ np.diag([1.0, 3.0, 1.0, 1.0]))
    # exactly at the limit (cosine 0.999) is still aligned
    edge = np.eye(4)
    edge[:3, 0] = [0.999, np.sqrt(1 - 0.999**2), 0.0]
    assert np.abs(edge[:3, 0] / np.linalg.norm(edge[:3, 0])).max() == 0.999
    assert not _is_oblique(edge)
    tiny = np.eye(4)
    tiny[1:3, 1:3] = [[np.cos(0.01), -np.sin(0.01)], [np.sin(0.01), np.cos(0.01)]]
    assert not _is_oblique(tiny)  # cos(0.01) = 0.99995 > 0.999: within rounding of an aligned grid


def test_predict_file_register_path_wiring(tmp_path, monkeypatch):
    """``register``: predict_file hands the scan, the weights' grid and a segmenting callback to
    raxnet.registration (stood in for here: an identity "registration" that records its calls), maps the three
    plane probabilities back through the registration's to_native (linearly; the mask is made from them on the
    scan's grid, and the probability and uncertainty maps from them too), and takes the lesion table and extra
    summary columns from raxnet.registration."""
    from raxnet import registration

    calls: dict[str, list] = {"to_native": []}

    class FakeReg:
        def to_native(self, volume, affine, interpolation):
            np.testing.assert_allclose(affine, GRID_AFFINE)
            calls["to_native"].append((interpolation, np.asarray(volume).dtype))
            return np.asarray(volume, np.float32) * (0.9 if interpolation == "nearest" else 1.0)

    def check_registrable(data, img, path):
        calls["check"] = (data.shape, img.shape, path)

    def register_and_segment(data, img, path, shape, affine, segment, settings):
        calls["register"] = (data.shape, path, shape, settings.transform)
        np.testing.assert_allclose(img.affine, GRID_AFFINE)
        np.testing.assert_allclose(affine, GRID_AFFINE)
        probs, mask = segment(data)
        return FakeReg(), probs, mask

    def lesion_table(mask, reg, connectivity):
        calls["lesion_table"] = (int(mask.sum()), connectivity)
        assert isinstance(reg, FakeReg)
        return pd.DataFrame({"label": [1], "voxels": [int(mask.sum())], "volume_mm3": [1.0]})

    def write_outputs(reg, data, lesions, out_dir, stem, qc):
        calls["write_outputs"] = (stem, qc, len(lesions))
        assert isinstance(reg, FakeReg) and data.shape == GRID_SHAPE and out_dir == tmp_path / "out"
        return {"native_note": "ok"}

    for name, fn in [("check_registrable", check_registrable), ("register_and_segment", register_and_segment),
                     ("lesion_table", lesion_table), ("write_outputs", write_outputs)]:
        monkeypatch.setattr(registration, name, fn)
    path = tmp_path / "native_T1w.nii.gz"
    write_scan(path, GRID_SHAPE, GRID_AFFINE)
    predictor = StandInPredictor()
    predictor.settings["connectivity"] = 6
    opts = {"register": True, "registration": "syn", "save_probabilities": True, "save_uncertainty": True,
            "qc": False}
    row = predict_file(predictor, path, tmp_path / "out", opts)
    assert calls["check"] == (GRID_SHAPE, GRID_SHAPE, path)
    assert calls["register"] == (GRID_SHAPE, path, GRID_SHAPE, "syn")
    assert predictor.seen[0].shape == GRID_SHAPE and predictor.sources == [str(path)]
    # the three plane probabilities back linearly, once each; nothing else goes through the transform
    assert [i for i, _ in calls["to_native"]] == ["linear"] * 3
    assert predictor.spacings == [None, pytest.approx((2.0, 2.0, 2.0))]  # MNI grid (registration), then the scan's
    assert calls["lesion_table"] == (27, 6) and calls["write_outputs"] == ("native", False, 1)
    assert row["resampled"] is True and row["native_note"] == "ok" and row["lesion_voxels"] == 27
    assert row["lesion_volume_mm3"] == pytest.approx(27 * 8.0)
    mask = np.asarray(nib.load(str(tmp_path / "out" / "native_desc-lesion_mask.nii.gz")).dataobj)
    expected = np.zeros(GRID_SHAPE, np.uint8)
    expected[BLOCK] = 1
    np.testing.assert_array_equal(mask, expected)
    lesions = pd.read_csv(tmp_path / "out" / "native_lesions.csv")
    assert lesions["voxels"].tolist() == [27] and lesions.loc[0, "planes_detecting"] == 3


def test_predict_file_qc_overlays_summary_fields_and_log(tmp_path, monkeypatch):
    """What predict_file passes to the QC overlays (stood in: recorded), the summary's input / seconds fields
    and its one log line."""
    import logging
    import time

    from raxnet import qc
    from raxnet.predict import MAX_SPREAD

    overlays = []
    monkeypatch.setattr(qc, "qc_overlay", lambda t1, mask, path, **kw: overlays.append((t1, mask, path, kw)))
    path = tmp_path / "grid_T1w.nii.gz"
    write_scan(path, GRID_SHAPE, GRID_AFFINE)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger("raxnet.predict")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    t0 = time.perf_counter()
    try:
        row = predict_file(StandInPredictor(), path, tmp_path / "out",
                           {"save_probabilities": False, "save_uncertainty": True, "qc": True})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    wall = time.perf_counter() - t0
    assert row["input"] == str(path)
    # the 0.3 s of model loading is not counted
    assert 0 <= row["seconds"] <= wall - 0.25 and row["seconds"] == round(row["seconds"], 2)
    assert row["lowest_plane_agreement"] == 1.0
    data = np.asarray(nib.load(str(path)).dataobj)
    (t1, mask, qc_path, kw), (t1u, masku, unc_path, kwu) = overlays
    np.testing.assert_array_equal(t1, data)
    np.testing.assert_array_equal(t1u, data)
    assert int(mask.sum()) == 27 and int(masku.sum()) == 27
    assert qc_path == tmp_path / "out" / "grid_qc.png" and unc_path == tmp_path / "out" / "grid_uncertainty.png"
    assert kw["title"] == "grid: 27 lesion voxels"
    np.testing.assert_allclose(kw["affine"], GRID_AFFINE)
    np.testing.assert_allclose(kwu["affine"], GRID_AFFINE)
    assert kwu["heat_max"] == MAX_SPREAD and kwu["heat"].shape == GRID_SHAPE
    assert kwu["heat_label"] == "plane disagreement (SD of the 3 plane probabilities)"
    assert kwu["title"] == "grid: where the three plane models disagree"
    assert [r.getMessage() for r in records] == [
        f"grid_T1w.nii.gz: 27 lesion voxels in 1 components, {row['seconds']:.1f} s"]
    # no lesion at all: the lesion table keeps its confidence columns, the agreement is undefined
    empty = StandInPredictor()
    empty.settings["threshold"] = 0.95
    empty.mask = lambda probs, **kw: np.zeros(GRID_SHAPE, np.uint8)
    row = predict_file(empty, path, tmp_path / "none", {"save_probabilities": False, "qc": False})
    assert row["lesion_voxels"] == 0 and np.isnan(row["lowest_plane_agreement"]) and row["n_lesions"] == 0
    lesions = pd.read_csv(tmp_path / "none" / "grid_lesions.csv")
    assert lesions.empty and {"mean_probability", "plane_agreement", "planes_detecting"} <= set(lesions.columns)


def test_predict_file_lesions_with_the_weight_sets_connectivity(tmp_path):
    """Two lesion voxels touching at a corner: two lesions under connectivity 6, each with its own confidence."""
    path = tmp_path / "grid_T1w.nii.gz"
    write_scan(path, GRID_SHAPE, GRID_AFFINE)
    predictor = StandInPredictor()
    predictor.settings["connectivity"] = 6
    pair = np.zeros(GRID_SHAPE, np.uint8)
    pair[2, 2, 2] = pair[3, 3, 3] = 1
    predictor.mask = lambda probs, **kw: pair
    row = predict_file(predictor, path, tmp_path / "out", {"save_probabilities": False, "qc": False})
    assert row["n_lesions"] == 2 and row["connectivity"] == 6
    lesions = pd.read_csv(tmp_path / "out" / "grid_lesions.csv")
    assert lesions["voxels"].tolist() == [1, 1]
    assert lesions["mean_probability"].notna().all() and lesions["planes_detecting"].tolist() == [0, 0]


def test_to_model_grid_interpolates_linearly_and_names_the_file(tmp_path):
    """1 mm voxels half way between the 2 mm centres: a quadratic profile x² comes out as the mean of the two
    neighbours, x² + 0.25 (linear interpolation; a spline would give x² exactly)."""
    fine_affine = np.array([[1.0, 0, 0, -10.5], [0, 1.0, 0, -12.0], [0, 0, 1.0, -8.0], [0, 0, 0, 1]])
    fine_shape = (20, 23, 15)
    x_mm = np.arange(fine_shape[0]) - 10.5
    fine = np.broadcast_to((x_mm**2)[:, None, None], fine_shape).astype(np.float32).copy()
    out, resampled = to_model_grid(fine, nib.Nifti1Image(fine, fine_affine), manifest(), tmp_path / "q.nii.gz")
    grid_x = np.arange(GRID_SHAPE[0]) * 2.0 - 10.0
    np.testing.assert_allclose(out[:, 5, 3], grid_x**2 + 0.25, atol=1e-3)
    from raxnet.predict import predict_file as pf

    far = GRID_AFFINE.copy()
    far[:3, 3] += 100.0
    scan = tmp_path / "far_T1w.nii.gz"
    write_scan(scan, GRID_SHAPE, far)
    with pytest.raises(InputError, match=rf"^{re.escape(str(scan))}: not in MNI152NLin2009aSym space"):
        pf(StandInPredictor(), scan, tmp_path / "o", {"save_probabilities": False, "qc": False})


def test_predict_file_volume_and_seconds_keep_their_decimals(tmp_path, monkeypatch):
    """On a 1.25 mm grid a voxel is 1.953125 mm³: the 27-voxel block is 52.734375 mm³, reported to 3 decimals
    (52.734). The per-scan seconds come from predict's clock (stood in: 10.0 start, 10.5 / 12.0 around the model
    loading, 13.4567 at the end): 13.4567 - 10.0 - 1.5 = 1.9567 s, reported to 2 decimals (1.96)."""
    from types import SimpleNamespace

    from raxnet import predict as predict_module

    affine = GRID_AFFINE.copy()
    affine[:3, :3] = np.diag([1.25, 1.25, 1.25])
    predictor = StandInPredictor()
    predictor.manifest = {"grid_shape": list(GRID_SHAPE), "affine": affine.tolist(), "spacing_mm": [1.25] * 3}
    path = tmp_path / "fine_T1w.nii.gz"
    write_scan(path, GRID_SHAPE, affine)
    ticks = [10.0, 10.5, 12.0, 13.4567]
    monkeypatch.setattr(predict_module, "time", SimpleNamespace(perf_counter=lambda: ticks.pop(0)))
    row = predict_file(predictor, path, tmp_path / "out", {"save_probabilities": False, "qc": False})
    assert ticks == [] and row["resampled"] is False and row["lesion_voxels"] == 27
    assert row["lesion_volume_mm3"] == 52.734 and isinstance(row["lesion_volume_mm3"], float)
    assert row["seconds"] == 1.96
    summary = pd.read_csv(tmp_path / "out" / "fine_summary.csv")
    assert summary.loc[0, "lesion_volume_mm3"] == 52.734 and summary.loc[0, "seconds"] == 1.96


def test_predict_file_register_path_confidence_uses_the_weight_sets_connectivity(tmp_path, monkeypatch):
    """--register: two lesion voxels touching at a corner are two lesions under connectivity 6; the confidence
    of each (read on the scan's grid) joins its row of the lesion table (stood-in registration: identity)."""
    from raxnet import registration

    class FakeReg:
        def to_native(self, volume, affine, interpolation):
            return np.asarray(volume, np.float32)

    pair = np.zeros(GRID_SHAPE, np.uint8)
    pair[2, 2, 2] = pair[3, 3, 3] = 1
    monkeypatch.setattr(registration, "check_registrable", lambda data, img, path: None)
    monkeypatch.setattr(registration, "register_and_segment",
                        lambda data, img, path, shape, affine, segment, settings: (FakeReg(), *segment(data)))
    monkeypatch.setattr(registration, "lesion_table", lambda mask, reg, connectivity: pd.DataFrame(
        {"label": [1, 2], "voxels": [1, 1], "volume_mm3": [8.0, 8.0]}))
    monkeypatch.setattr(registration, "write_outputs", lambda *a: {})
    path = tmp_path / "native_T1w.nii.gz"
    write_scan(path, GRID_SHAPE, GRID_AFFINE)
    predictor = StandInPredictor()
    predictor.settings["connectivity"] = 6
    predictor.mask = lambda probs, **kw: pair
    row = predict_file(predictor, path, tmp_path / "out", {"register": True, "registration": "syn",
                                                             "save_probabilities": False, "qc": False})
    lesions = pd.read_csv(tmp_path / "out" / "native_lesions.csv")
    assert lesions["label"].tolist() == [1, 2]
    # the stand-in's probability is 0.1 at both voxels (outside its block): each lesion's own mean
    assert lesions["mean_probability"].tolist() == pytest.approx([0.1, 0.1])
    assert lesions["planes_detecting"].tolist() == [0, 0] and row["n_lesions"] == 2


def test_bias_correct_flag_config_and_docker_switch_reach_the_predictor(tmp_path, monkeypatch):
    """--bias-correct / RAXNET_BIAS_CORRECT (docker compose BIAS_CORRECT) / [predict] bias_correct override the
    weight set's N4 step; unset, the weight set decides ("" is not an override); --no-bias-correct wins."""
    import raxnet.predict as P

    path = tmp_path / "grid_T1w.nii.gz"
    write_scan(path, GRID_SHAPE, GRID_AFFINE)
    seen = []
    monkeypatch.setattr(P, "Predictor", lambda *a, overrides=None, **k: seen.append(overrides))
    monkeypatch.setattr(P, "predict_batch", lambda predictor, inputs, out, opts, root=None: ([{"seconds": 1.0}], []))

    def bias_correct(*extra):
        assert P.main(["--input", str(path), "--output", str(tmp_path / "o"), *extra]) == 0
        return seen[-1]["bias_correct"]

    assert bias_correct() == ""
    assert bias_correct("--bias-correct") is True
    assert bias_correct("--no-bias-correct") is False
    config = tmp_path / "c.toml"
    config.write_text("[predict]\nbias_correct = false\n")
    assert bias_correct("--config", str(config)) is False
    monkeypatch.setenv("RAXNET_BIAS_CORRECT", "1")
    assert bias_correct() is True
    assert bias_correct("--no-bias-correct") is False
