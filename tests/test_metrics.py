"""raxnet.metrics: tiny hand-built volumes with hand-computed answers."""

import math

import numpy as np
import pytest

from raxnet import metrics as M


def vol(shape=(6, 6, 6), *voxels):
    a = np.zeros(shape, dtype=np.uint8)
    for v in voxels:
        a[v] = 1
    return a


# --- overlap metrics -------------------------------------------------------------------------------


def test_dice_iou_precision_recall_known_overlap():
    # truth: 4 voxels, prediction: 6 voxels, 3 shared.
    t = np.zeros((4, 4, 4), np.uint8)
    p = np.zeros((4, 4, 4), np.uint8)
    t[0, 0, 0:4] = 1
    p[0, 0, 1:4] = 1
    p[1, 1, 0:3] = 1
    assert M.dice(p, t) == pytest.approx(2 * 3 / (6 + 4))  # 0.6
    assert M.iou(p, t) == pytest.approx(3 / 7)
    assert M.precision(p, t) == pytest.approx(3 / 6)
    assert M.recall(p, t) == pytest.approx(3 / 4)
    vox, mm3 = M.volume_difference(p, t, spacing=(1.0, 2.0, 0.5))
    assert vox == 2 and mm3 == pytest.approx(2.0)
    vox, mm3 = M.volume_difference(t, p, spacing=(2.0, 2.0, 2.0))
    assert vox == 2 and mm3 == pytest.approx(16.0)


def test_empty_conventions():
    empty = np.zeros((5, 5, 5), np.uint8)
    one = vol((5, 5, 5), (2, 2, 2))
    # both empty: perfect
    for f in (M.dice, M.iou, M.precision, M.recall, M.lesion_f1):
        assert f(empty, empty) == 1.0
    assert M.hd95(empty, empty) == 0.0
    assert M.lesion_count_difference(empty, empty) == 0
    assert M.volume_difference(empty, empty) == (0, 0.0)
    # exactly one empty: failure, HD95 undefined
    for p, t in ((empty, one), (one, empty)):
        for f in (M.dice, M.iou, M.precision, M.recall, M.lesion_f1):
            assert f(p, t) == 0.0, f.__name__
        assert math.isnan(M.hd95(p, t))
        assert M.lesion_count_difference(p, t) == 1
    r = M.evaluate(empty, empty, spacing=(1, 1, 1))
    assert r["dice"] == 1.0 and r["hd95_mm"] == 0.0 and r["lesion_voxels"] == 0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        M.dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))


# --- connectivity and lesion-wise detection -------------------------------------------------------


def test_diagonal_voxels_depend_on_connectivity():
    edge = vol((4, 4, 4), (1, 1, 1), (2, 2, 1))  # share an edge
    corner = vol((4, 4, 4), (1, 1, 1), (2, 2, 2))  # share a corner only
    assert M.label(edge, 6)[1] == 2 and M.label(edge, 18)[1] == 1 and M.label(edge, 26)[1] == 1
    assert M.label(corner, 6)[1] == 2 and M.label(corner, 18)[1] == 2 and M.label(corner, 26)[1] == 1
    single = vol((4, 4, 4), (1, 1, 1))
    # prediction = the two corner voxels, truth = one of them.
    assert M.lesion_count_difference(corner, single, connectivity=6) == 1
    assert M.lesion_count_difference(corner, single, connectivity=26) == 0
    # 6-connectivity: the second voxel is its own predicted component touching no lesion -> 1 FP.
    assert M.lesion_f1(corner, single, connectivity=6) == pytest.approx(1 / (1 + 0.5))
    assert M.lesion_f1(corner, single, connectivity=26) == 1.0
    # default is 26 (raxnet.components.LESION_CONNECTIVITY, as the ATLAS R2.0 / ISLES 2022 scorer)
    assert M.lesion_f1(corner, single) == M.lesion_f1(corner, single, connectivity=26)
    assert M.lesion_count_difference(corner, single) == 0
    with pytest.raises(ValueError, match="connectivity"):
        M.label(single, 8)


