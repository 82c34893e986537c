"""raxnet.postprocess: the threshold rule, fusion methods and small-lesion removal on hand-computed arrays."""

import numpy as np
import pytest

from raxnet import postprocess as P
from raxnet.errors import ConfigError

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
    with pytest.raises(ConfigError, match=r"^unknown fusion method 'median'; expected some of axial, sagittal, "
                       r"coronal, mean, vote, weighted$"):
        P.method_names(["median"], 0)
    with pytest.raises(ConfigError, match="^fusion.methods is empty$"):
        P.method_names([], 2)
    assert P.method_names(["mean", "mean", "vote"], 1) == ["mean", "vote", "mean_clean", "vote_clean"]
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


# --- added for the mutation benchmark (issue 14) ----------------------------------------------------------

PLANE3 = ("axial", "sagittal", "coronal")


def test_vote_counts_planes_at_the_threshold_and_needs_a_strict_majority():
    """Two of three planes exactly at the threshold: lesion (``>=``). With four volumes 2 votes are not a
    majority, 3 are; with two volumes both must vote."""
    probs = {"axial": np.array([0.5, 0.5, 0.4]), "sagittal": np.array([0.5, 0.4, 0.4]),
             "coronal": np.array([0.1, 0.1, 0.5])}
    assert P.fuse_vote(probs, 0.5).tolist() == [1, 0, 0]
    assert P.fuse_vote(probs).tolist() == [1, 0, 0]  # default threshold 0.5
    assert P.fuse(probs, "vote").tolist() == [1, 0, 0]
    four = [np.array([1.0, 1.0, 1.0]), np.array([1.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0]), np.zeros(3)]
    assert P.fuse_vote(four, 0.5).tolist() == [1, 0, 0]
    two = [np.array([0.9, 0.9]), np.array([0.9, 0.1])]
    assert P.fuse_vote(two, 0.5).tolist() == [1, 0]


def test_default_threshold_is_one_half_everywhere():
    probs = {q: np.array([0.5, 0.49]) for q in PLANE3}
    assert P.binarise(np.array([0.5, 0.49])).tolist() == [1, 0]
    assert P.fuse_mean(probs).tolist() == [1, 0]
    for method in P.ALL_METHODS:
        assert P.fuse(probs, method).tolist() == [1, 0], method
    assert P.fuse_weighted(probs, [1, 2, 3]).tolist() == [1, 0]
    assert P.fuse_all(probs, ["mean", "axial"])["mean"].tolist() == [1, 0]


def test_fuse_passes_the_threshold_to_every_method():
    probs = {"axial": np.array([0.3, 0.2]), "sagittal": np.array([0.3, 0.2]), "coronal": np.array([0.3, 0.2])}
    for method in P.ALL_METHODS:
        assert P.fuse(probs, method, 0.25).tolist() == [1, 0], method
        assert P.fuse(probs, method, 0.35).tolist() == [0, 0], method
    with pytest.raises(ConfigError, match=r"^unknown fusion method 'max'; expected one of axial, sagittal, "
                       r"coronal, mean, vote, weighted$"):
        P.fuse(probs, "max")


def test_mean_is_taken_in_float64():
    """float32 planes 0.67, 0.53, 0.75 (as float32: 0.6700000167, 0.5299999714, 0.75): their exact mean is
    0.6499999960, below 0.65; a float32 mean rounds to 0.65000004 and would call the voxel lesion."""
    probs = {"axial": np.array([0.67], np.float32), "sagittal": np.array([0.53], np.float32),
             "coronal": np.array([0.75], np.float32)}
    assert P.fuse_mean(probs, 0.65).tolist() == [0]
    assert P.fuse_mean(probs, 0.6499).tolist() == [1]


def test_vote_of_identical_planes_is_each_planes_threshold_mask():
    """The vote compares each plane with the threshold in the plane's own dtype, as binarise does for one
    plane: three identical float32 planes at float32(0.51) vote exactly like one plane at threshold 0.51."""
    p = np.array([0.51, 0.5, 0.52], np.float32)
    one = P.binarise(p, 0.51)
    assert P.fuse_vote({q: p for q in PLANE3}, 0.51).tolist() == one.tolist() == P.fuse(
        {q: p for q in PLANE3}, "axial", 0.51).tolist()
    assert P.fuse_vote({q: p for q in PLANE3}, 0.51).tolist() == [1, 0, 1]


