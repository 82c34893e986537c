"""Stage 04: leakage-free subject-level folds, stratification, normal-slice sampling, stats, determinism."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from raxnet import folds
from raxnet.cli_common import run_cli
from raxnet.errors import ConfigError, StageInputError
from raxnet.folds import _Balance, _largest_remainder, assign_folds, make_folds
from raxnet.planes import PLANES
from raxnet.splitting import split_subjects

EDGES = [0, 5000, 30000, 60000, 100000, 200000]
N_SLICES = {"axial": 24, "sagittal": 20, "coronal": 28}
FAST = {"search_swaps": 400, "search_restarts": 2}


def _dataset(n_subjects: int = 45, seed: int = 0):
    """Synthetic stage-01 tables: every slice of every subject, a contiguous lesion slab per plane whose
    extent and areas grow with the lesion volume, a bell-shaped brain profile with empty end slices."""
    rng = np.random.default_rng(seed)
    subjects, slices = [], {p: [] for p in PLANES}
    for i in range(n_subjects):
        name = f"sub-{i:03d}"
        volume = 0 if i == 0 else int(10 ** rng.uniform(2, 5.5))  # sub-000 has no lesion at all
        subjects.append({"subject": name, "site": f"R{i % 4}", "lesion_voxels": volume, "spacing_mm": "1.0"})
        for plane, n in N_SLICES.items():
            length = 0 if volume == 0 else int(np.clip(np.log10(volume) * 2 - 3, 1, 10))
            start = int(rng.integers(2, n - 2 - length)) if length else -1
            top = 6000 if plane == "sagittal" else 4000
            for s in range(n):
                brain = int(1000 * np.sin(np.pi * s / (n - 1)))  # 0 at both ends
                lesion = int(rng.integers(1, top)) if length and start <= s < start + length else 0
                slices[plane].append({"subject": name, "slice": s, "lesion_pixels": lesion, "n_lesions": int(lesion > 0),
                                      "brain_pixels": brain})
    subjects = pd.DataFrame(subjects)
    slices = {p: pd.DataFrame(v) for p, v in slices.items()}
    split = split_subjects(subjects, 0.2, EDGES, seed=1)[["subject", "site", "lesion_voxels", "volume_bin", "set"]]
    return subjects, slices, split


@pytest.fixture(scope="module")
def data():
    return _dataset()


# Function scope on purpose: mutmut (bench/mutation) runs against a mutant only the tests that called the
# mutated function while its statistics were collected, and a module-scoped result would count only for the
# first test that used it.
@pytest.fixture
def result(data):
    _, slices, split = data
    return make_folds(split, slices, 5, seed=0, **FAST)


def _train(split):
    return set(split.loc[split["set"] == "train", "subject"])


# --------------------------------------------------------------------------------- hand-computed
def test_largest_remainder():
    assert _largest_remainder(np.array([3, 1, 1]), 4).tolist() == [2, 1, 1]  # 2.4, .8, .8
    assert _largest_remainder(np.array([1, 1, 1]), 2).tolist() == [1, 1, 0]  # ties: earlier first
    assert _largest_remainder(np.array([5, 0]), 5).tolist() == [5, 0]
    assert _largest_remainder(np.array([0, 0]), 3).tolist() == [0, 0]


def test_balance_score_is_zero_only_for_a_perfect_assignment():
    # One plane, two bins: A, B have 2 slices in bin 0; C, D have 2 in bin 1.
    f = np.array([[[2, 0]], [[2, 0]], [[0, 2]], [[0, 2]]], dtype=float)
    bal = _Balance(f, np.zeros((4, 1, 0)), 2)
    assert bal.score(bal.counts(np.array([0, 1, 0, 1]))) == 0.0
    # Folds {A, B} / {C, D}: bin fractions 1/0 vs whole 0.5 -> 4 deviations of 0.5; each fold still holds
    # half the slices -> 2 share deviations of 0. Score = 0.5 + 0.1 * sqrt(4 * 0.25 / 6).
    assert bal.score(bal.counts(np.array([0, 0, 1, 1]))) == pytest.approx(0.5 + 0.1 * np.sqrt(1 / 6))
    # Unequal sizes: fold 0 = {A}, fold 1 = {B, C, D}: hist |1-.5|,|0-.5|,|1/3-.5|,|2/3-.5|; shares |.25-.5|,|.75-.5|
    d = np.array([0.5, 0.5, 1 / 6, 1 / 6, 0.25, 0.25])
    assert bal.score(bal.counts(np.array([0, 1, 1, 1]))) == pytest.approx(0.5 + 0.1 * np.sqrt(np.mean(d**2)))


def test_swap_search_finds_the_perfect_assignment():
    f = np.array([[[2, 0]], [[2, 0]], [[0, 2]], [[0, 2]]] * 3, dtype=float)  # 12 subjects
    groups = np.zeros(12, dtype=int)
    dealt, s0 = assign_folds(groups, f, 2, seed=4, restarts=1, swaps=0)
    found, s1 = assign_folds(groups, f, 2, seed=4, restarts=1, swaps=300)
    assert s1 == 0.0 and s1 <= s0
    assert np.bincount(found).tolist() == [6, 6]  # swaps keep fold sizes
    bal = _Balance(f, np.zeros((12, 1, 0)), 2)
    assert bal.score(bal.counts(found)) == 0.0 and bal.score(bal.counts(dealt)) == pytest.approx(s0)  # true scores


def test_search_improves_on_the_volume_deal(data):
    _, slices, split = data
    train = split[split["set"] == "train"].sort_values("subject")
    rng = np.random.default_rng(0)
    feats = rng.integers(0, 5, size=(len(train), 3, 6)).astype(float)
    groups = pd.factorize(train["volume_bin"])[0]
    _, before = assign_folds(groups, feats, 5, seed=2, restarts=1, swaps=0)
    after_folds, after = assign_folds(groups, feats, 5, seed=2, restarts=1, swaps=1500)
    assert after < before
    bal = _Balance(feats, np.zeros(feats.shape[:2] + (0,)), 5)
    assert bal.score(bal.counts(after_folds)) == pytest.approx(after)  # the kept swaps' score is the true one
    # Same-bin swaps keep the volume stratification of the deal: per bin, fold counts differ by <= 1.
    for g in np.unique(groups):
        c = np.bincount(after_folds[groups == g], minlength=5)
        assert c.max() - c.min() <= 1


def test_area_bins_in_mm2_on_a_2mm_grid():
    split = pd.DataFrame({"subject": ["a", "b", "c", "d"], "set": "train", "volume_bin": "(0, 5000]",
                          "lesion_voxels": 60})
    tables = {}
    for plane in PLANES:
        tables[plane] = pd.DataFrame({"subject": list("abcd") * 2, "slice": [0] * 4 + [1] * 4,
                                      "lesion_pixels": [60] * 4 + [0] * 4, "brain_pixels": 100})
    _, pf1, _ = make_folds(split, tables, 2, seed=0, **FAST)
    _, pf2, _ = make_folds(split, tables, 2, seed=0, spacing={s: "2.0x2.0x2.0" for s in "abcd"}, **FAST)
    les1 = pf1["axial"][pf1["axial"]["kind"] == "lesion"]
    les2 = pf2["axial"][pf2["axial"]["kind"] == "lesion"]
    assert set(les1["area_bin"]) == {"(0, 200]"}  # 60 mm^2
    assert set(les2["area_bin"]) == {"(200, 500]"}  # 60 px x 4 mm^2 = 240 mm^2
    assert (les2["lesion_pixels"] == 60).all()  # the table keeps pixel counts


# ------------------------------------------------------------------------------------ invariants
def test_each_train_subject_in_exactly_one_fold(data, result):
    _, _, split = data
    sf, _, _ = result
    assert list(sf.columns) == ["subject", "fold"]
    assert sf["subject"].is_unique
    assert set(sf["subject"]) == _train(split)
    assert sorted(sf["fold"].unique()) == [1, 2, 3, 4, 5]
    sizes = sf["fold"].value_counts()
    assert sizes.max() - sizes.min() <= 1


def test_planes_share_the_subject_map_without_leakage(data, result):
    _, _, split = data
    sf, pf, _ = result
    fold_of = dict(zip(sf["subject"], sf["fold"]))
    hold = set(split.loc[split["set"] == "holdout", "subject"])
    assert hold
    for plane in PLANES:
        df = pf[plane]
        assert list(df.columns) == folds.FOLD_COLUMNS
        assert not df.duplicated(["subject", "slice"]).any()
        assert not (set(df["subject"]) & hold)
        assert (df["subject"].map(fold_of) == df["fold"]).all()
        # a subject's slices never sit in two folds
        assert (df.groupby("subject")["fold"].nunique() == 1).all()


def test_every_train_lesion_slice_exactly_once(data, result):
    _, slices, split = data
    _, pf, _ = result
    train = _train(split)
    for plane in PLANES:
        src = slices[plane]
        want = src[src["subject"].isin(train) & (src["lesion_pixels"] > 0)]
        got = pf[plane][pf[plane]["kind"] == "lesion"]
        assert len(got) == len(want) > 0
        merged = want.merge(got, on=["subject", "slice"], suffixes=("_src", ""))
        assert len(merged) == len(want)
        assert (merged["lesion_pixels"] == merged["lesion_pixels_src"]).all()
        assert got["area_bin"].str.startswith("(").all()


def test_normal_slices_are_lesion_free_with_enough_brain_one_per_lesion_slice(data, result):
    _, slices, _ = data
    sf, pf, _ = result
    for plane in PLANES:
        src = slices[plane].copy()
        src["max_brain"] = src.groupby("subject")["brain_pixels"].transform("max")
        df = pf[plane]
        nrm = df[df["kind"] == "normal"].merge(src, on=["subject", "slice"], suffixes=("", "_src"))
        assert len(nrm) == (df["kind"] == "normal").sum() > 0
        assert (nrm["lesion_pixels_src"] == 0).all() and (nrm["lesion_pixels"] == 0).all()
        assert (nrm["brain_pixels"] >= 0.25 * nrm["max_brain"]).all() and (nrm["brain_pixels"] > 0).all()
        assert (nrm["area_bin"] == "normal").all()
        counts = df.groupby(["fold", "kind"]).size().unstack()
        assert (counts["normal"] == counts["lesion"]).all()  # default ratio 1:1 per fold
        # spread over the fold's subjects: more than one subject contributes in each fold
        assert (df[df["kind"] == "normal"].groupby("fold")["subject"].nunique() > 1).all()


def test_normal_ratio_and_near_lesion_source(data):
    _, slices, split = data
    _, pf, _ = make_folds(split, slices, 3, seed=5, normal_ratio=0.5, normal_source="near_lesion",
                          near_lesion_margin=2, **FAST)
    for plane in PLANES:
        df = pf[plane]
        les = df[df["kind"] == "lesion"]
        counts = df.groupby(["fold", "kind"]).size().unstack()
        assert (counts["normal"] == (0.5 * counts["lesion"]).round().astype(int)).all()
        slab = les.groupby("subject")["slice"].agg(["min", "max"])
        nrm = df[df["kind"] == "normal"].join(slab, on="subject")
        assert nrm["min"].notna().all()  # only subjects with a lesion slab
        assert ((nrm["slice"] >= nrm["min"] - 2) & (nrm["slice"] <= nrm["max"] + 2)).all()


def test_different_seeds_differ_same_seed_identical(data, result):
    _, slices, split = data
    sf0, pf0, st0 = result
    sf0b, pf0b, st0b = make_folds(split, slices, 5, seed=0, **FAST)
    sf1, pf1, _ = make_folds(split, slices, 5, seed=1, **FAST)
    pd.testing.assert_frame_equal(sf0, sf0b)
    pd.testing.assert_frame_equal(st0, st0b)
    for p in PLANES:
        pd.testing.assert_frame_equal(pf0[p], pf0b[p])
    assert not sf0["fold"].equals(sf1["fold"])


# ------------------------------------------------------------------------------------------ stats
def test_stats_test_each_fold_against_the_other_folds(result):
    sf, pf, st = result
    assert list(st.columns) == folds.STATS_COLUMNS
    for plane in PLANES:
        les = pf[plane][pf[plane]["kind"] == "lesion"]
        rows = st[(st["plane"] == plane)]
        for f in (1, 3):
            inside, others = les[les["fold"] == f], les[les["fold"] != f]
            row = rows[(rows["fold"] == str(f)) & (rows["bin"] == "all")].iloc[0]
            ks = stats.ks_2samp(inside["lesion_pixels"], others["lesion_pixels"])
            mw = stats.mannwhitneyu(inside["lesion_pixels"], others["lesion_pixels"])
            assert row["ks_p"] == pytest.approx(ks.pvalue) and row["ks_stat"] == pytest.approx(ks.statistic)
            assert row["mwu_p"] == pytest.approx(mw.pvalue)
            assert row["lesion_slices"] == len(inside) and row["normal_slices"] == len(inside)
            frac = inside["area_bin"].value_counts(normalize=True)
            whole = les["area_bin"].value_counts(normalize=True)
            dev = (frac.reindex(whole.index, fill_value=0) - whole).abs().max()
            assert row["max_bin_deviation"] == pytest.approx(dev)
            b = rows[(rows["fold"] == str(f)) & (rows["bin"] == whole.index[0])].iloc[0]
            assert b["count"] == (inside["area_bin"] == whole.index[0]).sum()
            assert b["whole_fraction"] == pytest.approx(whole.iloc[0])
    vol = st[(st["plane"] == "volume") & (st["bin"] == "all") & (st["fold"] != "all")]
    assert vol["subjects"].sum() == len(sf)
    summary = folds.balance_summary(st)
    assert list(summary["plane"]) == ["volume", *PLANES]
    assert (summary["max_bin_deviation"] >= 0).all() and (summary["min_ks_p"] <= 1).all()


# ------------------------------------------------------------------------------------------ errors
def test_bad_inputs(data):
    _, slices, split = data
    with pytest.raises(ConfigError):
        make_folds(split, slices, 1, seed=0)
    with pytest.raises(ConfigError):
        make_folds(split, slices, 10_000, seed=0)
    with pytest.raises(ConfigError):
        make_folds(split, slices, 3, seed=0, normal_source="nowhere")
    with pytest.raises(StageInputError, match="s.csv: missing column"):
        make_folds(split.drop(columns="volume_bin"), slices, 3, seed=0, sources={"split": "s.csv"})
    train = sorted(_train(split))
    short = dict(slices)
    short["coronal"] = slices["coronal"][slices["coronal"]["subject"] != train[0]]
    with pytest.raises(StageInputError, match=f"cor.csv: no slices for 1 train subject.*{train[0]}"):
        make_folds(split, short, 3, seed=0, sources={"coronal": "cor.csv"})
    dup = dict(slices)
    dup["axial"] = pd.concat([slices["axial"], slices["axial"].iloc[:1]])
    with pytest.raises(StageInputError, match="duplicate row"):
        make_folds(split, dup, 3, seed=0)


# ------------------------------------------------------------------------------------------ stage
def _write(work, data):
    subjects, slices, split = data
    (work / "01_dataset").mkdir(parents=True)
    (work / "02_data_splitting").mkdir()
    subjects.to_csv(work / "01_dataset" / "subjects.csv", index=False)
    for p, df in slices.items():
        df.to_csv(work / "01_dataset" / f"slices_{p}.csv", index=False)
    split.to_csv(work / "02_data_splitting" / "split.csv", index=False)


@pytest.mark.slow  # renders the two figures twice; run()'s tables are checked without figures below
def test_run_and_cli_are_byte_identical_for_a_seed(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    small = _dataset(16)
    _write(a, small)
    _write(b, small)
    s = folds.run({"folds": dict(FAST)}, {"work_dir": str(a), "seed": 3})
    names = ["subject_folds.csv", "fold_stats.csv"] + [f"{p}_folds.csv" for p in PLANES]
    first = {n: (a / "04_cross_validation" / n).read_bytes() for n in names}
    for fig in ("fold_balance.png", "fold_volume_balance.png"):
        assert (a / "04_cross_validation" / fig).read_bytes()[:4] == b"\x89PNG"
    assert s["k"] == 5 and s["n_slices"]["axial"]["lesion"] == s["n_slices"]["axial"]["normal"]

    (tmp_path / "c.toml").write_text("[folds]\nsearch_swaps = 400\nsearch_restarts = 2\n")
    with pytest.raises(SystemExit) as e:
        run_cli(folds.main, ["--config", str(tmp_path / "c.toml"), "--work-dir", str(b), "--seed", "3"])
    assert e.value.code == 0
    for n in names:
        assert (b / "04_cross_validation" / n).read_bytes() == first[n], n
    assert "max per-bin deviation" in capsys.readouterr().out
    assert not list((b / "04_cross_validation").glob(".*"))  # no temp files left behind


def test_cli_flags_reach_the_config(monkeypatch, tmp_path):
    seen = {}

    def fake_run(cfg, run_cfg):
        seen.update(cfg=cfg, run=run_cfg)
        return {"n_subjects": 0, "k": cfg["folds"]["n_folds"], "subject_folds_csv": "-", "balance": []}

    monkeypatch.setattr(folds, "run", fake_run)
    assert folds.main(["--work-dir", str(tmp_path), "--seed", "4", "--folds", "3", "--normal-ratio", "0.5"]) == 0
    assert seen["cfg"]["folds"]["n_folds"] == 3 and seen["cfg"]["folds"]["normal_ratio"] == 0.5
    # Only what the user gave: the rest comes from the run's configuration when the stage begins.
    assert seen["run"]["seed"] == 4 and "search_swaps" not in seen["cfg"]["folds"]


def test_cli_missing_input_is_one_error_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(folds.main, ["--work-dir", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "split.csv" in err and len(err.splitlines()) == 1


def test_folds_are_stratified_by_volume_bin(data, result):
    """Every volume bin of stage 02 is spread over the folds as evenly as its size allows (counts differ by at
    most 1), so each fold's volume mix matches the train set's: per fold, each bin's share is within one
    subject of the bin's share of the train set."""
    _, _, split = data
    subject_folds, _, _ = result
    train = split[split["set"] == "train"].merge(subject_folds, on="subject")
    table = pd.crosstab(train["volume_bin"], train["fold"]).reindex(columns=range(1, 6), fill_value=0)
    assert table.to_numpy().sum() == len(train) and len(table) >= 3  # several bins are in play
    for b, row in table.iterrows():
        assert row.max() - row.min() <= 1, (b, row.tolist())
    sizes = table.sum(axis=0)
    assert sizes.max() - sizes.min() <= 1  # the round-robin deal continues across bins