def test_one_missed_one_spurious_lesion_f1_half():
    shape = (10, 10, 10)
    t = vol(shape, (1, 1, 1), (1, 1, 2), (7, 7, 7))  # two lesions
    p = vol(shape, (1, 1, 2), (4, 8, 1))  # hits lesion 1, misses lesion 2, one spurious blob
    c = M.lesion_detection(p, t)
    assert c == {"tp": 1, "fn": 1, "fp": 1, "n_truth": 2, "n_pred": 2}
    assert M.lesion_f1(p, t) == pytest.approx(0.5)  # 1 / (1 + (1 + 1) / 2)
    assert M.lesion_count_difference(p, t) == 0


def test_one_prediction_touching_two_lesions_counts_both():
    t = vol((8, 8, 8), (1, 1, 1), (1, 1, 3))
    p = np.zeros((8, 8, 8), np.uint8)
    p[1, 1, 1:4] = 1  # bridges both lesions
    assert M.lesion_detection(p, t) == {"tp": 2, "fn": 0, "fp": 0, "n_truth": 2, "n_pred": 1}
    assert M.lesion_f1(p, t) == 1.0
    assert M.lesion_count_difference(p, t) == 1


# --- HD95 ------------------------------------------------------------------------------------------


def test_hd95_anisotropic_spacing_hand_computed():
    t = vol((6, 6, 6), (1, 1, 1))
    p = vol((6, 6, 6), (2, 1, 3))  # offset (1, 0, 2) voxels
    assert M.hd95(p, t) == pytest.approx(math.sqrt(1 + 4))
    # spacing (3, 1, 2) mm -> offset (3 mm, 0, 4 mm) -> 5 mm
    assert M.hd95(p, t, spacing=(3.0, 1.0, 2.0)) == pytest.approx(5.0)
    # anisotropy changes which truth voxel is nearest: truth at x=0 and z=4 around prediction (0,0,2)->
    t2 = vol((6, 6, 6), (2, 0, 0), (0, 0, 4))
    p2 = vol((6, 6, 6), (0, 0, 0))
    # spacing (1, 1, 3): p->t distances min(2, 12)=2 mm; t->p: 2 mm and 12 mm. Pooled [2, 2, 12]:
    # 95th percentile (linear) = 2 + 0.9 * (12 - 2) = 11.
    assert M.hd95(p2, t2, spacing=(1.0, 1.0, 3.0)) == pytest.approx(11.0)
    d_pt, d_tp = M.surface_distances(p2, t2, spacing=(1.0, 1.0, 3.0))
    assert sorted(d_pt) == [pytest.approx(2.0)] and sorted(d_tp) == [pytest.approx(2.0), pytest.approx(12.0)]


def test_hd95_is_a_percentile_not_the_maximum():
    # identical 5x5x5 cubes (98 surface voxels each) + one far-away spurious voxel:
    # 197 pooled distances, one of them 10 mm -> 95th percentile 0, Hausdorff (max) would be 10.
    t = np.zeros((20, 20, 20), np.uint8)
    t[2:7, 2:7, 2:7] = 1
    p = t.copy()
    p[16, 4, 4] = 1  # nearest cube surface voxel (6, 4, 4): 10 voxels away
    d_pt, d_tp = M.surface_distances(p, t)
    assert d_pt.size == 99 and d_tp.size == 98 and d_pt.max() == pytest.approx(10.0)
    assert M.hd95(p, t) == 0.0


