"""raxnet.postprocess_selection: the post-processing chosen on validation maps is the known best one."""

import numpy as np
import pandas as pd
import pytest

from raxnet import postprocess_selection as S
from raxnet.errors import ConfigError

SHAPE = (8, 8, 8)
GRID = dict(methods=["mean", "vote"], thresholds=[0.4, 0.5], sizes_mm3=[2])


def case(corner, speck, speck_is_lesion=False):
    """A 2x2x2 lesion seen by two planes at 0.45 and missed by the third (0.1), and a 1-voxel speck that
    every plane gives 0.8. Mean on the lesion = 0.333: no mean threshold of the grid finds it; vote >= 0.4
    does (2 of 3). The speck is a false positive unless ``speck_is_lesion``."""
    truth = np.zeros(SHAPE, np.uint8)
    lesion = tuple(slice(c, c + 2) for c in corner)
    truth[lesion] = 1
    probs = {p: np.zeros(SHAPE, np.float32) for p in ("axial", "sagittal", "coronal")}
    for p, v in zip(probs, (0.45, 0.45, 0.1)):
        probs[p][lesion] = v
        probs[p][speck] = 0.8
    if speck_is_lesion:
        truth[speck] = 1
    return probs, truth


def scores(cases, **grid):
    rows = []
    for i, (probs, truth) in enumerate(cases):
        rows += [{"subject": i, **r} for r in S.score_candidates(probs, truth, (1.0, 1.0, 1.0), **{**GRID, **grid})]
    return S.summarise_candidates(rows)


def test_picks_the_known_best_setting():
    cases = [case((1, 1, 1), (6, 6, 6)), case((4, 4, 4), (0, 7, 0))]
    cand = scores(cases).set_index(["method", "threshold", "min_lesion_mm3"])
    # hand-computed per subject: vote@0.4 finds lesion (8) + speck (1): Dice 16/17; without the speck 1.0;
    # every other candidate finds the speck only (Dice 0) or nothing
    assert cand.loc[("vote", 0.4, 0.0), "dice_mean"] == pytest.approx(16 / 17)
    assert cand.loc[("vote", 0.4, 2.0), "dice_mean"] == 1.0
    assert cand.loc[("vote", 0.4, 0.0), "lesion_f1_mean"] == pytest.approx(2 / 3)  # TP 1, FP 1
    for key in [("mean", 0.4, 0.0), ("mean", 0.5, 0.0), ("vote", 0.5, 0.0), ("vote", 0.5, 2.0)]:
        assert cand.loc[key, "dice_mean"] == 0.0
    assert (cand["n_subjects"] == 2).all() and len(cand) == 2 * 2 * 2  # 0 is always a candidate size
    for metric in ("dice", "lesion_f1"):
        chosen = S.choose(cand.reset_index(), metric=metric)
        assert (chosen["fusion"], chosen["threshold"], chosen["min_lesion_mm3"]) == ("vote", 0.4, 2.0)
        assert chosen["score"] == 1.0 and chosen["n_subjects"] == 2
    assert S.choose(cand.reset_index())["score_without_removal"] == pytest.approx(16 / 17)
    # the combined metric: the mean of the two per subject, (16/17 + 2/3) / 2 for vote@0.4 with the speck
    assert cand.loc[("vote", 0.4, 0.0), "dice_lesion_f1_mean"] == pytest.approx((16 / 17 + 2 / 3) / 2)
    assert cand.loc[("vote", 0.4, 2.0), "dice_lesion_f1_mean"] == 1.0


def test_lesion_removal_is_kept_only_if_it_helps():
    # the speck is a real lesion: removing it costs Dice -> no removal
    cases = [case((1, 1, 1), (6, 6, 6), speck_is_lesion=True)]
    chosen = S.choose(scores(cases))
    assert (chosen["fusion"], chosen["threshold"], chosen["min_lesion_mm3"]) == ("vote", 0.4, 0.0)
    assert chosen["score"] == 1.0
    # removal that changes nothing (no small lesion at all): the tie keeps 0
    probs, truth = case((1, 1, 1), (6, 6, 6))
    for p in probs.values():
        p[6, 6, 6] = 0.0
    assert S.choose(scores([(probs, truth)], sizes_mm3=[1, 2]))["min_lesion_mm3"] == 0.0
    # the size is in mm³: on 2 mm voxels the 1-voxel speck (8 mm³) is kept by 8 mm³ and removed by 9
    rows = S.score_candidates(*case((1, 1, 1), (6, 6, 6)), (2.0, 2.0, 2.0), methods=["vote"], thresholds=[0.4],
                              sizes_mm3=[8, 9])
    assert [(r["min_lesion_mm3"], round(r["dice"], 4)) for r in rows] == [(0.0, 0.9412), (8.0, 0.9412), (9.0, 1.0)]