def test_make_folds_uses_the_volume_bins_it_is_given():
    """Twelve subjects in two volume bins of six (all without lesion slices, so only the deal decides):
    with 3 folds each fold gets exactly two of each bin, whichever bin labels are used."""
    subjects = [f"s{i:02d}" for i in range(12)]
    vb = ["(0, 10]" if i % 2 else "(10, 100]" for i in range(12)]
    split = pd.DataFrame({"subject": subjects, "site": "R", "lesion_voxels": [5 if i % 2 else 50 for i in range(12)],
                          "volume_bin": vb, "set": "train"})
    slices = {p: pd.DataFrame({"subject": np.repeat(subjects, 4), "slice": np.tile(np.arange(4), 12),
                               "lesion_pixels": 0, "n_lesions": 0, "brain_pixels": 1000}) for p in PLANES}
    for seed in range(3):
        sf, _, _ = make_folds(split, slices, 3, seed=seed, normal_ratio=0.0, **FAST)
        merged = sf.merge(split, on="subject")
        table = pd.crosstab(merged["volume_bin"], merged["fold"])
        assert (table.to_numpy() == 2).all(), (seed, table)


def test_fold_stats_every_row_recomputed(data, result):
    """Every row of the balance table recomputed with pandas/scipy: per plane (and subject volume), fold and
    bin the count, fraction, whole fraction and deviation; per fold the totals, shares and the two tests."""
    _, _, split = data
    sf, pf, st = result
    train = split[split["set"] == "train"]
    fold_of = sf.set_index("subject")["fold"]
    tables = {"volume": pd.DataFrame({"fold": train["subject"].map(fold_of), "bin": train["volume_bin"].astype(str),
                                      "value": train["lesion_voxels"].astype(float)})}
    for plane in PLANES:
        les = pf[plane][pf[plane]["kind"] == "lesion"]
        tables[plane] = pd.DataFrame({"fold": les["fold"], "bin": les["area_bin"], "value": les["lesion_pixels"]})
    for plane, t in tables.items():
        rows = st[st["plane"] == plane]
        whole = t["bin"].value_counts(normalize=True)
        total = rows[(rows["fold"] == "all") & (rows["bin"] == "all")].iloc[0]
        assert total["count"] == len(t)
        for f in range(1, 6):
            inside, others = t[t["fold"] == f], t[t["fold"] != f]
            frac = inside["bin"].value_counts(normalize=True)
            labels = rows.loc[(rows["fold"] == str(f)) & (rows["bin"] != "all"), "bin"]
            for lab in labels:
                r = rows[(rows["fold"] == str(f)) & (rows["bin"] == lab)].iloc[0]
                a = rows[(rows["fold"] == "all") & (rows["bin"] == lab)].iloc[0]
                assert r["count"] == (inside["bin"] == lab).sum() and a["count"] == (t["bin"] == lab).sum()
                assert r["fraction"] == pytest.approx(frac.get(lab, 0.0))
                assert r["whole_fraction"] == pytest.approx(whole.get(lab, 0.0)) == a["fraction"]
                assert r["deviation"] == pytest.approx(abs(frac.get(lab, 0.0) - whole.get(lab, 0.0)))
                assert a["deviation"] == 0.0
            r = rows[(rows["fold"] == str(f)) & (rows["bin"] == "all")].iloc[0]
            assert r["count"] == len(inside) and r["subjects"] == (fold_of == f).sum()
            assert r["max_bin_deviation"] == pytest.approx(
                rows[(rows["fold"] == str(f)) & (rows["bin"] != "all")]["deviation"].max())
            ks = stats.ks_2samp(inside["value"], others["value"])
            mw = stats.mannwhitneyu(inside["value"], others["value"], alternative="two-sided")
            assert (r["ks_stat"], r["ks_p"], r["mwu_stat"], r["mwu_p"]) == pytest.approx(
                (ks.statistic, ks.pvalue, mw.statistic, mw.pvalue))
            if plane != "volume":
                normal = pf[plane][(pf[plane]["kind"] == "normal") & (pf[plane]["fold"] == f)]
                assert r["lesion_slices"] == len(inside) and r["normal_slices"] == len(normal)
                assert r["lesion_slice_share"] == pytest.approx(len(inside) / len(t))
        if plane != "volume":
            assert total["subjects"] == pf[plane]["subject"].nunique() and total["lesion_slice_share"] == 1.0
        else:
            assert total["subjects"] == len(train)
    summary = folds.balance_summary(st).set_index("plane")
    for plane in tables:
        per_fold = st[(st["plane"] == plane) & (st["bin"] == "all") & (st["fold"] != "all")]
        assert summary.loc[plane, "max_bin_deviation"] == per_fold["max_bin_deviation"].max()
        assert summary.loc[plane, "min_ks_p"] == per_fold["ks_p"].min()
        assert summary.loc[plane, "min_mwu_p"] == per_fold["mwu_p"].min()
    for c in ("count", "subjects", "lesion_slices", "normal_slices"):
        assert str(st[c].dtype) == "Int64"



