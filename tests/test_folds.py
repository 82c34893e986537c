"""Stage 04: leakage-free subject-level folds, stratification, normal-slice sampling, stats, determinism."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
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


def test_search_improves_on_the_volume_deal(data):
    _, slices, split = data
    train = split[split["set"] == "train"].sort_values("subject")
    rng = np.random.default_rng(0)
    feats = rng.integers(0, 5, size=(len(train), 3, 6)).astype(float)
    groups = pd.factorize(train["volume_bin"])[0]
    _, before = assign_folds(groups, feats, 5, seed=2, restarts=1, swaps=0)
    after_folds, after = assign_folds(groups, feats, 5, seed=2, restarts=1, swaps=1500)
    assert after < before
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


def test_run_and_cli_are_byte_identical_for_a_seed(tmp_path, data, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, data)
    _write(b, data)
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