def test_lesion_removal_needs_more_than_min_gain():
    # hand-made candidate means: removing lesions < 100 mm³ gains 0.004, < 200 mm³ gains 0.02
    cand = pd.DataFrame({"method": ["mean"] * 3, "threshold": [0.5] * 3, "min_lesion_mm3": [0.0, 100.0, 200.0],
                         "n_subjects": [10] * 3, "dice_mean": [0.600, 0.604, 0.620], "lesion_f1_mean": [0.5] * 3})
    assert S.choose(cand)["min_lesion_mm3"] == 200.0  # no tolerance: the best size
    assert S.choose(cand, min_gain=0.005)["min_lesion_mm3"] == 200.0  # 0.02 > 0.005: still kept
    assert S.choose(cand, min_gain=0.03)["min_lesion_mm3"] == 0.0  # neither gain is worth a lost lesion
    only_small = cand.iloc[:2]
    assert S.choose(only_small)["min_lesion_mm3"] == 100.0
    chosen = S.choose(only_small, min_gain=0.005)
    assert chosen["min_lesion_mm3"] == 0.0 and chosen["score"] == pytest.approx(0.600) and chosen["min_gain"] == 0.005
    with pytest.raises(ConfigError, match="select_min_gain"):
        S.check_grid(["mean"], [0.5], [0], "dice", min_gain=-0.1)


def test_removal_is_judged_over_the_whole_grid_and_on_the_combined_metric():
    """Hand-made means shaped like the shipped weights' out-of-fold grid: without removal a lesion-counting
    metric prefers the high threshold (fewer specks); with removal the low threshold wins on both counts."""
    cand = pd.DataFrame({"method": ["mean"] * 4, "threshold": [0.4, 0.7, 0.4, 0.7],
                         "min_lesion_mm3": [0.0, 0.0, 200.0, 200.0], "n_subjects": [72] * 4,
                         "dice_mean": [0.420, 0.360, 0.419, 0.355], "lesion_f1_mean": [0.32, 0.40, 0.49, 0.43]})
    cand["dice_lesion_f1_mean"] = (cand["dice_mean"] + cand["lesion_f1_mean"]) / 2  # 0.37, 0.38, 0.4545, 0.3925
    pick = {m: S.choose(cand, metric=m, min_gain=0.005) for m in ("dice", "lesion_f1", "dice_lesion_f1")}
    assert (pick["dice"]["threshold"], pick["dice"]["min_lesion_mm3"]) == (0.4, 0.0)  # removal costs 0.001 Dice
    for m in ("lesion_f1", "dice_lesion_f1"):  # not 0.7 + removal (0.43 / 0.3925): removal at 0.4 beats both
        assert (pick[m]["threshold"], pick[m]["min_lesion_mm3"]) == (0.4, 200.0)
    assert pick["dice_lesion_f1"]["score"] == pytest.approx(0.4545)
    assert pick["dice_lesion_f1"]["score_without_removal"] == pytest.approx(0.38)  # 0.7, no removal
    assert pick["lesion_f1"]["score_without_removal"] == pytest.approx(0.40)
    # a removal gain at or under min_gain is not enough, wherever in the grid it is
    assert S.choose(cand, metric="dice_lesion_f1", min_gain=0.08)["min_lesion_mm3"] == 0.0
    S.check_grid(["mean"], [0.5], [0], "dice_lesion_f1")


def test_ties_go_to_the_listed_method_then_the_default_threshold():
    probs, truth = case((1, 1, 1), (6, 6, 6))
    for p in probs.values():  # every plane sees the lesion at 0.9, no speck: every candidate is perfect
        p[:] = 0.0
        p[truth > 0] = 0.9
    chosen = S.choose(scores([(probs, truth)], methods=["vote", "mean"], thresholds=[0.3, 0.6, 0.45]),
                      default_threshold=0.5, methods=["vote", "mean"])
    assert (chosen["fusion"], chosen["threshold"], chosen["min_lesion_mm3"]) == ("vote", 0.45, 0.0)


