"""bench/bench_quality.py's paired comparison: hand-made per-subject tables with known gains."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

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