# ------------------------------------------------------------------ hand-made tables, known answers
def _records(name: str = "raxnet.folds"):
    from conftest import log_records

    return log_records(name)


def test_largest_remainder_small_totals_and_integer_result():
    assert _largest_remainder(np.array([3, 1]), 1).tolist() == [1, 0]  # 0.75, 0.25: one to the larger
    assert _largest_remainder(np.array([1, 0]), 2).tolist() == [2, 0]  # weights summing to 1 still count
    assert _largest_remainder(np.array([2, 2]), 0).tolist() == [0, 0]
    for w, t in (([3, 1], 1), ([2, 2], 0), ([5, 0], 5), ([1, 1, 1], 2)):
        assert _largest_remainder(np.array(w), t).dtype.kind == "i", (w, t)  # "integers proportional to ..."


#: One subject's slices for the normal-slice rule: (lesion pixels, brain pixels) of slices 0..7; its largest
#: brain area is 100, so min_brain_fraction 0.25 asks for >= 25 brain pixels.
_SLICES_A = [(0, 0), (0, 1), (0, 25), (0, 24), (1, 100), (0, 100), (5, 80), (0, 50)]


def _normal_table(folds_of: dict[str, int]) -> pd.DataFrame:
    """Subject "a" (the slices above) and, if given a fold, lesion-free subject "b" (4 slices of 60 brain pixels)."""
    rows = [{"subject": "a", "slice": s, "lesion_pixels": les, "brain_pixels": br, "fold": folds_of["a"]}
            for s, (les, br) in enumerate(_SLICES_A)]
    if "b" in folds_of:
        rows += [{"subject": "b", "slice": s, "lesion_pixels": 0, "brain_pixels": 60, "fold": folds_of["b"]}
                 for s in range(4)]
    return pd.DataFrame(rows)


