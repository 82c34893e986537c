"""raxnet.postprocess: the threshold rule, fusion methods and small-lesion removal on hand-computed arrays."""

import numpy as np
import pytest

from raxnet import postprocess as P

# --- pure functions -------------------------------------------------------------------------------


def test_mean_and_vote_disagree_in_known_voxels():
    # voxel 0: 0.9, 0.3, 0.4 -> mean 0.533 >= 0.5 -> 1, but only 1 of 3 votes -> 0
    # voxel 1: 0.55, 0.55, 0.0 -> mean 0.367 -> 0, but 2 of 3 votes -> 1
    probs = {
        "axial": np.array([[[0.9, 0.55]]]),
        "sagittal": np.array([[[0.3, 0.55]]]),
        "coronal": np.array([[[0.4, 0.0]]]),
    }
    mean, vote = P.fuse_mean(probs, 0.5), P.fuse_vote(probs, 0.5)
    assert mean.dtype == np.uint8 and vote.dtype == np.uint8
    assert mean.ravel().tolist() == [1, 0]
    assert vote.ravel().tolist() == [0, 1]
    # the threshold is a parameter: at 0.35 voxel 1's mean (0.367) passes, its votes stay 2
    assert P.fuse_mean(probs, 0.35).ravel().tolist() == [1, 1]
    assert P.fuse_vote(probs, 0.35).ravel().tolist() == [1, 1]  # 0.9, 0.4 >= 0.35 in voxel 0
    # lists work as well as dicts; mean exactly at the threshold counts as lesion (>=)
    assert P.fuse_mean([np.full(2, 0.6), np.full(2, 0.6), np.full(2, 0.3)], 0.5).tolist() == [1, 1]


def test_weighted_fusion():
    probs = {"axial": np.array([0.9, 0.2]), "sagittal": np.array([0.1, 0.2]), "coronal": np.array([0.1, 0.9])}
    # all weight on axial = axial alone
    assert P.fuse_weighted(probs, {"axial": 1, "sagittal": 0, "coronal": 0}).tolist() == [1, 0]
    # weights are normalised: (2*0.9 + 1*0.1 + 1*0.1) / 4 = 0.5 -> 1; (0.4 + 0.2 + 0.9) / 4 = 0.375 -> 0
    assert P.fuse_weighted(probs, {"axial": 2, "sagittal": 1, "coronal": 1}).tolist() == [1, 0]
    # equal weights = mean
    assert P.fuse_weighted(probs, [1, 1, 1]).tolist() == P.fuse_mean(probs).tolist()
    with pytest.raises(ValueError, match="non-negative"):
        P.fuse_weighted(probs, [1, -1, 1])
    with pytest.raises(ValueError, match="weights for"):
        P.fuse_weighted(probs, [1, 1])


def test_remove_small_components():
    m = np.zeros((6, 6, 6), np.uint8)
    m[0, 0, 0] = 1  # 1 voxel
    m[3, 3, 1:4] = 1  # 3 voxels
    m[4, 4, 4] = 1  # touches the 3-voxel line at a corner only ((3,3,3)-(4,4,4))
    out = P.remove_small_components(m, 2, connectivity=6)
    assert out.dtype == np.uint8 and out.sum() == 3 and out[3, 3, 1:4].all()
    out26 = P.remove_small_components(m, 2, connectivity=26)
    assert out26.sum() == 4 and out26[4, 4, 4] == 1  # joined to the line under 26-connectivity
    assert P.remove_small_components(m, 0).sum() == m.sum()
    assert P.remove_small_components(m, 5, connectivity=26).sum() == 0


def test_method_names_and_fuse_all_clean_variants():
    assert P.method_names(["mean", "axial"], 0) == ["mean", "axial"]
    assert P.method_names(["axial", "mean", "vote"], 3) == ["axial", "mean", "vote", "mean_clean", "vote_clean"]
    with pytest.raises(Exception, match="unknown fusion method"):
        P.method_names(["median"], 0)
    p = np.zeros((5, 5, 5), np.float32)
    p[0, 0, 0] = 0.9
    p[2:4, 2:4, 2] = 0.8
    probs = {"axial": p, "sagittal": p, "coronal": p}
    masks = P.fuse_all(probs, P.method_names(["axial", "mean"], 2), min_size=2)
    assert masks["mean"].sum() == 5 and masks["mean_clean"].sum() == 4 and masks["axial"].sum() == 5




def test_threshold_rule_is_greater_or_equal():
    p = np.array([0.49999, 0.5, 0.50001, 1.0, 0.0])
    assert P.binarise(p, 0.5).tolist() == [0, 1, 1, 1, 0]
    assert P.binarise(p, 0.5).dtype == np.uint8
    # every method follows it: a voxel exactly at the threshold in all three planes is lesion
    probs = {q: np.array([0.5]) for q in ("axial", "sagittal", "coronal")}
    for method in P.ALL_METHODS:
        assert P.fuse(probs, method, 0.5).tolist() == [1], method


def test_min_lesion_size_in_mm3():
    assert P.min_voxels(0, (2, 2, 2)) == 0
    assert P.min_voxels(40, (2, 2, 2)) == 5  # exactly 5 voxels of 8 mm³, not 6 after float error
    assert P.min_voxels(41, (2, 2, 2)) == 6
    assert P.min_voxels(0.3 * 3, (1, 1, 0.3)) == 3
    m = np.zeros((6, 6, 6), np.uint8)
    m[0, 0, 0:2] = 1  # 2 voxels = 16 mm³ at 2 mm
    m[4, 4, 1:4] = 1  # 3 voxels = 24 mm³
    assert P.remove_small_lesions(m, 16, (2, 2, 2)).sum() == 5
    assert P.remove_small_lesions(m, 17, (2, 2, 2)).sum() == 3
    assert P.remove_small_lesions(m, 17, (1, 1, 1)).sum() == 0  # 2 and 3 mm³ at 1 mm
    # postprocess = fuse, then clean with the same settings
    probs = {q: m.astype(np.float32) for q in ("axial", "sagittal", "coronal")}
    out = P.postprocess(probs, fusion="vote", threshold=0.5, min_lesion_mm3=17, spacing=(2, 2, 2))
    assert out.sum() == 3 and out[4, 4, 1:4].all()
