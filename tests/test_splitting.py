"""Stage 02: volume bins, sparse-stratum merging, the seeded stratified split, stats, CLI and errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from raxnet import splitting
from raxnet.cli_common import run_cli
from raxnet.errors import ConfigError, StageInputError
from raxnet.splitting import (
    assign_bins, bin_labels, check_edges, lesion_volume_mm3, make_strata, merge_sparse_bins, parse_spacing,
    split_subjects,
)

EDGES = [0, 5000, 30000, 60000, 100000, 200000]


def _subjects(counts_per_bin=(50, 30, 20), sites=None, seed=0) -> pd.DataFrame:
    """Subjects with volumes inside given bins of EDGES (bin i gets counts_per_bin[i] subjects)."""
    rng = np.random.default_rng(seed)
    rows = []
    lo_hi = [(1, 5000), (5001, 30000), (30001, 60000), (60001, 100000), (100001, 200000), (200001, 400000)]
    i = 0
    for b, n in enumerate(counts_per_bin):
        for _ in range(n):
            site = sites[i % len(sites)] if sites else f"R{i % 3:03d}"
            rows.append({"subject": f"sub-{i:04d}", "site": site,
                         "lesion_voxels": int(rng.integers(*lo_hi[b])), "spacing_mm": "1.0x1.0x1.0"})
            i += 1
    return pd.DataFrame(rows)


def _write_stage01(work, df):
    d = work / "01_dataset"
    d.mkdir(parents=True, exist_ok=True)
    df.to_csv(d / "subjects.csv", index=False)


# ---------------------------------------------------------------------------------------- bins
def test_assign_bins_right_closed_first_bin_holds_zero():
    v = [0, 1, 5000, 5001, 30000, 30001, 200000, 200001, 10**7]
    assert assign_bins(v, EDGES).tolist() == [0, 0, 0, 1, 1, 2, 4, 5, 5]


def test_assign_bins_rejects_values_below_first_edge():
    with pytest.raises(ValueError):
        assign_bins([-1], EDGES)


def test_bin_labels():
    assert bin_labels([0, 5000, 30000]) == ["(0, 5000]", "(5000, 30000]", "(30000, inf)"]
    assert bin_labels([0, 0.5]) == ["(0, 0.5]", "(0.5, inf)"]


@pytest.mark.parametrize("edges", [[], [0, 0], [5, 1], [0, float("inf")], ["a"]])
def test_bad_edges_are_config_errors(edges):
    with pytest.raises(ConfigError):
        splitting.check_edges(edges)


def test_merge_sparse_bins_pools_with_smaller_neighbour():
    # bin 1 (1 subject) ties between neighbours of 10 -> joins the lower; then bin 3 (2) joins bin 2.
    assert merge_sparse_bins([10, 1, 10, 2], 5) == [0, 0, 1, 1]
    # bin 1 joins its smaller neighbour (bin 2: 3) -> 4, still < 5 -> joins the smaller of 10 and 20.
    assert merge_sparse_bins([10, 1, 3, 20], 5) == [0, 0, 0, 1]
    assert merge_sparse_bins([6, 7], 5) == [0, 1]
    assert merge_sparse_bins([1, 1], 5) == [0, 0]  # never fails, one group left


def test_make_strata_with_sites_pools_sparse_sites():
    bins = np.array([0] * 12)
    sites = np.array(["A"] * 6 + ["B"] * 5 + ["C"])
    s = make_strata(bins, bin_labels(EDGES), sites, 5)
    # C alone is too small for its own stratum -> joins the smallest large site (B).
    assert s.tolist() == ["(0, 5000]|A"] * 6 + ["(0, 5000]|B"] * 6


# ---------------------------------------------------------------------------------------- volume
@pytest.mark.parametrize("cell,expected", [
    (1, (1.0, 1.0, 1.0)), ("2.0", (2.0, 2.0, 2.0)), ("1x1x1.5", (1.0, 1.0, 1.5)),
    ("(2.0, 2.0, 2.0)", (2.0, 2.0, 2.0)), ("[1.0, 1.0, 1.0]", (1.0, 1.0, 1.0)), (float("nan"), (1.0, 1.0, 1.0)),
])
def test_parse_spacing(cell, expected):
    assert parse_spacing(cell) == expected


def test_lesion_volume_mm3_prefers_mm3_then_spacing():
    df = pd.DataFrame({"subject": ["a", "b"], "lesion_voxels": [100, 10], "spacing_mm": ["2x2x2", "1"]})
    assert lesion_volume_mm3(df).tolist() == [800.0, 10.0]
    df["lesion_volume_mm3"] = [5.0, 6.0]
    assert lesion_volume_mm3(df).tolist() == [5.0, 6.0]


def test_two_mm_grid_bins_on_mm3():
    # 700 voxels at 2 mm = 5600 mm^3 -> second bin although 700 voxels would be in the first.
    df = pd.DataFrame({"subject": [f"s{i}" for i in range(10)], "site": "R", "lesion_voxels": [700] * 10,
                       "spacing_mm": ["2.0"] * 10})
    out = split_subjects(df, 0.2, EDGES, seed=1)
    assert set(out["volume_bin"]) == {"(5000, 30000]"}
    assert out["lesion_voxels"].tolist() == [700] * 10  # the table keeps voxel counts


# ---------------------------------------------------------------------------------------- split
def test_split_is_exactly_stratified():
    df = _subjects((50, 30, 20))
    out = split_subjects(df, 0.2, EDGES, seed=3)
    assert list(out.columns[:5]) == splitting.SPLIT_COLUMNS
    assert len(out) == 100 and out["subject"].is_unique
    hold = out[out["set"] == "holdout"]
    assert len(hold) == 20
    assert hold["volume_bin"].value_counts().to_dict() == {"(0, 5000]": 10, "(5000, 30000]": 6,
                                                           "(30000, 60000]": 4}
    assert set(out["set"]) == {"train", "holdout"}


def test_split_seeded_order_independent_and_seed_sensitive():
    df = _subjects((50, 30, 20))
    a = split_subjects(df, 0.2, EDGES, seed=7)
    b = split_subjects(df.sample(frac=1, random_state=1), 0.2, EDGES, seed=7)
    c = split_subjects(df, 0.2, EDGES, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not a["set"].equals(c["set"])


def test_sparse_bins_are_merged_not_failing():
    df = _subjects((20, 1, 0, 0, 0, 1))  # 1 subject in bins 1 and 5
    out = split_subjects(df, 0.2, EDGES, seed=0)
    assert (out["set"] == "holdout").sum() == 5
    assert out["stratum"].nunique() <= 2


def test_tiny_dataset_splits():
    df = _subjects((2, 1))
    out = split_subjects(df, 0.2, EDGES, seed=0)
    assert (out["set"] == "holdout").sum() == 1 and (out["set"] == "train").sum() == 2


def test_site_stratification_balances_sites():
    df = _subjects((40, 40), sites=["A", "A", "A", "B"])  # 60 A, 20 B
    out = split_subjects(df, 0.2, EDGES, seed=5, stratify_site=True)
    hold = out[out["set"] == "holdout"]
    assert hold["site"].value_counts().to_dict() == {"A": 12, "B": 4}
    assert hold["volume_bin"].value_counts().to_dict() == {"(0, 5000]": 8, "(5000, 30000]": 8}
    assert out["stratum"].nunique() == 4


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.1])
def test_bad_fraction(frac):
    with pytest.raises(ConfigError):
        split_subjects(_subjects(), frac, EDGES, seed=0)


def test_bad_inputs_name_the_source():
    df = _subjects()
    with pytest.raises(StageInputError, match="x.csv: missing column"):
        split_subjects(df.drop(columns="site"), 0.2, EDGES, 0, source="x.csv")
    dup = pd.concat([df, df.iloc[:1]])
    with pytest.raises(StageInputError, match="duplicate subject"):
        split_subjects(dup, 0.2, EDGES, 0)
    bad = df.copy()
    bad.loc[3, "lesion_voxels"] = np.nan
    with pytest.raises(StageInputError, match="invalid lesion_voxels"):
        split_subjects(bad, 0.2, EDGES, 0)


def test_split_stats_counts_and_tests():
    df = _subjects((50, 30, 20))
    out = split_subjects(df, 0.2, EDGES, seed=3)
    st = splitting.split_stats(out, bin_labels(EDGES))
    bins = st[st["row"] == "bin"].set_index("name")
    assert bins.loc["(5000, 30000]", "train_count"] == 24 and bins.loc["(5000, 30000]", "holdout_count"] == 6
    assert bins.loc["all", "train_count"] == 80 and bins.loc["(0, 5000]", "holdout_fraction"] == 0.5
    assert bins.loc["(60000, 100000]", "train_count"] == 0
    strata = st[st["row"] == "stratum"].set_index("name")
    assert strata["holdout_count"].to_dict() == {"(0, 5000]": 10, "(30000, 60000]": 4, "(5000, 30000]": 6}
    tests = st[st["row"] == "test"].set_index("name")
    from scipy import stats

    tr = out.loc[out["set"] == "train", "lesion_voxels"]
    ho = out.loc[out["set"] == "holdout", "lesion_voxels"]
    assert tests.loc["kolmogorov_smirnov", "p_value"] == pytest.approx(stats.ks_2samp(tr, ho).pvalue)
    assert tests.loc["mann_whitney_u", "statistic"] == pytest.approx(stats.mannwhitneyu(tr, ho).statistic)


# ---------------------------------------------------------------------------------------- stage
def test_run_writes_identical_outputs_for_a_seed(tmp_path):
    df = _subjects((30, 15, 10, 5))
    w1, w2 = tmp_path / "a", tmp_path / "b"
    for w in (w1, w2):
        _write_stage01(w, df.sample(frac=1, random_state=len(str(w))))  # row order must not matter
    s1 = splitting.run({}, {"work_dir": str(w1), "seed": 11})
    out = "02_data_splitting"
    first = {n: (w1 / out / n).read_bytes() for n in ("split.csv", "split_stats.csv")}
    splitting.run({}, {"work_dir": str(w1), "seed": 11})  # re-running in place is safe
    splitting.run({}, {"work_dir": str(w2), "seed": 11})
    for name, data in first.items():
        assert (w1 / out / name).read_bytes() == data
        assert (w2 / out / name).read_bytes() == data
    assert (w1 / out / "split_distribution.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    split = pd.read_csv(s1["split_csv"])
    assert list(split.columns) == splitting.SPLIT_COLUMNS
    assert s1["n_holdout"] == 12 and s1["n_train"] == 48
    assert not list((w1 / out).glob(".*"))  # no temp files left behind


def test_cli_flags_and_errors(tmp_path, capsys):
    _write_stage01(tmp_path, _subjects((30, 20)))
    with pytest.raises(SystemExit) as e:
        run_cli(splitting.main, ["--work-dir", str(tmp_path), "--seed", "1", "--holdout-fraction", "0.3",
                                 "--stratify-site"])
    assert e.value.code == 0
    split = pd.read_csv(tmp_path / "02_data_splitting" / "split.csv")
    assert (split["set"] == "holdout").sum() == 15

    empty = tmp_path / "empty"
    with pytest.raises(SystemExit) as e:
        run_cli(splitting.main, ["--work-dir", str(empty)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "subjects.csv" in err

    (tmp_path / "01_dataset" / "subjects.csv").write_text("subject,site\nsub-1,R1\n")
    with pytest.raises(SystemExit) as e:
        run_cli(splitting.main, ["--work-dir", str(tmp_path)])
    assert e.value.code == 2
    assert "missing column(s) lesion_voxels" in capsys.readouterr().err


def test_split_figure_shows_volumes_in_mm3(tmp_path, monkeypatch):
    """On a 2 mm grid the violins show the same unit as the bins: mm³ (= 8 x voxels), not voxels."""
    df = _subjects((6, 4)).assign(spacing_mm="2x2x2")
    split = split_subjects(df, 0.3, EDGES, seed=0)
    assert np.allclose(split["lesion_volume_mm3"], 8 * split["lesion_voxels"])
    figures = []
    monkeypatch.setattr(splitting, "save_figure", lambda fig, path: figures.append(fig) or path)
    st = splitting.split_stats(split, bin_labels(EDGES))
    splitting.plot_split(split, st, bin_labels(EDGES), tmp_path / "f.png")
    ax_bins, ax_volume = figures[0].axes[:2]
    assert "mm³" in ax_bins.get_xlabel() and ax_volume.get_ylabel() == "log10 lesion volume (mm³)"
    shown = np.concatenate([c.get_offsets()[:, 1] for c in ax_volume.collections if hasattr(c, "get_offsets")
                            and len(c.get_offsets()) == len(split[split["set"] == "train"])])
    assert np.isclose(shown.max(), np.log10(split.loc[split["set"] == "train", "lesion_volume_mm3"].max()))


def test_split_stats_hand_computed_fractions_and_tests():
    """Three train subjects (100, 10 000, 40 000 voxels) and one hold-out (200): per-bin counts, fractions of
    each set, hold-out shares (NaN for an empty bin), and the two tests on the volumes."""
    from scipy import stats

    labels = bin_labels([0, 5000, 30000, 60000])
    df = pd.DataFrame({"subject": ["a", "b", "c", "d"], "site": "R", "lesion_voxels": [100, 10000, 40000, 200],
                       "volume_bin": [labels[0], labels[1], labels[2], labels[0]],
                       "set": ["train", "train", "train", "holdout"]})
    st = splitting.split_stats(df, labels)
    bins = st[st["row"] == "bin"].set_index("name")
    assert bins.loc[labels[0], ["train_count", "holdout_count"]].tolist() == [1, 1]
    assert bins.loc[labels[0], ["train_fraction", "holdout_fraction", "holdout_share"]].tolist() == pytest.approx(
        [1 / 3, 1.0, 0.5])
    assert bins.loc[labels[1], ["train_fraction", "holdout_fraction", "holdout_share"]].tolist() == pytest.approx(
        [1 / 3, 0.0, 0.0])
    assert np.isnan(bins.loc[labels[3], "holdout_share"]) and bins.loc[labels[3], "train_count"] == 0
    assert bins.loc["all", ["train_fraction", "holdout_fraction", "holdout_share"]].tolist() == pytest.approx(
        [1.0, 1.0, 0.25])
    assert "stratum" not in set(st["row"])
    tests = st[st["row"] == "test"].set_index("name")
    ks = stats.ks_2samp([100, 10000, 40000], [200])
    mw = stats.mannwhitneyu([100, 10000, 40000], [200], alternative="two-sided")
    assert tests.loc["kolmogorov_smirnov", ["statistic", "p_value"]].tolist() == pytest.approx([ks.statistic, ks.pvalue])
    assert tests.loc["mann_whitney_u", ["statistic", "p_value"]].tolist() == pytest.approx([mw.statistic, mw.pvalue])
    # with lesion_volume_mm3 the tests use it (here it moves the hold-out subject to the top)
    df["lesion_volume_mm3"] = [800.0, 80000.0, 320000.0, 999999.0]
    tests = splitting.split_stats(df, labels).set_index("name")
    mw = stats.mannwhitneyu([800.0, 80000.0, 320000.0], [999999.0], alternative="two-sided")
    assert tests.loc["mann_whitney_u", ["statistic", "p_value"]].tolist() == pytest.approx([mw.statistic, mw.pvalue])
    # the strata actually used, sorted by name, with their counts and shares
    strat = df.assign(stratum=["z", "m", "z", "z"], set=["train", "train", "holdout", "holdout"])
    rows = splitting.split_stats(strat, labels)
    rows = rows[rows["row"] == "stratum"]
    assert rows["name"].tolist() == ["m", "z"]
    assert rows[["train_count", "holdout_count"]].to_numpy().tolist() == [[1, 0], [1, 2]]
    np.testing.assert_allclose(rows[["train_fraction", "holdout_fraction", "holdout_share"]].to_numpy(float),
                               [[0.5, 0.0, 0.0], [0.5, 1.0, 2 / 3]])
    # one train subject, two hold-out ones: fractions of 1 and 2
    one = df.drop(columns="lesion_volume_mm3").assign(set=["train", "holdout", "holdout", "excluded"])
    bins = splitting.split_stats(one, labels).set_index("name")
    assert bins.loc[labels[0], ["train_fraction", "holdout_fraction"]].tolist() == pytest.approx([1.0, 0.0])
    assert bins.loc[labels[1], ["train_fraction", "holdout_fraction"]].tolist() == pytest.approx([0.0, 0.5])


def test_split_subjects_defaults_and_input_cleaning():
    """Defaults: 20 % hold-out, seed 42, strata of >= 5; ids become strings, a missing site is 'unknown', lesion
    voxels become integers and 0 is a valid lesion size."""
    df = _subjects((50, 30, 20))
    out = split_subjects(df)
    assert (out["set"] == "holdout").sum() == 20
    pd.testing.assert_frame_equal(out, split_subjects(df, 0.2, seed=42))
    assert not out.equals(split_subjects(df, 0.2, seed=43))
    # a bin of exactly 5 subjects is a stratum of its own (>= min_stratum_size 5), one of 4 is merged
    five = split_subjects(_subjects((40, 5, 5)))
    assert five["stratum"].nunique() == 3
    four = split_subjects(_subjects((42, 4, 4)))
    assert four["stratum"].nunique() == 2
    raw = pd.DataFrame({"subject": [3, 1, 2, 4], "site": ["A", None, "A", "B"], "lesion_voxels": [0, 10.0, "20", 30]})
    out = split_subjects(raw, 0.5, seed=0)
    assert out["subject"].tolist() == ["1", "2", "3", "4"]
    assert out["site"].tolist() == ["unknown", "A", "A", "B"]
    assert out["lesion_voxels"].dtype == np.int64 and out["lesion_voxels"].tolist() == [10, 20, 0, 30]


def test_split_subjects_refusals_name_the_file_and_subjects():
    base = pd.DataFrame({"subject": [f"s{i}" for i in range(8)], "site": "A", "lesion_voxels": range(8)})
    with pytest.raises(StageInputError, match=r"^subjects.csv: missing column\(s\) site, lesion_voxels$"):
        split_subjects(base[["subject"]])
    dup = pd.concat([base, base.iloc[:6]])
    with pytest.raises(StageInputError, match=r"^subjects.csv: duplicate subject\(s\) s0, s1, s2, s3, s4$"):
        split_subjects(dup)
    with pytest.raises(StageInputError, match=r"^x.csv: need at least 2 subjects to split, got 1$"):
        split_subjects(base.iloc[:1], source="x.csv")
    assert len(split_subjects(base.iloc[:2], 0.5)) == 2  # two are enough
    bad = base.assign(lesion_voxels=["a", -1, "b", -2, "c", -3, 7, 8])
    with pytest.raises(StageInputError, match=r"^subjects.csv: invalid lesion_voxels for subject\(s\) "
                                              r"s0, s1, s2, s3, s4$"):
        split_subjects(bad)


def test_assign_bins_and_edges_messages():
    with pytest.raises(ValueError, match=r"^values outside \[0.0, inf\): \[-1. nan -2. -3. -4.\]$"):
        assign_bins([5, -1, np.nan, -2, -3, -4, -5, 7], [0, 10])
    with pytest.raises(ValueError, match=r"^values outside \[0.0, inf\): \[-1.\]$"):  # integers read as floats
        assign_bins(np.array([5, -1]), [0, 10])
    with pytest.raises(ConfigError, match="strictly increasing"):
        check_edges([0, 10, 5])
    st = splitting.split_stats(split_subjects(_subjects((10, 10)), 0.2, EDGES, seed=1), bin_labels(EDGES))
    assert list(st.columns) == ["row", "name", "statistic", "p_value", "train_count", "holdout_count",
                                "train_fraction", "holdout_fraction", "holdout_share"]
    assert str(st["train_count"].dtype) == "Int64" and str(st["holdout_count"].dtype) == "Int64"


def test_lesion_volume_and_spacing_parsing_by_hand():
    assert parse_spacing("1e0x2E0x3") == (1.0, 2.0, 3.0) and parse_spacing("(0.5, 1, 2)") == (0.5, 1.0, 2.0)
    for bad in ("0x1x1", "1x2", "abc"):
        with pytest.raises(ValueError, match=rf"^cannot parse voxel spacing '{bad}'$"):
            parse_spacing(bad)
    df = pd.DataFrame({"subject": ["a", "b", "c"], "lesion_voxels": [10, 0, 3], "spacing_mm": ["1x1x2", "2", "1"]})
    vol = lesion_volume_mm3(df)
    assert vol.dtype == np.float64 and vol.tolist() == [20.0, 0.0, 3.0]
    with pytest.raises(StageInputError, match=r"^s.csv: cannot parse voxel spacing 'x'$"):
        lesion_volume_mm3(df.assign(spacing_mm=["1", "x", "1"]), "s.csv")
    many = pd.DataFrame({"subject": [f"s{i}" for i in range(7)], "lesion_voxels": [1, -1, 2, -3, -4, -5, -6],
                         "lesion_volume_mm3": [1.0, -1.0, "n/a", -3.0, -4.0, -5.0, -6.0]})
    with pytest.raises(StageInputError, match=r"^subjects.csv: missing or negative lesion volume for 6 subject\(s\): "
                                              r"s1, s2, s3, s4, s5$"):
        lesion_volume_mm3(many)
    with pytest.raises(StageInputError, match=r"for 1 subject\(s\): b$"):
        lesion_volume_mm3(pd.DataFrame({"subject": ["a", "b"], "lesion_voxels": [1, "?"]}))


def test_split_subjects_edge_refusals_and_tiny_fallback():
    df = _subjects((10, 10))
    with pytest.raises(ConfigError, match=r"^volume_bin_edges start at 100.0 but some lesion volumes are smaller$"):
        split_subjects(df.assign(lesion_voxels=50), 0.2, [100, 5000])
    with pytest.raises(ConfigError, match=r"^volume_bin_edges must be finite and strictly increasing"):
        split_subjects(df, 0.2, [0, 10, 5])
    # 6 subjects in 3 bins of 2 with site stratification: too many strata for 2 hold-out subjects, so the split
    # falls back to merged volume bins, then to one stratum: still 2 hold-out subjects, seeded
    tiny = _subjects((2, 2, 2), sites=["A", "B"])
    out = split_subjects(tiny, 0.3, EDGES, seed=1, stratify_site=True, min_stratum_size=2)
    assert (out["set"] == "holdout").sum() == 2
    assert set(out["stratum"]) == {"(0, 5000]+(5000, 30000]+(30000, 60000]"}  # strata of >= ceil(1 / 0.3) = 4
    # 12 subjects: 6 bin x site strata are too many for 4 hold-out subjects; the 3 volume bins (4 each) are not
    out = split_subjects(_subjects((4, 4, 4), sites=["A", "B"]), 0.3, EDGES, seed=1, stratify_site=True,
                         min_stratum_size=2)
    assert set(out["stratum"]) == {"(0, 5000]", "(5000, 30000]", "(30000, 60000]"}
    assert (out["set"] == "holdout").sum() == 4
    assert (out[out["set"] == "holdout"].groupby("stratum").size() >= 1).sum() == 3