def test_hd95_surface_uses_whole_array_border():
    # a full slab touching the array border: its border voxels are surface, so equal masks give 0
    t = np.ones((4, 4, 4), np.uint8)
    assert M.hd95(t, t) == 0.0
    p = t.copy()
    p[:, :, 3] = 0  # prediction one slice short along z (spacing 2 mm)
    # the 16 truth surface voxels on z=3 lie 2 mm from the prediction's top; 4 prediction-only surface
    # voxels lie 1 mm from the truth's side; 80 shared ones 0 mm -> 16 of 100 at 2 mm -> 95th pct = 2.
    assert M.hd95(p, t, spacing=(1, 1, 2)) == pytest.approx(2.0)


def test_evaluate_keys_and_values():
    t = np.zeros((4, 4, 4), np.uint8)
    t[0, 0, 0:4] = 1
    p = np.zeros((4, 4, 4), np.uint8)
    p[0, 0, 1:4] = 1
    r = M.evaluate(p, t, spacing=(1.0, 1.0, 2.0), connectivity=26)
    assert tuple(r) == M.METRIC_KEYS
    assert r["dice"] == pytest.approx(6 / 7)
    assert r["lesion_f1"] == 1.0 and r["lesion_count_diff"] == 0
    assert r["volume_diff_voxels"] == 1 and r["volume_diff_mm3"] == pytest.approx(2.0)
    assert r["lesion_voxels"] == 4 and r["pred_voxels"] == 3
    # truth line z 0..3 (2 mm steps) vs prediction z 1..3: all surface, distances 2,0,0,0 and 0,0,0
    assert r["hd95_mm"] == pytest.approx(np.percentile([2, 0, 0, 0, 0, 0, 0], 95))


def test_evaluate_invariant_to_zero_padding_and_border():
    # metrics are computed on the union's bounding box: embedding in a larger empty volume (and masks
    # touching the array border) must not change a single value
    rng = np.random.default_rng(3)
    p = (rng.random((7, 8, 6)) > 0.6).astype(np.uint8)
    t = (rng.random((7, 8, 6)) > 0.55).astype(np.uint8)
    small = M.evaluate(p, t, spacing=(1.0, 2.0, 0.5), connectivity=18)
    big_p = np.zeros((30, 31, 32), np.uint8)
    big_t = np.zeros_like(big_p)
    big_p[5:12, 9:17, 20:26] = p
    big_t[5:12, 9:17, 20:26] = t
    big = M.evaluate(big_p, big_t, spacing=(1.0, 2.0, 0.5), connectivity=18)
    assert small == pytest.approx(big)
    assert 0 < small["dice"] < 1 and small["hd95_mm"] > 0


# --- per-slice Dice (stage 07) and the 3D Dice it shares ------------------------------------------


def test_slice_dice_hand_computed() -> None:
    pred = np.zeros((3, 2, 2), bool)
    truth = np.zeros((3, 2, 2), bool)
    pred[0, 0, :] = True  # 2 px
    truth[0, 0, 0] = truth[0, 1, 0] = True  # 2 px, 1 shared -> 2*1/4
    truth[1, 1, 1] = True  # missed entirely -> 0
    # slice 2 empty in both -> 1
    np.testing.assert_allclose(M.slice_dice(pred, truth), [0.5, 0.0, 1.0])


def test_dice_3d_semantics() -> None:
    a = np.zeros((2, 2, 2), bool)
    assert M.dice(a, a) == 1.0
    b = a.copy()
    b[0, 0, 0] = True
    assert M.dice(a, b) == 0.0
    c = b.copy()
    c[1, 1, 1] = True
    assert M.dice(c, b) == pytest.approx(2 * 1 / 3)


# --- added for the mutation benchmark (issue 14): answers that change under plausible wrong variants ------