def test_grid_is_checked():
    S.check_grid(["mean"], [0.5], [0], "dice")
    for bad in (dict(methods=[]), dict(methods=["median"]), dict(thresholds=[1.0]), dict(thresholds=[]),
                dict(sizes_mm3=[-1]), dict(metric="hd95")):
        args = {**dict(methods=["mean"], thresholds=[0.5], sizes_mm3=[0], metric="dice"), **bad}
        with pytest.raises(ConfigError):
            S.check_grid(args["methods"], args["thresholds"], args["sizes_mm3"], args["metric"])
    assert list(S.summarise_candidates(pd.DataFrame(
        [{"method": "mean", "threshold": 0.5, "min_lesion_mm3": 0.0, "dice": 1.0, "lesion_f1": 1.0}]
    )).columns) == S.CANDIDATE_COLUMNS


def faint_speck_case():
    """A 2x2x2 lesion at 0.45 with a confident core voxel (0.9) in every plane, and a faint 2x2x2
    false positive at 0.45 with no core: the same size, so only the peak rule tells them apart."""
    truth = np.zeros(SHAPE, np.uint8)
    truth[1:3, 1:3, 1:3] = 1
    prob = np.zeros(SHAPE, np.float32)
    prob[1:3, 1:3, 1:3] = 0.45
    prob[1, 1, 1] = 0.9
    prob[5:7, 5:7, 5:7] = 0.45
    return {p: prob.copy() for p in ("axial", "sagittal", "coronal")}, truth


def test_peak_rule_keeps_the_lesion_with_a_core_and_drops_the_faint_speck():
    cand = scores([faint_speck_case()], methods=["mean"], thresholds=[0.4, 0.8], sizes_mm3=[8, 9],
                  peaks=[0.4, 0.8]).set_index(S.KEYS)
    # threshold 0.4: lesion + speck, Dice 16/24; with min_peak 0.8 the speck goes: Dice 1
    assert cand.loc[("mean", 0.4, 0.0, 0.0), "dice_mean"] == pytest.approx(16 / 24)
    assert cand.loc[("mean", 0.4, 0.0, 0.8), "dice_mean"] == 1.0
    assert cand.loc[("mean", 0.4, 0.0, 0.8), "lesion_f1_mean"] == 1.0
    # threshold 0.8 alone finds the core voxel only: Dice 2/9; a peak at or under the threshold is no
    # candidate (it removes nothing) and size cannot tell the two apart (9 mm³ removes both)
    assert cand.loc[("mean", 0.8, 0.0, 0.0), "dice_mean"] == pytest.approx(2 / 9)
    assert ("mean", 0.8, 0.0, 0.8) not in cand.index and ("mean", 0.4, 0.0, 0.4) not in cand.index
    assert cand.loc[("mean", 0.4, 9.0, 0.0), "dice_mean"] == 0.0
    assert len(cand) == 3 * 2 + 3 * 1  # sizes 0, 8, 9 x (thr 0.4: peaks 0 and 0.8; thr 0.8: peak 0)
    chosen = S.choose(cand.reset_index(), metric="dice_lesion_f1", min_gain=0.005)
    assert (chosen["threshold"], chosen["min_lesion_mm3"], chosen["min_peak"]) == (0.4, 0.0, 0.8)
    assert chosen["score"] == 1.0
    # a peak removal counts as removal: not kept when its gain is within min_gain
    assert S.choose(cand.reset_index(), metric="dice_lesion_f1", min_gain=0.5)["min_peak"] == 0.0
    with pytest.raises(ConfigError, match="select_min_peak"):
        S.check_grid(["mean"], [0.5], [0], "dice", peaks=[1.0])


def test_without_a_peak_grid_rows_and_choice_are_as_before():
    rows = S.score_candidates(*case((1, 1, 1), (6, 6, 6)), (1.0, 1.0, 1.0), **GRID)
    assert {r["min_peak"] for r in rows} == {0.0} and len(rows) == 2 * 2 * 2
    assert S.choose(S.summarise_candidates(rows))["min_peak"] == 0.0


