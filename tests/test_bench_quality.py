"""bench/bench_quality.py's paired comparison: hand-made per-subject tables with known gains."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raxnet.evaluation import SUMMARY_METRICS

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_quality.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_quality", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(set_name, weights, dice, f1, method="fused"):
    return [{"set": set_name, "weights": weights, "subject": f"s{k}", "method": method, "dice": d, "lesion_f1": f}
            for k, (d, f) in enumerate(zip(dice, f1))]


def test_paired_gain_known_differences(bench):
    df = pd.DataFrame(
        _rows("fresh", "new", [0.5, 0.6, 0.7], [1.0, 0.5, np.nan])
        + _rows("fresh", "old", [0.4, 0.6, 0.9], [0.5, 0.5, 0.25])
        + _rows("fresh", "old", [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], method="axial")  # not the fused mask: ignored
        + _rows("shifted", "new", [0.3, 0.3], [0.2, 0.2]) + _rows("shifted", "old", [0.1, 0.1], [0.2, 0.2]))
    out = bench.paired_gain(df, "new", "old", n_boot=2000).set_index(["set", "metric"])
    fresh = out.loc[("fresh", "dice")]
    assert fresh["n"] == 3 and fresh["gain"] == pytest.approx((0.1 + 0.0 - 0.2) / 3)
    assert (fresh["better"], fresh["worse"]) == (1, 1)  # 0.6 vs 0.6 is a tie
    assert -0.2 - 1e-9 <= fresh["ci_low"] < fresh["gain"] < fresh["ci_high"] <= 0.1 + 1e-9
    f1 = out.loc[("fresh", "lesion_f1")]  # s2 has no lesion F1 for "new": left out of that metric only
    assert f1["n"] == 2 and f1["gain"] == pytest.approx(0.25) and f1["base_mean"] == pytest.approx(0.5)
    shifted = out.loc[("shifted", "dice")]  # the same gain on every subject: the interval is that gain
    assert shifted["gain"] == pytest.approx(0.2)
    assert shifted["ci_low"] == pytest.approx(0.2) and shifted["ci_high"] == pytest.approx(0.2)
    assert out.loc[("shifted", "lesion_f1"), "gain"] == pytest.approx(0.0)


def test_paired_gain_is_reproducible_and_absent_without_both_sets(bench):
    df = pd.DataFrame(_rows("fresh", "new", [0.1, 0.9, 0.4, 0.3], [0, 1, 1, 0])
                      + _rows("fresh", "old", [0.2, 0.5, 0.4, 0.0], [0, 0, 1, 1]))
    a, b = bench.paired_gain(df, "new", "old"), bench.paired_gain(df, "new", "old")
    pd.testing.assert_frame_equal(a, b)
    assert bench.paired_gain(df, "new", "other").empty


@pytest.fixture(scope="module")
def pool_module(bench):
    spec = importlib.util.spec_from_file_location("bench_pool", BENCH.with_name("bench_pool.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_folder(folder: Path, new_dice, old_dice, order=("new", "old")) -> Path:
    folder.mkdir()
    rows = {"new": _rows("fresh", "new", new_dice, [1.0] * len(new_dice)),
            "old": _rows("fresh", "old", old_dice, [0.5] * len(old_dice))}
    df = pd.DataFrame([r for w in order for r in rows[w]]).assign(volume_bin="<1 mL", error="")
    for metric in SUMMARY_METRICS:  # the columns a real run writes; unset here
        if metric not in df:
            df[metric] = np.nan
    df.to_csv(folder / "subject_metrics.csv", index=False)
    pd.DataFrame([{"set": "fresh", "weights": w, "subject": "s0", "lesion": 1, "volume_ml": 0.5,
                   "volume_bin": "<1 mL", "detected": w == "new"} for w in order]).to_csv(folder / "lesions.csv",
                                                                                       index=False)
    return folder


def test_pool_pairs_within_each_run_and_recomputes_every_table(pool_module, tmp_path):
    # both runs name their subjects s0, s1: pooled, they are four subjects, each paired within its own run
    a = _run_folder(tmp_path / "seedA", [0.5, 0.7], [0.4, 0.7])
    b = _run_folder(tmp_path / "seedB", [0.2, 0.9], [0.3, 0.5])
    tables = pool_module.pool([a, b])
    paired = tables["paired"].set_index(["set", "metric"]).loc[("fresh", "dice")]
    assert paired["n"] == 4 and paired["gain"] == pytest.approx((0.1 + 0.0 - 0.1 + 0.4) / 4)
    assert (paired["better"], paired["worse"]) == (2, 1)
    det = tables["lesion_detection"].set_index("weights")
    assert det.loc["new", "detected"] == 2 and det.loc["old", "detected"] == 0 and det.loc["new", "lesions"] == 2
    by_volume = tables["dice_by_volume"].set_index("weights")
    assert by_volume.loc["new", "n"] == 4 and by_volume.loc["new", "dice_mean"] == pytest.approx(0.575)


def test_pool_refuses_runs_of_different_weight_sets(pool_module, tmp_path):
    a = _run_folder(tmp_path / "seedA", [0.5], [0.4])
    b = _run_folder(tmp_path / "seedB", [0.5], [0.4], order=("old", "new"))
    with pytest.raises(SystemExit, match="differ"):
        pool_module.pool([a, b])


def test_small_lesions_are_split_by_size_and_larger_ones_left_out(bench):
    df = pd.DataFrame(_rows("fresh", "new", [0.5], [1.0])).assign(volume_bin="<1 mL", error="")
    for metric in SUMMARY_METRICS:
        if metric not in df:
            df[metric] = np.nan
    les = pd.DataFrame([{"set": "fresh", "weights": "new", "subject": "s0", "lesion": k + 1, "volume_ml": v,
                         "volume_bin": bench._volume_bin(v), "detected": d}
                        for k, (v, d) in enumerate([(0.003, False), (0.009, True), (0.05, False), (0.1, True),
                                                    (0.99, False), (1.0, True), (20.0, True)])])
    tables = bench.tables_from(df, les, ["new"])
    small = tables["small_lesion_detection"].set_index("volume_bin")
    assert list(small.index) == ["<0.01 mL", "0.01-0.1 mL", "0.1-1 mL"]  # 1.0 mL and 20 mL are not small
    assert small["lesions"].tolist() == [2, 1, 2] and small["detected"].tolist() == [1, 0, 1]
    det = tables["lesion_detection"].set_index("volume_bin")
    assert det.loc["<1 mL", "lesions"] == 5 and det.loc["<1 mL", "detected"] == 2  # the target's bin, unchanged
    assert "0.01-0.1 mL: 0/1" in bench.report(tables)


def test_dice_by_location_counts_missed_subjects_per_location(bench):
    rows = _rows("fresh", "new", [0.0, 0.8, 0.0, 0.6, 0.4], [0, 1, 0, 1, 1])
    for r, loc in zip(rows, ["subcortical", "cortical", "subcortical", "subcortical", "both"]):
        r["location"] = loc
    df = pd.DataFrame(rows + _rows("fresh", "new", [0.0], [0], method="axial")).assign(volume_bin="<1 mL", error="")
    for metric in SUMMARY_METRICS:
        if metric not in df:
            df[metric] = np.nan
    tables = bench.tables_from(df, pd.DataFrame(), ["new"])
    loc = tables["dice_by_location"].set_index("location")
    assert loc.loc["subcortical", "n"] == 3 and loc.loc["subcortical", "missed"] == 2  # the axial row is ignored
    assert loc.loc["subcortical", "dice_mean"] == pytest.approx(0.2)
    assert loc.loc["subcortical", "share_missed"] == pytest.approx(2 / 3)
    assert loc.loc["cortical", "missed"] == 0 and loc.loc["both", "dice_median"] == pytest.approx(0.4)
    assert "subcortical: 0.200, median 0.000, missed 2/3" in bench.report(tables)
    # runs written before the column existed: no table, no line
    assert bench.tables_from(df.drop(columns="location"), pd.DataFrame(), ["new"])["dice_by_location"].empty