def _normals(df, ratio, fraction=0.25, source="brain", margin=10, k=2, seed=0):
    out = folds._sample_normal(df, ratio, fraction, source, margin, np.random.SeedSequence(seed), k, "axial")
    assert (out["kind"] == "normal").all() and (out["area_bin"] == "normal").all()
    return sorted(zip(out["subject"], out["slice"]))


def test_normal_slice_rule_by_hand():
    """Candidates: lesion-free, brain > 0 and brain >= fraction x the subject's largest slice brain area.
    A ratio of 10 asks for more than there are, so every candidate is taken (and a warning says so)."""
    df = _normal_table({"a": 1})
    assert _normals(df, 10.0, 0.25, k=1) == [("a", 2), ("a", 5), ("a", 7)]  # 25 >= 0.25 x 100 is enough
    assert _normals(df, 10.0, 0.0, k=1) == [("a", 1), ("a", 2), ("a", 3), ("a", 5), ("a", 7)]  # brain 0 never
    assert _normals(df, 10.0, 0.5, k=1) == [("a", 5), ("a", 7)]


def test_normal_slice_quota_counts_one_pixel_lesions_and_skips_lesion_free_folds():
    """Fold 1 holds only lesion-free subject b: no lesion slices, so no normal slices from it. Fold 2 holds a,
    whose lesion slices are 4 (1 pixel) and 6: ratio 1 -> 2 of its 3 candidates, ratio 0.5 -> exactly 1."""
    df = _normal_table({"a": 2, "b": 1})
    two = _normals(df, 1.0)
    assert len(two) == 2 and set(two) <= {("a", 2), ("a", 5), ("a", 7)}
    one = _normals(df, 0.5)
    assert len(one) == 1 and set(one) <= {("a", 2), ("a", 5), ("a", 7)}
    assert _normals(df, 0.0) == []
    # which candidate is drawn is random (seeded): over ten seeds more than one of the three comes up
    assert len({tuple(_normals(df, 0.5, seed=seed)) for seed in range(10)}) > 1


def test_normal_slice_shortage_warns_with_the_numbers():
    df = _normal_table({"a": 2, "b": 1})
    with _records() as recs:
        assert _normals(df, 10.0) == [("a", 2), ("a", 5), ("a", 7)]  # 20 wanted, 3 there: all 3, nothing of b
    assert [r.getMessage() for r in recs] == ["axial fold 2: only 3 normal slices available for 20 wanted"]
    with _records() as recs:
        assert _normals(df, 1.5) == [("a", 2), ("a", 5), ("a", 7)]  # round(1.5 x 2) = 3 = exactly what there is
    assert recs == []


def test_near_lesion_normals_by_hand():
    """Lesion slab of a = slices 4 (1 pixel) .. 6; margin 1 allows slices 3..7 (both ends included), and the
    usual rule still applies inside it. b has no lesion: no near-lesion slices at all."""
    df = _normal_table({"a": 1, "b": 1})
    assert _normals(df, 10.0, 0.0, "near_lesion", margin=1, k=1) == [("a", 3), ("a", 5), ("a", 7)]
    assert _normals(df, 10.0, 0.25, "near_lesion", margin=1, k=1) == [("a", 5), ("a", 7)]
    assert _normals(df, 10.0, 0.0, "near_lesion", margin=0, k=1) == [("a", 5)]


def test_balance_summary_by_hand():
    """Two planes, two folds; the 'all' rows (fold all, or bin rows) never count."""
    rows = []
    for plane, shares, devs, ps in (("volume", (0.5, 0.5), (0.1, 0.3), (0.2, 0.9)),
                                    ("axial", (0.4, 0.6), (0.05, 0.02), (0.7, 0.3))):
        rows.append({"plane": plane, "fold": "all", "bin": "all", "lesion_slice_share": 1.0})
        rows.append({"plane": plane, "fold": "all", "bin": "(0, 5]", "deviation": 0.0})
        for f in (1, 2):
            rows.append({"plane": plane, "fold": str(f), "bin": "(0, 5]", "deviation": 0.9})
            rows.append({"plane": plane, "fold": str(f), "bin": "all", "lesion_slice_share": shares[f - 1],
                         "max_bin_deviation": devs[f - 1], "ks_p": ps[f - 1], "mwu_p": ps[f - 1] / 2})
    st = pd.DataFrame(rows).reindex(columns=folds.STATS_COLUMNS)
    got = folds.balance_summary(st)
    want = pd.DataFrame({"plane": ["volume", "axial"], "max_bin_deviation": [0.3, 0.05], "min_ks_p": [0.2, 0.3],
                         "min_mwu_p": [0.1, 0.15], "lesion_slice_share_min": [0.5, 0.4],
                         "lesion_slice_share_max": [0.5, 0.6]})
    pd.testing.assert_frame_equal(got, want)