def test_evaluate_honours_connectivity_for_lesion_f1_and_counts():
    """A diagonal-only pair of truth voxels (touching at a corner) is one lesion under 26-connectivity and two
    under 6; the prediction covers one of them. 26: TP 1, F1 1, counts equal; 6: TP 1, FN 1, F1 = 1 / 1.5."""
    t = vol((5, 5, 5), (1, 1, 1), (2, 2, 2))
    p = vol((5, 5, 5), (1, 1, 1))
    r26 = M.evaluate(p, t, connectivity=26)
    assert (r26["truth_lesions"], r26["pred_lesions"], r26["lesion_count_diff"]) == (1, 1, 0)
    assert r26["lesion_f1"] == 1.0
    r6 = M.evaluate(p, t, connectivity=6)
    assert (r6["truth_lesions"], r6["pred_lesions"], r6["lesion_count_diff"]) == (2, 1, 1)
    assert r6["lesion_f1"] == pytest.approx(2 / 3)
    assert M.evaluate(p, t, connectivity=18)["truth_lesions"] == 2  # a corner is not an edge
    assert M.lesion_f1(p, t, connectivity=6) == pytest.approx(2 / 3)
    assert M.lesion_count_difference(p, t, connectivity=6) == 1
    assert M.lesion_count_difference(p, t, connectivity=26) == 0
    assert M.lesion_count_difference(t, p, connectivity=6) == 1  # absolute
    assert M.lesion_detection(p, t, connectivity=6) == {"tp": 1, "fn": 1, "fp": 0, "n_truth": 2, "n_pred": 1}
    # the same pair predicted, truth one voxel: FP counted per predicted component
    assert M.lesion_detection(t, p, connectivity=6) == {"tp": 1, "fn": 0, "fp": 1, "n_truth": 1, "n_pred": 2}
    assert M.lesion_detection(t, p, connectivity=26)["fp"] == 0


def test_evaluate_of_two_empty_masks():
    e = np.zeros((3, 3, 3), np.uint8)
    r = M.evaluate(e, e, spacing=(2.0, 2.0, 2.0))
    assert (r["dice"], r["iou"], r["precision"], r["recall"], r["lesion_f1"], r["hd95_mm"]) == (1.0,) * 5 + (0.0,)
    assert r["lesion_count_diff"] == 0 and r["volume_diff_mm3"] == 0.0 and r["truth_lesions"] == 0


def test_evaluate_lesion_f1_with_unequal_fp_and_fn():
    """TP 1, FP 2, FN 1: F1 = 1 / (1 + (2 + 1) / 2) = 0.4."""
    t = vol((9, 9, 9), (1, 1, 1), (7, 7, 7))  # two true lesions, the second missed
    p = vol((9, 9, 9), (1, 1, 1), (4, 1, 1), (1, 4, 7))  # one hit, two spurious
    r = M.evaluate(p, t)
    assert r["lesion_f1"] == pytest.approx(0.4)
    assert M.lesion_f1(p, t) == pytest.approx(0.4)
    assert M.lesion_detection(p, t) == {"tp": 1, "fn": 1, "fp": 2, "n_truth": 2, "n_pred": 3}
    assert r["lesion_count_diff"] == 1 and r["truth_lesions"] == 2 and r["pred_lesions"] == 3


def test_scalar_and_bad_spacing():
    t = vol((4, 4, 4), (0, 0, 0), (0, 0, 1))
    p = vol((4, 4, 4), (0, 0, 0))
    assert M.volume_difference(p, t, spacing=2.0) == (1, pytest.approx(8.0))
    assert M.evaluate(p, t, spacing=2.0)["volume_diff_mm3"] == pytest.approx(8.0)
    assert M.volume_difference(p, t, spacing=(1.0, 2.0, 3.0, 9.0)) == (1, pytest.approx(6.0))  # extra value ignored
    with pytest.raises(ValueError, match=r"spacing \(1.0, 2.0\) has fewer than 3 values"):
        M.volume_difference(p, t, spacing=(1.0, 2.0))
    with pytest.raises(ValueError, match=r"spacing must be positive, got \(1.0, 0.0, 1.0\)"):
        M.volume_difference(p, t, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="spacing must be positive"):
        M.hd95(p, t, spacing=(1.0, -1.0, 1.0))