def test_weights_and_connectivity_reach_fuse_all_and_postprocess():
    probs = {"axial": np.array([0.9, 0.0]), "sagittal": np.array([0.0, 0.9]), "coronal": np.array([0.0, 0.9])}
    w = {"axial": 4.0, "sagittal": 1.0, "coronal": 1.0}  # (4 * 0.9) / 6 = 0.6; (0.9 + 0.9) / 6 = 0.3
    assert P.fuse_all(probs, ["weighted"], weights=w)["weighted"].tolist() == [1, 0]
    assert P.fuse_all(probs, ["weighted"])["weighted"].tolist() == [0, 1]  # equal weights: 0.3, 0.6
    assert P.postprocess(probs, fusion="weighted", threshold=0.5, min_lesion_mm3=0, spacing=(1, 1, 1),
                         weights=w).tolist() == [1, 0]
    # two voxels touching at a corner: one lesion of 2 voxels (26) or two of 1 (6)
    m = np.zeros((3, 3, 3), np.float32)
    m[0, 0, 0] = m[1, 1, 1] = 0.9
    p3 = {q: m for q in PLANE3}
    assert P.fuse_all(p3, ["mean_clean"], min_size=2, connectivity=26)["mean_clean"].sum() == 2
    assert P.fuse_all(p3, ["mean_clean"], min_size=2, connectivity=6)["mean_clean"].sum() == 0
    assert P.postprocess(p3, fusion="mean", threshold=0.5, min_lesion_mm3=2, spacing=(1, 1, 1)).sum() == 2
    assert P.postprocess(p3, fusion="mean", threshold=0.5, min_lesion_mm3=2, spacing=(1, 1, 1),
                         connectivity=6).sum() == 0
    assert P.remove_small_lesions(m, 2, (1, 1, 1), connectivity=6).sum() == 0
    assert P.remove_small_lesions(m, 2, (1, 1, 1)).sum() == 2


def test_component_of_exactly_min_size_is_kept():
    m = np.zeros((5, 5, 5), np.uint8)
    m[0, 0, 0:3] = 1  # 3 voxels
    m[4, 4, 4] = 1  # 1 voxel
    assert P.remove_small_components(m, 3).tolist() == (m * (np.arange(5)[:, None, None] == 0)).tolist()
    assert P.remove_small_components(m, 4).sum() == 0
    out = P.remove_small_components(m, 0)
    assert out.dtype == np.uint8 and out.sum() == 4
    # keep_large_components directly: min_size 1 (or less) keeps every labelled component, never label 0
    labels = np.array([0, 1, 2, 2, 0])
    assert P.keep_large_components(labels, 2, 1).tolist() == [0, 1, 1, 1, 0]
    assert P.keep_large_components(labels, 2, 0).tolist() == [0, 1, 1, 1, 0]
    assert P.keep_large_components(labels, 2, 2).tolist() == [0, 0, 1, 1, 0]
    assert P.keep_large_components(labels, 2, 2).dtype == np.uint8


def test_min_voxels_rounds_float_error_only():
    assert P.min_voxels(40.0000000008, (2, 2, 2)) == 5  # 5.0000000001 voxels: within 1e-9 of 5, float error
    assert P.min_voxels(40.0001, (2, 2, 2)) == 6
    assert P.min_voxels(-3, (1, 1, 1)) == 0


def test_fusion_input_errors_name_the_problem():
    with pytest.raises(ValueError, match="^no probability volumes to fuse$"):
        P.fuse_mean({})
    with pytest.raises(ValueError, match=r"^probability volumes differ in shape: \[\(2,\), \(3,\)\]$"):
        P.fuse_mean([np.zeros(2), np.zeros(3)])
    probs = {"axial": np.array([0.9]), "sagittal": np.array([0.1]), "coronal": np.array([0.1])}
    with pytest.raises(ValueError, match=r"^no weight for \['coronal'\]$"):
        P.fuse_weighted(probs, {"axial": 1, "sagittal": 1})
    with pytest.raises(ValueError, match="^weights given by name need probabilities given by name$"):
        P.fuse_weighted(list(probs.values()), {"axial": 1})
    with pytest.raises(ValueError, match="^2 weights for 3 probability volumes$"):
        P.fuse_weighted(probs, [1, 1])
    for bad in ([0, 0, 0], [1, np.inf, 1], [1, np.nan, 1]):
        with pytest.raises(ValueError, match="finite, non-negative and not all zero"):
            P.fuse_weighted(probs, bad)