def _stage_inputs(work, *, subjects=True, spacing="2.0x2.0x2.0", drop_slice=None, extra_subject=False):
    """Stage 01/02 tables by hand, with only the columns stage 04 needs (split.csv without ``site``,
    slices without ``n_lesions``): train a..f, hold-out h; 4 slices per plane; one lesion slice per subject."""
    ds, sp = work / "01_dataset", work / "02_data_splitting"
    ds.mkdir(parents=True)
    sp.mkdir(parents=True)
    names = list("abcdef") + ["h"]
    pd.DataFrame({"subject": names, "set": ["train"] * 6 + ["holdout"], "volume_bin": "(0, 5000]",
                  "lesion_voxels": [30, 40, 50, 60, 70, 80, 90]}).to_csv(sp / "split.csv", index=False)
    if subjects:
        sub = pd.DataFrame({"subject": names + (["x"] if extra_subject else [])})
        if spacing is not None:
            sub["spacing_mm"] = spacing
        sub.to_csv(ds / "subjects.csv", index=False)
    for plane in PLANES:
        rows = [{"subject": n, "slice": s, "lesion_pixels": 60 if s == 1 else 0, "brain_pixels": 100}
                for n in names for s in range(4) if (n, s, plane) != drop_slice]
        pd.DataFrame(rows).to_csv(ds / f"slices_{plane}.csv", index=False)
    return sp / "split.csv", ds / "subjects.csv", {p: ds / f"slices_{p}.csv" for p in PLANES}


def test_read_inputs_by_hand(tmp_path):
    split_csv, subjects_csv, slice_csvs = _stage_inputs(tmp_path)
    split, slices, spacing, sources = folds.read_inputs(tmp_path)
    assert split["subject"].tolist() == list("abcdef") + ["h"] and split["lesion_voxels"].tolist()[0] == 30
    assert spacing == {n: "2.0x2.0x2.0" for n in list("abcdef") + ["h"]}
    assert sources == {"split": str(split_csv), **{p: str(slice_csvs[p]) for p in PLANES}}
    for plane in PLANES:
        assert len(slices[plane]) == 28 and slices[plane]["lesion_pixels"].sum() == 7 * 60
    # no subjects.csv, or one without spacing: no spacing (1 mm), and nothing to check the tables against
    (tmp_path / "01_dataset" / "subjects.csv").unlink()
    assert folds.read_inputs(tmp_path)[2] is None
    pd.DataFrame({"subject": list("abcdef") + ["h"]}).to_csv(subjects_csv, index=False)
    assert folds.read_inputs(tmp_path)[2] is None