def test_grid_errors_name_the_setting_and_the_choices():
    with pytest.raises(ConfigError, match="select_methods: empty; expected some of axial, sagittal, coronal, mean"):
        S.check_grid([], [0.5], [0], "dice")
    with pytest.raises(ConfigError, match="must be one of dice, lesion_f1, dice_lesion_f1, got 'hd95'"):
        S.check_grid(["mean"], [0.5], [0], "hd95")
    for bad in (dict(thresholds=[0.0]), dict(min_gain=1.0), dict(peaks=[-0.1])):
        args = {**dict(thresholds=[0.5], min_gain=0.0, peaks=[0.0]), **bad}
        with pytest.raises(ConfigError):
            S.check_grid(["mean"], args["thresholds"], [0], "dice", args["min_gain"], args["peaks"])
    S.check_grid(["mean"], [0.5], [0], "dice", 0.0, [0.0, 0.5, 0.99])  # 0 = no peak rule, a valid value


def cand(rows):
    """Hand-made candidate means: (method, threshold, min_lesion_mm3, min_peak, dice_mean)."""
    df = pd.DataFrame(rows, columns=["method", "threshold", "min_lesion_mm3", "min_peak", "dice_mean"])
    return df.assign(n_subjects=5, lesion_f1_mean=0.0)


def test_choice_ties_and_what_counts_as_removal():
    # the methods argument orders the tie, not the candidates' order; the default threshold is 0.5
    tie = cand([("mean", 0.4, 0.0, 0.0, 0.6), ("mean", 0.7, 0.0, 0.0, 0.6), ("vote", 0.7, 0.0, 0.0, 0.6)])
    assert S.choose(tie, methods=["vote", "mean"])["fusion"] == "vote"
    assert (S.choose(tie)["fusion"], S.choose(tie)["threshold"]) == ("mean", 0.4)
    # equal removal candidates: the lowest peak wins
    peaks = cand([("mean", 0.3, 0.0, 0.0, 0.5), ("mean", 0.3, 0.0, 0.8, 0.7), ("mean", 0.3, 0.0, 0.6, 0.7)])
    chosen = S.choose(peaks)
    assert chosen["min_peak"] == 0.6 and chosen["metric"] == "dice" and chosen["score_without_removal"] == 0.5
    # any size above 0 is a removal, 1 mm³ included: its gain must pass min_gain
    small = cand([("mean", 0.5, 0.0, 0.0, 0.5), ("mean", 0.5, 1.0, 0.0, 0.6)])
    assert S.choose(small, min_gain=0.2)["min_lesion_mm3"] == 0.0
    assert S.choose(small, min_gain=0.05)["min_lesion_mm3"] == 1.0


def test_summary_keeps_grid_order_and_reads_missing_peaks_as_zero():
    rows = [{"method": m, "threshold": 0.5, "min_lesion_mm3": 0.0, "dice": 1.0, "lesion_f1": 1.0}
            for m in ("vote", "mean", "axial")]
    out = S.summarise_candidates(rows)
    assert out["method"].tolist() == ["vote", "mean", "axial"] and (out["min_peak"] == 0.0).all()


def test_scoring_uses_the_weights_connectivity_and_both_removal_rules():
    """Weighted fusion with unequal weights, 6-connectivity, and a one-voxel false positive (exact float64
    values: the weighted lesion peak is exactly 0.5)."""
    shape = (6, 6, 6)
    truth = np.zeros(shape, np.uint8)
    truth[1, 1, 1] = truth[2, 2, 2] = 1  # one lesion at 26-connectivity, two at 6
    ax = np.zeros(shape)
    ax[truth > 0] = 0.75
    ax[4, 4, 4] = 0.75  # the false positive: seen by the axial plane only
    low = np.zeros(shape)
    low[truth > 0] = 0.25
    probs = {"axial": ax, "sagittal": low, "coronal": low}
    w = {"axial": 2.0, "sagittal": 1.0, "coronal": 1.0}  # weighted: 0.5 on the lesion, 0.375 on the speck
    rows = S.score_candidates(probs, truth, (1.0, 1.0, 1.0), methods=["weighted"], thresholds=[0.3],
                              sizes_mm3=[2], peaks=[0.5], connectivity=6, weights=w)
    got = {(r["min_lesion_mm3"], r["min_peak"]): (round(r["dice"], 4), round(r["lesion_f1"], 4)) for r in rows}
    # with equal weights the speck (0.25) would be under the threshold and the lesion's peak (0.417) under 0.5
    assert got[(0.0, 0.0)] == (0.8, 0.8)  # 6-connectivity: two true lesions found, one false: F1 4/5
    assert got[(0.0, 0.5)] == (1.0, 1.0)  # the speck (0.375) goes; the lesion voxels at exactly 0.5 stay
    assert got[(2.0, 0.5)] == (0.0, 0.0)  # size 2 also removes the 1-voxel lesions (6-connected), peak or not
    assert got[(2.0, 0.0)] == (0.0, 0.0)