def test_component_peaks_and_fused_probability():
    labels = np.array([[1, 1, 0, 2], [0, 0, 0, 2]])
    prob = np.array([[0.3, 0.7, 0.9, 0.5], [0.0, 0.0, 0.0, 0.6]])
    assert P.component_peaks(labels, 2, prob).tolist() == [0.0, 0.7, 0.6]  # the 0.9 is background
    assert P.component_peaks(np.zeros((2, 2), int), 0, np.ones((2, 2))).tolist() == [0.0]
    probs = {"axial": np.array([0.9]), "sagittal": np.array([0.6]), "coronal": np.array([0.0])}
    assert P.fused_probability(probs, "sagittal").tolist() == [0.6]
    assert P.fused_probability(probs, "mean").tolist() == pytest.approx([0.5])
    assert P.fused_probability(probs, "vote").tolist() == pytest.approx([0.5])  # vote's peaks: the mean
    w = {"axial": 1.0, "sagittal": 1.0, "coronal": 2.0}
    assert P.fused_probability(probs, "weighted", w).tolist() == pytest.approx([0.375])
    with pytest.raises(ConfigError, match="median"):
        P.fused_probability(probs, "median")


def test_min_peak_removes_lesions_without_a_confident_core():
    prob = np.zeros((1, 12), np.float32)
    prob[0, 1:4] = [0.45, 0.9, 0.45]  # a lesion with a core
    prob[0, 6:9] = 0.45  # a faint lesion of the same size
    prob[0, 11] = 0.95  # a one-voxel confident speck
    probs = {p: prob for p in ("axial", "sagittal", "coronal")}
    kw = dict(fusion="mean", threshold=0.4, spacing=(1.0, 1.0), connectivity=8)
    assert P.postprocess(probs, min_lesion_mm3=0, **kw).sum() == 7
    kept = P.postprocess(probs, min_lesion_mm3=0, min_peak=0.8, **kw)
    assert np.flatnonzero(kept[0]).tolist() == [1, 2, 3, 11]
    # both rules together: the speck is too small, the faint lesion too faint
    both = P.postprocess(probs, min_lesion_mm3=2, min_peak=0.8, **kw)
    assert both.dtype == np.uint8 and np.flatnonzero(both[0]).tolist() == [1, 2, 3]
    assert P.postprocess({p: np.zeros((1, 4)) for p in probs}, min_lesion_mm3=0, min_peak=0.8, **kw).sum() == 0


def test_peak_rule_edges_in_keep_large_components():
    labels = np.array([1, 1, 0, 2, 0, 3])
    peaks = np.array([0.0, 0.5, 0.49, 0.9])
    assert P.keep_large_components(labels, 3, 1, peaks, 0.5).tolist() == [1, 1, 0, 0, 0, 1]  # 0.5 itself is kept
    assert P.keep_large_components(labels, 3, 1, peaks).tolist() == [1, 1, 0, 1, 0, 1]  # no min_peak: all kept
    assert P.keep_large_components(labels, 3, 1, None, 0.8).tolist() == [1, 1, 0, 1, 0, 1]  # no peaks: no rule
    assert P.keep_large_components(labels, 3, 2, peaks, 0.5).tolist() == [1, 1, 0, 0, 0, 0]  # both rules


def test_peak_of_weighted_fusion_uses_the_weights():
    probs = {"axial": np.array([[0.9, 0.0]]), "sagittal": np.array([[0.3, 0.0]]), "coronal": np.array([[0.3, 0.0]])}
    w = {"axial": 2.0, "sagittal": 1.0, "coronal": 1.0}
    # weighted mean 0.6 (equal weights: 0.5): kept by a peak rule of 0.55, which equal weights would fail
    kw = dict(fusion="weighted", threshold=0.3, min_lesion_mm3=0, spacing=(1.0, 1.0), weights=w, connectivity=8)
    assert P.postprocess(probs, min_peak=0.62, **kw).sum() == 0
    assert P.postprocess(probs, min_peak=0.55, **kw).sum() == 1
    assert P.fuse_weighted(probs, w, 0.59).sum() == 1 and P.fuse_weighted(probs, w, 0.61).sum() == 0


