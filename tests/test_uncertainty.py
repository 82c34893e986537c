"""raxnet.uncertainty: plane spread and per-lesion confidence on hand-computed arrays."""

import numpy as np
import pytest

from raxnet.uncertainty import CONFIDENCE_COLUMNS, lesion_confidence, plane_spread


def test_plane_spread_is_the_standard_deviation_over_planes():
    probs = {"axial": np.array([0.0, 0.5, 0.9]), "sagittal": np.array([0.0, 0.5, 0.3]),
             "coronal": np.array([1.0, 0.5, 0.3])}
    spread = plane_spread(probs)
    assert spread.dtype == np.float32
    np.testing.assert_allclose(spread, [np.sqrt(2) / 3, 0.0, np.sqrt(0.08)], atol=1e-6)  # (0,0,1): 0.471
    with pytest.raises(ValueError, match="differ in shape"):
        plane_spread({"axial": np.zeros(3), "sagittal": np.zeros(4)})


def test_lesion_confidence_same_grid():
    shape = (10, 10, 10)
    mask = np.zeros(shape, np.uint8)
    mask[1:3, 1:3, 1:3] = 1  # lesion 1 (8 voxels, the largest): every plane sure
    mask[7, 7, 7] = 1  # lesion 2 (1 voxel): only the axial model sees it
    axial, sagittal, coronal = (np.zeros(shape, np.float32) for _ in range(3))
    for p in (axial, sagittal, coronal):
        p[1:3, 1:3, 1:3] = 0.9
    axial[7, 7, 7], sagittal[7, 7, 7], coronal[7, 7, 7] = 0.8, 0.2, 0.2
    table = lesion_confidence(mask, {"axial": axial, "sagittal": sagittal, "coronal": coronal}, 0.5)
    assert list(table.columns) == CONFIDENCE_COLUMNS and table["label"].tolist() == [1, 2]
    np.testing.assert_allclose(table["mean_probability"], [0.9, 0.4], atol=1e-4)
    np.testing.assert_allclose(table["plane_agreement"], [1.0, 0.0])
    assert table["planes_detecting"].tolist() == [3, 1]
    np.testing.assert_allclose(table["mean_spread"], [0.0, np.sqrt(0.08)], atol=1e-4)
    # half of lesion 1's voxels below threshold in one plane -> agreement 0.5, still 3 planes detecting
    coronal[1, 1:3, 1:3] = 0.1
    table = lesion_confidence(mask, {"axial": axial, "sagittal": sagittal, "coronal": coronal}, 0.5)
    assert table.loc[0, "plane_agreement"] == 0.5 and table.loc[0, "planes_detecting"] == 3
    empty = lesion_confidence(np.zeros(shape, np.uint8), {"axial": axial}, 0.5)
    assert empty.empty and list(empty.columns) == CONFIDENCE_COLUMNS


def test_lesion_confidence_across_grids():
    """A 1 mm mask and 2 mm probabilities: each lesion voxel is looked up through the two affines."""
    coarse = (8, 8, 8)
    ramp = np.broadcast_to((0.1 * np.arange(8, dtype=np.float32))[:, None, None], coarse).copy()  # p = 0.1 * i
    probs = {"axial": ramp, "sagittal": np.full(coarse, 0.6, np.float32), "coronal": np.full(coarse, 0.3, np.float32)}
    mask = np.zeros((16, 16, 16), np.uint8)
    mask[12, 4, 4] = 1  # world x = 12 mm -> coarse index 6 -> axial p = 0.6
    table = lesion_confidence(mask, probs, 0.5, mask_affine=np.eye(4), prob_affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    np.testing.assert_allclose(table["mean_probability"], [(0.6 + 0.6 + 0.3) / 3], atol=1e-4)
    assert table["planes_detecting"].tolist() == [2] and table["plane_agreement"].tolist() == [0.0]
    mask[:] = 0
    mask[5, 4, 4] = 1  # x = 5 mm -> index 2.5: linear interpolation between 0.2 and 0.3
    table = lesion_confidence(mask, probs, 0.5, mask_affine=np.eye(4), prob_affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    np.testing.assert_allclose(table["mean_probability"], [(0.25 + 0.6 + 0.3) / 3], atol=1e-4)
    with pytest.raises(ValueError, match="give both affines"):
        lesion_confidence(mask, probs, 0.5)