def large_case():
    """A 4x4x4 true lesion predicted at 0.9 with a one-voxel rim of 0.35 around it (6x6x6 at threshold 0.3),
    and a true 1-voxel lesion at 0.35 far from it."""
    truth = np.zeros((12, 12, 12), np.uint8)
    truth[2:6, 2:6, 2:6] = 1
    truth[10, 10, 10] = 1
    prob = np.zeros(truth.shape, np.float32)
    prob[1:7, 1:7, 1:7] = 0.35
    prob[2:6, 2:6, 2:6] = 0.9
    prob[10, 10, 10] = 0.35
    return {p: prob for p in ("axial", "sagittal", "coronal")}, truth


def test_large_outline_is_scored_and_chosen_only_when_it_helps():
    probs, truth = large_case()
    base = {"fusion": "mean", "threshold": 0.3, "min_lesion_mm3": 0.0, "min_peak": 0.0}
    rows = S.score_large_candidates(probs, truth, (1.0, 1.0, 1.0), base, large_mm3=[10, 1000], large_thresholds=[0.3, 0.5],
                                    fragments_mm3=[0], connectivity=26)
    # the base, then 10 and 1000 mm³ at 0.5 (0.3 is not above the threshold: no candidate)
    assert [(r["large_mm3"], r["large_threshold"]) for r in rows] == [(0.0, 0.0), (10.0, 0.5), (1000.0, 0.5)]
    # base: 216 + 1 predicted voxels, 65 true, 65 overlap: Dice 130 / 282; both lesions found, F1 1
    assert rows[0]["dice"] == pytest.approx(130 / 282) and rows[0]["lesion_f1"] == 1.0
    # redrawn (the 216-voxel lesion is >= 10 mm³): the cube exactly, the small lesion untouched: Dice 1
    assert rows[1]["dice"] == pytest.approx(1.0) and rows[1]["lesion_f1"] == 1.0
    assert rows[2] == {**rows[0], "large_mm3": 1000.0, "large_threshold": 0.5, "large_fragment_mm3": 0.0}
    chosen = S.choose_large(rows, metric="dice")
    assert (chosen["large_mm3"], chosen["large_threshold"]) == (10.0, 0.5)
    assert chosen["score"] == pytest.approx(1.0) and chosen["score_without"] == pytest.approx(130 / 282)
    assert len(chosen["candidates"]) == 3
    # a gain below min_gain buys nothing
    assert S.choose_large(rows, metric="dice", min_gain=0.6)["large_mm3"] == 0.0


def test_kept_voxels_score_every_candidate_as_the_whole_volume_does():
    probs, truth = large_case()
    probs = {p: v.copy() for p, v in probs.items()}
    probs["axial"][0, 11, 0] = 0.25  # one plane alone under the lowest threshold: not kept
    probs["coronal"][11, 0, 0] = 0.31  # a faint speck in one plane: kept
    kept = S.keep(probs, truth, (1.0, 1.0, 1.0), 0.3)
    assert kept.index.size == 216 + 1 + 1 and kept.truth.sum() == 65 and kept.spacing == (1.0, 1.0, 1.0)
    small, small_truth = S.unkeep(kept)
    assert small_truth.shape == (11, 11, 11) and small_truth.sum() == 65  # rows 1..11 (cube to speck), cols 0..10
    assert small["coronal"].max() == pytest.approx(0.9) and small["axial"].dtype == np.float32
    base = {"fusion": "vote", "threshold": 0.3, "min_lesion_mm3": 0.0, "min_peak": 0.0}
    grid = dict(large_mm3=[10], large_thresholds=[0.5], fragments_mm3=[0, 100], connectivity=26)
    full = S.score_large_candidates(probs, truth, (1.0, 1.0, 1.0), base, **grid)
    assert S.score_large_candidates(small, small_truth, kept.spacing, base, **grid) == full
    empty = S.keep({p: np.zeros((3, 3)) for p in probs}, np.zeros((3, 3)), (1.0, 1.0), 0.5)
    p0, t0 = S.unkeep(empty)
    assert t0.shape == (1, 1) and not t0.any() and p0["axial"].shape == (1, 1)
    with pytest.raises(ConfigError, match="select_large_threshold"):
        S.check_grid(["mean"], [0.5], [0], "dice", large={"large_threshold": [1.0]})