def test_outline_large_redraws_only_large_lesions_and_drops_their_small_pieces():
    # 1D, 1 mm: a 9-voxel lesion (wide at 0.35, core 0.7 and a 1-voxel 0.7 shoulder) and a 3-voxel lesion at 0.35
    prob = np.array([[0.35, 0.7, 0.7, 0.7, 0.35, 0.35, 0.7, 0.35, 0.35, 0.0, 0.35, 0.35, 0.35]])
    mask = (prob >= 0.3).astype(np.uint8)
    kw = dict(spacing=(1.0, 1.0), connectivity=8)
    # lesions >= 5 mm³ redrawn at 0.5: the large one becomes [1..3] and [6]; the small one stays whole
    got = P.outline_large(mask, prob, large_mm3=5, large_threshold=0.5, **kw)
    assert got.dtype == np.uint8 and np.flatnonzero(got[0]).tolist() == [1, 2, 3, 6, 10, 11, 12]
    # pieces of the redrawn lesion under 2 mm³ go (the shoulder), not the small lesion (3 voxels, not redrawn)
    got = P.outline_large(mask, prob, large_mm3=5, large_threshold=0.5, fragment_mm3=2, **kw)
    assert np.flatnonzero(got[0]).tolist() == [1, 2, 3, 10, 11, 12]
    assert (P.outline_large(mask, prob, large_mm3=0, large_threshold=0.5, **kw) == mask).all()  # off
    assert (P.outline_large(mask, prob, large_mm3=10, large_threshold=0.5, **kw) == mask).all()  # none that large


def test_postprocess_applies_the_outline_after_removal_and_only_above_the_threshold():
    prob = np.array([[0.35, 0.7, 0.7, 0.7, 0.35, 0.0, 0.35, 0.35]])
    probs = {p: prob for p in ("axial", "sagittal", "coronal")}
    kw = dict(fusion="mean", threshold=0.3, spacing=(1.0, 1.0), connectivity=8)
    assert np.flatnonzero(P.postprocess(probs, min_lesion_mm3=0, **kw)[0]).tolist() == [0, 1, 2, 3, 4, 6, 7]
    # the faint 2-voxel lesion fails the peak rule; the other is redrawn at 0.5
    out = P.postprocess(probs, min_lesion_mm3=0, min_peak=0.6, large_mm3=4, large_threshold=0.5, **kw)
    assert np.flatnonzero(out[0]).tolist() == [1, 2, 3]
    # an outline threshold at or below the threshold changes nothing
    same = P.postprocess(probs, min_lesion_mm3=0, large_mm3=4, large_threshold=0.3, **kw)
    assert np.flatnonzero(same[0]).tolist() == [0, 1, 2, 3, 4, 6, 7]


def test_vote_fusion_redraws_large_lesions_on_the_planes_mean():
    # 1D, 1 mm. Votes at 0.3 give lesions [0, 1] and [3, 4]; the outline at 0.5 reads the planes' mean
    # (0.267, 0.6 | 0.267, 0.533), so it keeps voxels 1 and 4 -- voxel 4 has one vote at 0.5 (1.0, 0.3, 0.3),
    # so redrawing on votes would have dropped it.
    probs = {"axial": np.array([[0.4, 0.9, 0.9, 0.4, 1.0]]),
             "sagittal": np.array([[0.4, 0.9, 0.2, 0.4, 0.3]]),
             "coronal": np.array([[0.0, 0.0, 0.2, 0.0, 0.3]])}
    kw = dict(fusion="vote", threshold=0.3, min_lesion_mm3=0, spacing=(1.0, 1.0), connectivity=8)
    assert np.flatnonzero(P.postprocess(probs, **kw)[0]).tolist() == [0, 1, 3, 4]
    out = P.postprocess(probs, large_mm3=2, large_threshold=0.5, **kw)
    assert np.flatnonzero(out[0]).tolist() == [1, 4]