def test_read_inputs_refusals_name_both_files(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    split_csv, subjects_csv, _ = _stage_inputs(a, extra_subject=True)
    with pytest.raises(StageInputError) as e:
        folds.read_inputs(a)
    assert str(e.value).startswith(f"{split_csv}: 1 subjects of {subjects_csv} missing: x; re-run stage 02")
    _, subjects_csv, slice_csvs = _stage_inputs(b, drop_slice=("c", 2, "sagittal"))
    with pytest.raises(StageInputError) as e:
        folds.read_inputs(b)
    assert str(e.value).startswith(f"{slice_csvs['sagittal']}: subject c has 3 of its 4 sagittal slices")
    _, subjects_csv, slice_csvs = _stage_inputs(c)
    table = pd.read_csv(slice_csvs["axial"])
    table[table["subject"] != "d"].to_csv(slice_csvs["axial"], index=False)
    with pytest.raises(StageInputError) as e:
        folds.read_inputs(c)
    assert str(e.value).startswith(f"{slice_csvs['axial']}: 1 subjects of {subjects_csv} missing: d; re-run stage 01")


#: non-default settings of every [folds] key, so a setting that run() does not pass on changes the tables
_RUN_OPTS = {"n_folds": 3, "normal_ratio": 0.5, "normal_min_brain_fraction": 0.6, "normal_source": "near_lesion",
             "near_lesion_margin": 1, "search_restarts": 1, "search_swaps": 7,
             "area_bin_edges": {"axial": [0, 150, 400], "sagittal": [0, 300], "coronal": [0, 100, 250, 1000]}}


def test_run_writes_what_make_folds_computes_with_the_stage_settings(tmp_path, monkeypatch):
    """run() on a 2 mm dataset (its subjects.csv): the tables equal make_folds' with the [folds] settings and
    that spacing, the figures get the train subjects, and record.json lists the six tables' SHA-256."""
    subjects, slices, split = _dataset(16, seed=2)
    subjects["spacing_mm"] = "2.0x2.0x2.0"
    _write(tmp_path, (subjects, slices, split))
    calls = {}
    monkeypatch.setattr(folds, "plot_balance", lambda st, k, path: calls.setdefault("balance", (st, k, path)) and path)
    monkeypatch.setattr(folds, "plot_volume_balance",
                        lambda st, sf, train, k, path, spacing=None: calls.setdefault(
                            "volume", (st, sf, train, k, path, spacing)) and path)
    s = folds.run({"folds": dict(_RUN_OPTS)}, {"work_dir": str(tmp_path), "seed": 3})
    out = tmp_path / "04_cross_validation"
    spacing = {n: "2.0x2.0x2.0" for n in subjects["subject"]}
    opts = {k: v for k, v in _RUN_OPTS.items() if k != "n_folds"}
    opts = {("search_" + k[7:] if k.startswith("search_") else k): v for k, v in opts.items()}
    sf, pf, st = make_folds(split, slices, 3, 3, spacing=spacing, **opts)
    # the settings matter here: with the defaults the tables differ
    sf_default, pf_default, _ = make_folds(split, slices, 3, 3, spacing=spacing)
    assert not sf["fold"].equals(sf_default["fold"]) and len(pf["axial"]) != len(pf_default["axial"])
    pd.testing.assert_frame_equal(pd.read_csv(out / "subject_folds.csv"), sf, check_dtype=False)
    for plane in PLANES:
        got = pd.read_csv(out / f"{plane}_folds.csv", keep_default_na=False)
        pd.testing.assert_frame_equal(got, pf[plane], check_dtype=False)
    pd.testing.assert_frame_equal(pd.read_csv(out / "fold_stats.csv", dtype={"fold": str}), st, check_dtype=False)
    train = split[split["set"] == "train"]
    assert s["n_subjects"] == len(train) and s["k"] == 3 and sorted(sf["fold"].unique()) == [1, 2, 3]
    for plane in PLANES:
        src = slices[plane]
        n_les = int(((src["lesion_pixels"] > 0) & src["subject"].isin(train["subject"])).sum())
        assert s["n_slices"][plane] == {"lesion": n_les, "normal": int((pf[plane]["kind"] == "normal").sum())}
        assert s[f"{plane}_folds_csv"] == str(out / f"{plane}_folds.csv")
    assert s["subject_folds_csv"] == str(out / "subject_folds.csv") and s["stats_csv"] == str(out / "fold_stats.csv")
    pd.testing.assert_frame_equal(pd.DataFrame(s["balance"]), folds.balance_summary(st))  # (NaN != NaN in dicts)
    assert s["figures"] == [str(out / "fold_balance.png"), str(out / "fold_volume_balance.png")]
    st_b, k_b, path_b = calls["balance"]
    assert k_b == 3 and path_b == out / "fold_balance.png"
    pd.testing.assert_frame_equal(st_b, st, check_dtype=False)
    _, sf_v, train_v, k_v, path_v, spacing_v = calls["volume"]
    assert sorted(train_v["subject"]) == sorted(train["subject"]) and k_v == 3
    assert path_v == out / "fold_volume_balance.png" and spacing_v == spacing
    record = json.loads((out / "record.json").read_text())
    names = ["subject_folds.csv", "fold_stats.csv"] + [f"{p}_folds.csv" for p in PLANES]
    assert record["outputs"] == {f"04_cross_validation/{n}": hashlib.sha256((out / n).read_bytes()).hexdigest()
                                 for n in names}


def test_run_names_the_slice_table_of_a_missing_subject(tmp_path, monkeypatch):
    """Without subjects.csv nothing cross-checks the slice tables first: make_folds names the file."""
    subjects, slices, split = _dataset(12, seed=4)
    _write(tmp_path, (subjects, slices, split))
    (tmp_path / "01_dataset" / "subjects.csv").unlink()
    gone = split.loc[split["set"] == "train", "subject"].iloc[0]
    path = tmp_path / "01_dataset" / "slices_coronal.csv"
    slices["coronal"][slices["coronal"]["subject"] != gone].to_csv(path, index=False)
    with pytest.raises(StageInputError, match=f"^{path}: no slices for 1 train subject"):
        folds.run({"folds": dict(FAST)}, {"work_dir": str(tmp_path), "seed": 3})


def test_fold_tests_by_hand():
    """KS and Mann-Whitney U of {1, 2} vs {3, 4}: complete separation, D = 1 and U = 0; exact two-sided p =
    2 / C(4, 2) = 1/3 for both. An empty side has no test: all four are NaN."""
    got = folds._tests(np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    assert got == pytest.approx({"ks_stat": 1.0, "ks_p": 1 / 3, "mwu_stat": 0.0, "mwu_p": 1 / 3})
    # one value on a side is enough for a test: {1} vs {2, 3}: p = 2 / C(3, 1) = 2/3; U = 0 (or 2 the other way)
    assert folds._tests(np.array([1.0]), np.array([2.0, 3.0])) == pytest.approx(
        {"ks_stat": 1.0, "ks_p": 2 / 3, "mwu_stat": 0.0, "mwu_p": 2 / 3})
    assert folds._tests(np.array([2.0, 3.0]), np.array([1.0])) == pytest.approx(
        {"ks_stat": 1.0, "ks_p": 2 / 3, "mwu_stat": 2.0, "mwu_p": 2 / 3})
    for a, b in ((np.array([]), np.array([1.0])), (np.array([1.0]), np.array([]))):
        got = folds._tests(a, b)
        assert sorted(got) == ["ks_p", "ks_stat", "mwu_p", "mwu_stat"] and all(np.isnan(v) for v in got.values())


def test_fold_stats_of_a_single_lesion_slice_by_hand():
    """Four train subjects in two folds; only subject a has a lesion slice (60 px: the first bin) in each plane,
    normal_ratio 2. Per plane: the whole has 1 lesion slice; a's fold holds it (fraction 1, deviation 0, share
    1, 2 normal slices), the other fold none (fraction 0, deviation 1, share 0, no test: NaN); every other bin is
    empty everywhere (count, fractions and deviation 0)."""
    names = list("abcd")
    split = pd.DataFrame({"subject": names, "set": "train", "volume_bin": "(0, 5000]", "lesion_voxels": [60, 0, 0, 0]})
    slices = {p: pd.DataFrame({"subject": np.repeat(names, 3), "slice": np.tile([0, 1, 2], 4),
                               "lesion_pixels": [0, 60, 0] + [0] * 9, "brain_pixels": 100}) for p in PLANES}
    sf, pf, st = make_folds(split, slices, 2, seed=0, normal_ratio=2.0, **FAST)
    fa = int(sf.set_index("subject").loc["a", "fold"])
    fb = 3 - fa
    assert sorted(sf["fold"]) == [1, 1, 2, 2]
    for plane in PLANES:
        rows = st[st["plane"] == plane].set_index(["fold", "bin"])
        labels = [b for f, b in rows.index if f == "all" and b != "all"]
        first = "(0, 500]" if plane == "sagittal" else "(0, 200]"  # the bin of 60 mm^2
        assert labels[0] == first and len(labels) == len(folds.DEFAULTS["area_bin_edges"][plane])
        total = rows.loc[("all", "all")]
        assert (total["count"], total["subjects"], total["lesion_slices"], total["normal_slices"],
                total["lesion_slice_share"]) == (1, 2, 1, 2, 1.0)
        for f, frac, dev, share, n_les, n_nrm in ((str(fa), 1.0, 0.0, 1.0, 1, 2), (str(fb), 0.0, 1.0, 0.0, 0, 0)):
            r = rows.loc[(f, "all")]
            assert (r["count"], r["subjects"], r["lesion_slices"], r["normal_slices"]) == (n_les, 2, n_les, n_nrm)
            assert r["lesion_slice_share"] == share and r["max_bin_deviation"] == dev
            assert np.isnan([r["ks_stat"], r["ks_p"], r["mwu_stat"], r["mwu_p"]]).all()  # one side is empty
            b = rows.loc[(f, first)]
            assert (b["count"], b["fraction"], b["whole_fraction"], b["deviation"]) == (n_les, frac, 1.0, dev)
        a = rows.loc[("all", first)]
        assert (a["count"], a["fraction"], a["whole_fraction"], a["deviation"]) == (1, 1.0, 1.0, 0.0)
        for lab in labels[1:]:
            for f in ("all", "1", "2"):
                r = rows.loc[(f, lab)]
                assert (r["count"], r["fraction"], r["whole_fraction"], r["deviation"]) == (0, 0.0, 0.0, 0.0), (f, lab)
    vol = st[st["plane"] == "volume"].set_index(["fold", "bin"])
    assert vol.loc[("all", "all"), "count"] == 4 and vol.loc[("all", "(0, 5000]"), "whole_fraction"] == 1.0
    assert vol.loc[(str(fa), "all"), "subjects"] == vol.loc[(str(fb), "all"), "subjects"] == 2


def test_pixel_area_per_plane_by_hand():
    # 1 x 2 x 3 mm voxels: sagittal slices (axis 0) are 2 x 3, coronal (axis 1) 1 x 3, axial (axis 2) 1 x 2
    assert [folds.pixel_area_mm2("1.0x2.0x3.0", p) for p in ("sagittal", "coronal", "axial")] == [6.0, 3.0, 2.0]
    assert folds.pixel_area_mm2(None, "axial") == 1.0 and folds.pixel_area_mm2(2.0, "coronal") == 4.0


def test_make_folds_defaults_are_the_stage_defaults():
    import inspect

    from raxnet.config import RUN_DEFAULTS

    params = inspect.signature(make_folds).parameters
    assert params["k"].default == folds.DEFAULTS["n_folds"] == 5 and params["seed"].default == RUN_DEFAULTS["seed"]
    for key in ("normal_ratio", "normal_min_brain_fraction", "normal_source", "near_lesion_margin", "search_restarts",
                "search_swaps"):
        assert params[key].default == folds.DEFAULTS[key], key


def _tiny(names=("101", "102", "103", "104")):
    """Four train subjects, 3 slices per plane, one 60 px lesion slice each (slice 1)."""
    split = pd.DataFrame({"subject": list(names), "set": "train", "volume_bin": "(0, 5000]", "lesion_voxels": 60})
    slices = {p: pd.DataFrame({"subject": np.repeat(list(names), 3), "slice": np.tile([0, 1, 2], len(names)),
                               "lesion_pixels": np.tile([0, 60, 0], len(names)), "brain_pixels": 100}) for p in PLANES}
    return split, slices


def test_make_folds_refusals_by_hand():
    split, slices = _tiny()
    with pytest.raises(ConfigError, match=r"^normal_ratio must be >= 0, got -1$"):
        make_folds(split, slices, 2, normal_ratio=-1, **FAST)
    with pytest.raises(ConfigError, match=r"^normal_min_brain_fraction must be in \[0, 1\], got 1.5$"):
        make_folds(split, slices, 2, normal_min_brain_fraction=1.5, **FAST)
    for fraction in (0.0, 1.0):  # both ends allowed
        make_folds(split, slices, 2, normal_min_brain_fraction=fraction, **FAST)
    with pytest.raises(StageInputError, match=r"^slice tables missing for plane\(s\) sagittal, coronal$"):
        make_folds(split, {"axial": slices["axial"]}, 2, **FAST)
    with pytest.raises(StageInputError, match=r"^split.csv: missing column\(s\) volume_bin, lesion_voxels$"):
        make_folds(split.drop(columns=["volume_bin", "lesion_voxels"]), slices, 2, **FAST)
    with pytest.raises(StageInputError, match=r"^s.csv: duplicate subject 102$"):
        make_folds(pd.concat([split, split.iloc[[1]]]), slices, 2, sources={"split": "s.csv"}, **FAST)
    bad = dict(slices)
    bad["axial"] = slices["axial"].drop(columns="brain_pixels")
    with pytest.raises(StageInputError, match=r"^slices_axial.csv: missing column\(s\) brain_pixels$"):
        make_folds(split, bad, 2, **FAST)
    for value in ("12px", -1):
        bad["axial"] = slices["axial"].astype({"lesion_pixels": object})
        bad["axial"].loc[4, "lesion_pixels"] = value
        with pytest.raises(StageInputError, match=r"^slices_axial.csv: missing or negative values in column lesion_pixels$"):
            make_folds(split, bad, 2, **FAST)
    dup = slices["axial"].iloc[[3]].assign(brain_pixels=99)  # same subject and slice, other values
    bad["axial"] = pd.concat([slices["axial"], dup])
    with pytest.raises(StageInputError, match=r"^slices_axial.csv: duplicate row for subject 102 slice 0$"):
        make_folds(split, bad, 2, **FAST)
    split8, slices8 = _tiny([f"s{i}" for i in range(8)])
    bad = dict(slices8)
    bad["coronal"] = slices8["coronal"][slices8["coronal"]["subject"].isin(["s6", "s7"])]
    with pytest.raises(StageInputError, match=r"^slices_coronal.csv: no slices for 6 train subject\(s\): s0, s1, s2, s3, s4$"):
        make_folds(split8, bad, 2, **FAST)


def test_make_folds_numeric_subject_ids_and_integer_tables():
    """Subject ids read as numbers in one table and as text in the other still match (all compared as text);
    the slice tables keep integer pixel counts."""
    split, slices = _tiny()
    numeric = {p: df.assign(subject=df["subject"].astype(int)) for p, df in slices.items()}
    for s_split, s_slices in ((split.assign(subject=split["subject"].astype(int)), slices), (split, numeric)):
        sf, pf, _ = make_folds(s_split, s_slices, 2, **FAST)
        assert sf["subject"].tolist() == ["101", "102", "103", "104"] and sorted(sf["fold"]) == [1, 1, 2, 2]
        for plane in PLANES:
            les = pf[plane][pf[plane]["kind"] == "lesion"]
            assert sorted(les["subject"]) == ["101", "102", "103", "104"] and (les["slice"] == 1).all()
            assert pf[plane]["lesion_pixels"].dtype.kind == "i" and pf[plane]["slice"].dtype.kind == "i"


def test_assign_folds_limits_and_defaults():
    import inspect

    f = np.ones((3, 1, 1))
    with pytest.raises(ConfigError, match=r"^need 2 <= n_folds <= number of train subjects \(3\), got n_folds=1$"):
        assign_folds(np.zeros(3, int), f, 1, seed=0)
    with pytest.raises(ConfigError, match=r"^need 2 <= n_folds <= number of train subjects \(3\), got n_folds=4$"):
        assign_folds(np.zeros(3, int), f, 4, seed=0)
    folds3, _ = assign_folds(np.zeros(3, int), f, 3, seed=0, swaps=10)  # as many folds as subjects: one each
    assert sorted(folds3) == [0, 1, 2]
    params = inspect.signature(assign_folds).parameters
    assert params["restarts"].default == folds.DEFAULTS["search_restarts"]
    assert params["swaps"].default == folds.DEFAULTS["search_swaps"]


def test_make_folds_k_limits_and_edge_names():
    split, slices = _tiny()
    with pytest.raises(ConfigError, match=r"^need 2 <= n_folds <= number of train subjects \(4\) in s.csv, got 1$"):
        make_folds(split, slices, 1, sources={"split": "s.csv"}, **FAST)
    with pytest.raises(ConfigError, match=r"^need 2 <= n_folds <= number of train subjects \(4\) in split.csv, got 5$"):
        make_folds(split, slices, 5, **FAST)
    sf, _, _ = make_folds(split, slices, 4, **FAST)  # k = n: one subject per fold
    assert sorted(sf["fold"]) == [1, 2, 3, 4]
    with pytest.raises(ConfigError, match=r"^folds.area_bin_edges.coronal must be finite and strictly increasing"):
        make_folds(split, slices, 2, area_bin_edges={"coronal": [0, 300, 200]}, **FAST)


def test_make_folds_hands_the_search_the_documented_features(monkeypatch):
    """Three subjects; per plane a: slice 1 60 px; b: slice 1 300 px; c: slice 0 1 px and slice 1 60 px. The
    search (stood in: records its arguments, returns a fixed assignment) gets per subject and plane the lesion
    slices per area bin (axial/coronal bins (0, 200], (200, 500], ...; sagittal (0, 500], ...), the fine
    quantile bins (each lesion slice once, ordered by area), the volume bins in volume order, k, seed and the
    search settings; its score is logged; normal_ratio 10 asks for more normal slices than there are."""
    names = ["a", "b", "c"]
    split = pd.DataFrame({"subject": names, "set": "train", "volume_bin": ["(100, 1000]", "(100, 1000]", "(20, 100]"],
                          "lesion_voxels": [180, 900, 61 * 3]})
    table = pd.DataFrame({"subject": np.repeat(names, 3), "slice": np.tile([0, 1, 2], 3),
                          "lesion_pixels": [0, 60, 0, 0, 300, 0, 1, 60, 0], "brain_pixels": 100})
    seen = {}

    def search(groups, features, k, seed, restarts, swaps, fine):
        seen.update(groups=groups, features=features, k=k, seed=seed, restarts=restarts, swaps=swaps, fine=fine)
        return np.array([0, 1, 0]), 0.1234

    monkeypatch.setattr(folds, "assign_folds", search)
    with _records("raxnet.folds") as warnings:
        sf, pf, _ = make_folds(split, {p: table for p in PLANES}, 2, seed=9, normal_ratio=10.0, search_restarts=3,
                               search_swaps=17)
    assert (seen["k"], seen["seed"], seen["restarts"], seen["swaps"]) == (2, 9, 3, 17)
    assert seen["groups"].tolist() == [1, 1, 0]  # (20, 100] holds the smaller volumes: group 0
    feats = seen["features"]
    assert feats.shape == (3, 3, 6)
    for p, plane in enumerate(PLANES):
        want = [[1, 0], [0, 1], [2, 0]] if plane != "sagittal" else [[1, 0], [1, 0], [2, 0]]
        assert feats[:, p, :2].tolist() == want and (feats[:, p, 2:] == 0).all(), plane
    fine = seen["fine"]
    assert fine.shape == (3, 3, folds.FINE_BINS) and fine.sum(axis=2).tolist() == [[1, 1, 1], [1, 1, 1], [2, 2, 2]]
    for p in range(3):
        i60 = int(np.flatnonzero(fine[0, p])[0])
        i300 = int(np.flatnonzero(fine[1, p])[0])
        i1, i60c = np.flatnonzero(fine[2, p]).tolist()
        assert i1 < i60 == i60c < i300
    assert sf["fold"].tolist() == [1, 2, 1]
    for plane in PLANES:
        les = pf[plane][pf[plane]["kind"] == "lesion"]
        assert list(zip(les["subject"], les["slice"])) == [("a", 1), ("c", 0), ("c", 1), ("b", 1)]  # 1 px counts
        assert pf[plane]["fold"].dtype.kind == "i"
    assert [r.getMessage() for r in warnings] == [
        f"{plane} fold {f}: only {have} normal slices available for {want} wanted"
        for plane in PLANES for f, have, want in ((1, 3, 30), (2, 2, 10))]


def test_make_folds_logs_the_search_score(monkeypatch):
    from conftest import log_records

    monkeypatch.setattr(folds, "assign_folds", lambda *a: (np.array([0, 1, 0, 1]), 0.1234))
    split, slices = _tiny()
    with log_records("raxnet.folds", logging.INFO) as records:
        make_folds(split, slices, 2, **FAST)
    assert [r.getMessage() for r in records if r.levelno == logging.INFO] == [
        "fold search: imbalance score 0.1234 (4 subjects, k=2)"]


def test_balance_score_with_quantile_bins_by_hand():
    """One plane, one area bin, two quantile bins; two folds of one subject each (n_terms = 2 x (3 + 1) = 8).
    A = 2 slices in quantile bin 0, B = 2 in bin 1: whole CDF (0.5, 1); fold A's CDF (1, 1), B's (0, 1): each
    fold deviates 0.5 once -> 0.5 + 0.1 sqrt(2 x 0.25 / 8) = 0.525.
    One lesion slice in all (A: 1 in bin 0, B: none): A deviates 0 and its share 0.5; B has hist 1, CDF 1, 1,
    share 0.5 -> 1 + 0.1 sqrt((0.25 + 3 + 0.25) / 8)."""
    bal = _Balance(np.array([[[2.0]], [[2.0]]]), np.array([[[2.0, 0.0]], [[0.0, 2.0]]]), 2)
    assert bal.score(bal.counts(np.array([0, 1]))) == pytest.approx(0.525)
    one = _Balance(np.array([[[1.0]], [[0.0]]]), np.array([[[1.0, 0.0]], [[0.0, 0.0]]]), 2)
    assert one.score(one.counts(np.array([0, 1]))) == pytest.approx(1 + 0.1 * np.sqrt(3.5 / 8))
    # the search returns the score of what it returns; without quantile bins n_terms = 2 x (2 + 1) = 6
    f = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    found, score = assign_folds(np.zeros(2, int), f, 2, seed=0, restarts=1, swaps=0)
    assert sorted(found) == [0, 1] and score == pytest.approx(0.5 + 0.1 * np.sqrt(1 / 6))


def test_more_restarts_can_only_help():
    """restarts = 1 is the first of the restarts of restarts = 2 (seeded children): never better, and over
    ten seeds sometimes worse."""
    rng = np.random.default_rng(1)
    feats = rng.integers(0, 4, size=(10, 1, 3)).astype(float)
    one = [assign_folds(np.zeros(10, int), feats, 2, seed=s, restarts=1, swaps=0)[1] for s in range(10)]
    two = [assign_folds(np.zeros(10, int), feats, 2, seed=s, restarts=2, swaps=0)[1] for s in range(10)]
    assert all(a >= b for a, b in zip(one, two)) and any(a > b for a, b in zip(one, two))


def test_make_folds_default_k_seed_and_margin(data):
    _, slices, split = data
    sf, _, _ = make_folds(split, slices, **FAST)
    assert sorted(sf["fold"].unique()) == [1, 2, 3, 4, 5]  # k = 5
    sf42, _, _ = make_folds(split, slices, 5, 42, **FAST)
    sf43, _, _ = make_folds(split, slices, 5, 43, **FAST)
    assert sf["fold"].equals(sf42["fold"]) and not sf["fold"].equals(sf43["fold"])  # seed 42
    # near_lesion: lesion at slice 1; slice 11 is 10 slices away (allowed by default), slice 12 is 11 away
    names = ["a", "b"]
    table = pd.DataFrame({"subject": np.repeat(names, 13), "slice": np.tile(np.arange(13), 2),
                          "lesion_pixels": [0, 60] + [0] * 11 + [0, 60] + [0] * 11, "brain_pixels": 100})
    split2 = pd.DataFrame({"subject": names, "set": "train", "volume_bin": "(0, 5000]", "lesion_voxels": 180})
    _, pf, _ = make_folds(split2, {p: table for p in PLANES}, 2, normal_ratio=20.0, normal_source="near_lesion", **FAST)
    normal = pf["axial"][pf["axial"]["kind"] == "normal"]
    assert sorted(set(normal["slice"])) == [0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]


def test_quantile_bins_one_per_area_when_20_areas(monkeypatch):
    """20 lesion slices of 20 different areas (1..20 px) in a plane: the 19 quantile edges fall between
    consecutive areas, so each of the 20 quantile bins holds exactly one slice."""
    names = ["a", "b", "c", "d"]
    table = pd.DataFrame({"subject": np.repeat(names, 6), "slice": np.tile(np.arange(6), 4),
                          "lesion_pixels": np.concatenate([np.r_[np.arange(1, 6) + 5 * i, 0] for i in range(4)]),
                          "brain_pixels": 100})
    split = pd.DataFrame({"subject": names, "set": "train", "volume_bin": "(0, 5000]", "lesion_voxels": 1})
    seen = {}
    monkeypatch.setattr(folds, "assign_folds", lambda *a: (seen.setdefault("fine", a[6]), (np.array([0, 1, 0, 1]), 0.0))[1])
    make_folds(split, {p: table for p in PLANES}, 2, **FAST)
    assert (seen["fine"].sum(axis=0) == 1).all() and seen["fine"].shape == (4, 3, 20)