def test_surface_connectivity_and_2d_masks():
    """Truth: the 3x3x3 cube without its 8 corners (19 voxels), prediction its centre. Face erosion (6) keeps
    the centre, so the truth surface is the 18 outer voxels; full erosion (26) removes it too (its corner
    neighbours are missing), so the centre is surface and the prediction's distance is 0."""
    t = np.zeros((5, 5, 5), np.uint8)
    t[1:4, 1:4, 1:4] = 1
    for i in (1, 3):
        for j in (1, 3):
            for k in (1, 3):
                t[i, j, k] = 0
    p = vol((5, 5, 5), (2, 2, 2))
    d_pt, d_tp = M.surface_distances(p, t)  # 6 by default
    assert d_pt.tolist() == [1.0] and sorted(d_tp.tolist()) == pytest.approx([1.0] * 6 + [math.sqrt(2)] * 12)
    d_pt, d_tp = M.surface_distances(p, t, connectivity=26)
    assert d_pt.tolist() == [0.0] and sorted(d_tp.tolist()) == pytest.approx([0.0] + [1.0] * 6 + [math.sqrt(2)] * 12)
    assert d_pt.dtype == np.float64
    assert M.hd95(p, t, connectivity=26) == pytest.approx(np.percentile([0.0, 0.0] + [1.0] * 6 + [math.sqrt(2)] * 12, 95))
    assert M.hd95(p, t) == pytest.approx(np.percentile([1.0] + [1.0] * 6 + [math.sqrt(2)] * 12, 95))
    # 2D masks: a 3x3 square and its centre
    t2 = np.zeros((5, 5), np.uint8)
    t2[1:4, 1:4] = 1
    p2 = np.zeros((5, 5), np.uint8)
    p2[2, 2] = 1
    d_pt, d_tp = M.surface_distances(p2, t2, connectivity=4)
    assert d_pt.tolist() == [1.0] and sorted(d_tp.tolist()) == pytest.approx([1.0] * 4 + [math.sqrt(2)] * 4)
    # hd95 passes its neighbourhood on (the 3D default, 6, is not a 2D neighbourhood)
    assert M.hd95(p2, t2, connectivity=4) == pytest.approx(np.percentile([1.0] * 5 + [math.sqrt(2)] * 4, 95))
    with pytest.raises(ValueError, match="^surface distances need two non-empty masks$"):
        M.surface_distances(p2, np.zeros_like(t2))
    with pytest.raises(ValueError, match="^surface distances need two non-empty masks$"):
        M.surface_distances(np.zeros_like(t2), t2)


def test_crop_to_union_box_and_padding():
    p = np.zeros((8, 9, 10), bool)
    t = np.zeros((8, 9, 10), bool)
    p[2, 3, 4] = True
    t[4, 3, 6] = True
    cp, ct = M.crop_to_union(p, t)
    assert cp.shape == ct.shape == (3 + 2, 1 + 2, 3 + 2)  # box 2..4 x 3..3 x 4..6, one voxel of padding
    assert cp[1, 1, 1] and ct[3, 1, 3] and cp.sum() == 1 and ct.sum() == 1
    e = np.zeros((3, 3), bool)
    assert M.crop_to_union(e, e)[0] is e  # nothing to crop


def test_dice_and_slice_dice_single_voxel_cases():
    # one voxel in one mask only: Dice 0; one shared voxel: 1; slice 2 holds one voxel each, not shared
    p = np.zeros((3, 2, 2), np.uint8)
    t = np.zeros((3, 2, 2), np.uint8)
    p[0, 0, 0] = 1
    p[1, 0, 0] = t[1, 0, 0] = 1
    p[2, 0, 0], t[2, 1, 1] = 1, 1
    sd = M.slice_dice(p, t)
    assert sd.dtype == np.float64 and sd.tolist() == [0.0, 1.0, 0.0]
    assert M.dice(p, t) == pytest.approx(2 * 1 / (3 + 2))
