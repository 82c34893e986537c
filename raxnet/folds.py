"""Stage 04 — leakage-free, stratified k-fold cross-validation of the ``train`` subjects.

The unit is the subject. Every train subject of ``split.csv`` goes to exactly one fold (1..k), and the
same subject -> fold map is used for all three planes (``subject_folds.csv``), so fold k's axial,
sagittal and coronal models never saw fold k's subjects and the 3D fusion of the fold-k models can be
evaluated on them. Hold-out subjects are never in any fold.

Fold assignment (seeded search, all choices from ``numpy.random.default_rng``):

1. *volume-stratified deal*: subjects are grouped by their lesion-volume bin (``volume_bin`` of
   ``split.csv``), shuffled within each bin and dealt round-robin over the folds, the deal continuing
   from bin to bin, so fold sizes differ by at most one subject and each fold gets its share of every
   volume bin;
2. *swap search*: ``search_swaps`` random swaps of two subjects of the *same volume bin* in different
   folds (which keeps 1. exact) are proposed and kept when they lower the imbalance score: the largest,
   over folds, planes and area bins, of |fold's fraction of lesion slices in the bin - whole's fraction|
   and of |fold's share of the plane's lesion slices - 1/k|, plus 0.1 x the root mean square of those
   deviations (breaks ties on plateaus); ``search_restarts`` seeded restarts, the best one kept.

Per-slice lesion areas are binned right-closed in mm² (pixels x in-plane pixel area from the subject's
``spacing_mm``; at 1 mm a pixel is 1 mm², on a 2 mm grid 4 mm², so the same edges keep their meaning).

Slices per plane (``<plane>_folds.csv``): every slice with lesion of every train subject (``kind =
lesion``), and lesion-free ``normal`` slices: ``normal_ratio`` x the fold's lesion slices, taken from the
fold's own subjects, only slices with ``lesion_pixels == 0`` and ``brain_pixels >= normal_min_brain_fraction``
x the subject's largest slice brain area. By default (``normal_source = "brain"``) candidates are anywhere
in the brain and the fold's quota is spread over its subjects in proportion to their number of candidate
slices (largest-remainder rounding), then drawn at random within each subject; ``"near_lesion"`` only
allows slices within ``near_lesion_margin`` slices of the subject's lesion slab.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from raxnet import record
from raxnet.cli_common import resolve, stage_parser
from raxnet.config import section, stage_dir, with_flags
from raxnet.errors import ConfigError, StageInputError
from raxnet.io import save_csv, save_figure
from raxnet.log import get_logger, progress
from raxnet.planes import PLANE_AXIS, PLANES
from raxnet.splitting import assign_bins, bin_labels, check_edges, parse_spacing, voxel_volume_mm3
from raxnet.stage import stage_run

log = get_logger(__name__)

DEFAULTS: dict[str, Any] = {
    # number of cross-validation folds (numbered 1..k)
    "n_folds": 5,
    # lesion-free slices per lesion slice, per fold and plane
    "normal_ratio": 1.0,
    # a normal slice needs brain_pixels >= this fraction of the subject's largest slice brain area
    "normal_min_brain_fraction": 0.25,
    # where normal slices come from: "brain" (anywhere in the brain) or "near_lesion" (around the lesion slab)
    "normal_source": "brain",
    # with normal_source = "near_lesion": slices at most this far from the subject's lesion slab
    "near_lesion_margin": 10,
    # seeded restarts of the fold search (the most balanced one is kept)
    "search_restarts": 4,
    # swap proposals per restart
    "search_swaps": 3000,
    # per-slice lesion-area bin edges in mm^2 (= pixels at 1 mm), right-closed, last bin open-ended
    "area_bin_edges": {
        "axial": [0, 200, 500, 1000, 2000, 3000],
        "sagittal": [0, 500, 1000, 2000, 3000, 5000],
        "coronal": [0, 200, 500, 1000, 2000, 3000],
    },
}

FOLD_COLUMNS = ["subject", "slice", "fold", "kind", "lesion_pixels", "area_bin"]
STATS_COLUMNS = [
    "plane", "fold", "bin", "count", "fraction", "whole_fraction", "deviation", "subjects", "lesion_slices",
    "normal_slices", "lesion_slice_share", "max_bin_deviation", "ks_stat", "ks_p", "mwu_stat", "mwu_p",
]
#: quantile bins of the per-slice lesion area used by the search's CDF (KS-like) term
FINE_BINS = 20
_SPLIT_REQUIRED = ("subject", "set", "volume_bin", "lesion_voxels")
_SLICE_REQUIRED = ("subject", "slice", "lesion_pixels", "brain_pixels")


# ------------------------------------------------------------------------------------------ helpers
def pixel_area_mm2(spacing: Any, plane: str) -> float:
    """In-plane pixel area (mm²) of ``plane`` for a ``spacing_mm`` cell (see splitting.parse_spacing)."""
    s = parse_spacing(spacing)
    axis = PLANE_AXIS[plane]
    return float(np.prod([s[a] for a in range(3) if a != axis]))


def _largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Integers proportional to ``weights`` summing to ``total`` (ties: earlier entries first)."""
    w = np.asarray(weights, dtype=float)
    if total <= 0 or w.sum() <= 0:
        return np.zeros(len(w), dtype=np.int64)
    exact = w * (total / w.sum())
    base = np.floor(exact).astype(np.int64)
    rest = int(total - base.sum())
    if rest > 0:
        order = np.lexsort((np.arange(len(w)), -(exact - base)))
        base[order[:rest]] += 1
    return base


class _Balance:
    """Incremental imbalance score of a fold assignment (see the module docstring).

    ``features``: (subjects, planes, bins) lesion-slice counts per configured area bin; ``fine``:
    the same per fine quantile bin, whose cumulative fractions approximate each fold's area CDF (a
    KS-like term, so the distribution also matches *within* the configured bins).
    """

    def __init__(self, features: np.ndarray, fine: np.ndarray, k: int):
        self.f = np.concatenate([features, fine], axis=2)
        self.nb = features.shape[2]
        self.k = k
        tot = self.f.sum(axis=0)  # (P, B + Q)
        self.plane_tot = np.maximum(tot[:, : self.nb].sum(axis=1), 1)  # (P,)
        self.whole = tot[:, : self.nb] / self.plane_tot[:, None]
        self.whole_cdf = np.cumsum(tot[:, self.nb :], axis=1) / self.plane_tot[:, None]

    def counts(self, folds: np.ndarray) -> np.ndarray:
        c = np.zeros((self.k,) + self.f.shape[1:])
        np.add.at(c, folds, self.f)
        return c

    def fold_deviations(self, cf: np.ndarray) -> np.ndarray:
        """All deviations of one fold (counts ``cf``: planes x (bins + quantile bins))."""
        coarse, fine = cf[:, : self.nb], cf[:, self.nb :]
        n = coarse.sum(axis=1)  # (P,)
        inv = 1.0 / np.maximum(n, 1)[:, None]
        hist = np.abs(coarse * inv - self.whole)
        cdf = np.abs(np.cumsum(fine, axis=1) * inv - self.whole_cdf)
        share = np.abs(n / self.plane_tot - 1.0 / self.k)
        return np.concatenate([hist.ravel(), cdf.ravel(), share])

    def fold_terms(self, cf: np.ndarray) -> tuple[float, float]:
        """(max, sum of squares) of one fold's deviations: the score decomposes over folds."""
        d = self.fold_deviations(cf)
        return float(d.max()), float(d @ d)

    def combine(self, maxes: np.ndarray, sumsq: np.ndarray) -> float:
        n_terms = self.k * (self.f.shape[1] * self.f.shape[2] + self.f.shape[1])
        return float(maxes.max() + 0.1 * np.sqrt(sumsq.sum() / n_terms))

    def score(self, c: np.ndarray) -> float:
        terms = np.array([self.fold_terms(cf) for cf in c])
        return self.combine(terms[:, 0], terms[:, 1])


def _deal(groups: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Volume-stratified deal: shuffle within each group, deal round-robin continuing across groups."""
    folds = np.empty(len(groups), dtype=np.int64)
    pos = int(rng.integers(k))
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        idx = idx[rng.permutation(len(idx))]
        folds[idx] = (pos + np.arange(len(idx))) % k
        pos = (pos + len(idx)) % k
    return folds


def assign_folds(
    volume_groups: np.ndarray, features: np.ndarray, k: int, seed: int, restarts: int = 4, swaps: int = 3000,
    fine: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Fold (0..k-1) per subject: volume-stratified deal + same-volume-bin swap search.

    ``volume_groups``: one group id per subject (its volume bin); ``features``: (subjects, planes, bins)
    lesion-slice counts; ``fine``: optional (subjects, planes, quantile bins) counts for the CDF term.
    Returns the assignment and its imbalance score.
    """
    n = len(volume_groups)
    if k < 2 or n < k:
        raise ConfigError(f"need 2 <= n_folds <= number of train subjects ({n}), got n_folds={k}")
    if fine is None:
        fine = np.zeros(features.shape[:2] + (0,))
    bal = _Balance(features.astype(float), fine.astype(float), k)
    best, best_score = None, math.inf
    seqs = np.random.SeedSequence(int(seed)).spawn(max(1, int(restarts)))
    for ss in progress(seqs, desc="fold search", unit="restart", disable=None, leave=False):
        rng = np.random.default_rng(ss)
        folds = _deal(volume_groups, k, rng)
        c = bal.counts(folds)
        terms = np.array([bal.fold_terms(cf) for cf in c])
        maxes, sumsq = terms[:, 0].copy(), terms[:, 1].copy()
        score = bal.combine(maxes, sumsq)
        # Pre-draw proposals: subject a, then a partner from the same volume bin.
        members = {g: np.flatnonzero(volume_groups == g) for g in np.unique(volume_groups)}
        a_all = rng.integers(n, size=int(swaps))
        u_all = rng.random(int(swaps))
        for a, u in zip(a_all, u_all):
            pool = members[volume_groups[a]]
            b = pool[int(u * len(pool))]
            fa, fb = folds[a], folds[b]
            if fa == fb:
                continue
            # Only folds fa and fb change: recompute their terms and keep the swap if the score drops.
            d = bal.f[b] - bal.f[a]
            ca, cb = c[fa] + d, c[fb] - d
            old = (maxes[fa], maxes[fb], sumsq[fa], sumsq[fb])
            (maxes[fa], sumsq[fa]), (maxes[fb], sumsq[fb]) = bal.fold_terms(ca), bal.fold_terms(cb)
            new = bal.combine(maxes, sumsq)
            if new < score:
                folds[a], folds[b] = fb, fa
                c[fa], c[fb] = ca, cb
                score = new
            else:
                maxes[fa], maxes[fb], sumsq[fa], sumsq[fb] = old
        if score < best_score:
            best, best_score = folds.copy(), score
    return best, best_score  # type: ignore[return-value]


# -------------------------------------------------------------------------------------- validation
def _check_columns(df: pd.DataFrame, required: Sequence[str], source: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise StageInputError(f"{source}: missing column(s) {', '.join(missing)}")


def _prepare_slices(df: pd.DataFrame, subjects: Sequence[str], source: str) -> pd.DataFrame:
    _check_columns(df, _SLICE_REQUIRED, source)
    df = df.loc[df["subject"].astype(str).isin(set(subjects)), list(_SLICE_REQUIRED)].copy()
    df["subject"] = df["subject"].astype(str)
    for c in ("slice", "lesion_pixels", "brain_pixels"):
        v = pd.to_numeric(df[c], errors="coerce")
        if v.isna().any() or (v < 0).any():
            raise StageInputError(f"{source}: missing or negative values in column {c}")
        df[c] = v.astype(np.int64)
    if df.duplicated(["subject", "slice"]).any():
        d = df[df.duplicated(["subject", "slice"])].iloc[0]
        raise StageInputError(f"{source}: duplicate row for subject {d['subject']} slice {d['slice']}")
    absent = sorted(set(subjects) - set(df["subject"]))
    if absent:
        raise StageInputError(f"{source}: no slices for {len(absent)} train subject(s): {', '.join(absent[:5])}")
    return df.sort_values(["subject", "slice"], kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------------------------------- folds
def make_folds(
    split_df: pd.DataFrame,
    slices_by_plane: Mapping[str, pd.DataFrame],
    k: int = 5,
    seed: int = 42,
    *,
    normal_ratio: float = 1.0,
    area_bin_edges: Mapping[str, Sequence[float]] | None = None,
    normal_min_brain_fraction: float = 0.25,
    normal_source: str = "brain",
    near_lesion_margin: int = 10,
    search_restarts: int = 4,
    search_swaps: int = 3000,
    spacing: Mapping[str, Any] | None = None,
    sources: Mapping[str, str] | None = None,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], pd.DataFrame]:
    """Build k subject-level folds of the train subjects and the per-plane slice lists.

    ``split_df``: stage 02's split (``subject, set, volume_bin, lesion_voxels``); ``slices_by_plane``:
    stage 01's per-slice tables; ``spacing``: optional subject -> ``spacing_mm`` (default 1 mm).
    Returns ``(subject_folds_df, {plane: folds_df}, stats_df)``; folds are numbered 1..k.
    """
    sources = dict(sources or {})
    src_split = sources.get("split", "split.csv")
    _check_columns(split_df, _SPLIT_REQUIRED, src_split)
    if normal_source not in ("brain", "near_lesion"):
        raise ConfigError(f"normal_source must be 'brain' or 'near_lesion', got {normal_source!r}")
    if normal_ratio < 0:
        raise ConfigError(f"normal_ratio must be >= 0, got {normal_ratio}")
    if not 0 <= normal_min_brain_fraction <= 1:
        raise ConfigError(f"normal_min_brain_fraction must be in [0, 1], got {normal_min_brain_fraction}")
    edges_by_plane = dict(DEFAULTS["area_bin_edges"])
    edges_by_plane.update(area_bin_edges or {})
    missing_planes = [p for p in PLANES if p not in slices_by_plane]
    if missing_planes:
        raise StageInputError(f"slice tables missing for plane(s) {', '.join(missing_planes)}")

    split = split_df.copy()
    split["subject"] = split["subject"].astype(str)
    if split["subject"].duplicated().any():
        raise StageInputError(f"{src_split}: duplicate subject {split['subject'][split['subject'].duplicated()].iloc[0]}")
    train = split[split["set"] == "train"].sort_values("subject", kind="stable").reset_index(drop=True)
    subjects = train["subject"].tolist()
    n = len(subjects)
    if n < k or k < 2:
        raise ConfigError(f"need 2 <= n_folds <= number of train subjects ({n}) in {src_split}, got {k}")
    sub_index = {s: i for i, s in enumerate(subjects)}
    spacing = dict(spacing or {})

    # Per plane: validated slice table with area (mm²) and area bin of each lesion slice.
    tables: dict[str, pd.DataFrame] = {}
    labels_by_plane: dict[str, list[str]] = {}
    feats, fines = [], []
    for plane in PLANES:
        src = sources.get(plane, f"slices_{plane}.csv")
        df = _prepare_slices(slices_by_plane[plane], subjects, src)
        edges = check_edges(edges_by_plane[plane], f"folds.area_bin_edges.{plane}")
        labels = bin_labels(edges)
        area_of = {s: pixel_area_mm2(spacing.get(s, 1.0), plane) for s in subjects}
        df["area_mm2"] = df["lesion_pixels"] * df["subject"].map(area_of).to_numpy(float)
        les = df["lesion_pixels"] > 0
        b = np.full(len(df), -1, dtype=np.int64)
        b[les.to_numpy()] = assign_bins(df.loc[les, "area_mm2"], edges)
        df["bin_idx"] = b
        rows = df.loc[les, "subject"].map(sub_index).to_numpy()
        f = np.zeros((n, len(labels)))
        np.add.at(f, (rows, b[les.to_numpy()]), 1)
        feats.append(f)
        # Fine bins at the train set's area quantiles, for the search's CDF term only.
        area = df.loc[les, "area_mm2"].to_numpy(float)
        q_edges = np.unique(np.quantile(area, np.linspace(0, 1, FINE_BINS + 1)[1:-1])) if len(area) else []
        g = np.zeros((n, FINE_BINS))
        np.add.at(g, (rows, np.searchsorted(q_edges, area, side="left")), 1)
        fines.append(g)
        tables[plane] = df
        labels_by_plane[plane] = labels
    width = max(f.shape[1] for f in feats)
    features = np.zeros((n, len(PLANES), width))
    for p, f in enumerate(feats):
        features[:, p, : f.shape[1]] = f

    # Volume bins ordered by the lesion volume they hold (labels are strings from stage 02).
    vb = train["volume_bin"].astype(str)
    order = train.groupby(vb)["lesion_voxels"].median().sort_values(kind="stable").index.tolist()
    groups = vb.map({label: i for i, label in enumerate(order)}).to_numpy()
    fold0, score = assign_folds(groups, features, k, seed, search_restarts, search_swaps, np.stack(fines, axis=1))
    subject_folds = pd.DataFrame({"subject": subjects, "fold": fold0 + 1})
    log.info("fold search: imbalance score %.4f (%d subjects, k=%d)", score, n, k)

    fold_of = dict(zip(subjects, fold0 + 1))
    plane_folds: dict[str, pd.DataFrame] = {}
    for p_i, plane in enumerate(PLANES):
        df = tables[plane]
        df["fold"] = df["subject"].map(fold_of).astype(np.int64)
        les = df[df["lesion_pixels"] > 0].copy()
        les["kind"] = "lesion"
        les["area_bin"] = [labels_by_plane[plane][i] for i in les["bin_idx"]]
        normal = _sample_normal(df, normal_ratio, normal_min_brain_fraction, normal_source, near_lesion_margin,
                                np.random.SeedSequence([int(seed), 1 + p_i]), k, plane)
        out = pd.concat([les, normal], ignore_index=True)
        out = out.sort_values(["fold", "subject", "slice"], kind="stable").reset_index(drop=True)
        plane_folds[plane] = out[FOLD_COLUMNS + ["area_mm2"]]

    st = fold_stats(subject_folds, plane_folds, train, labels_by_plane, order, k)
    return subject_folds, {p: d[FOLD_COLUMNS] for p, d in plane_folds.items()}, st


def _sample_normal(
    df: pd.DataFrame, ratio: float, min_brain_fraction: float, source: str, margin: int,
    seq: np.random.SeedSequence, k: int, plane: str,
) -> pd.DataFrame:
    """Lesion-free slices of each fold: ``ratio`` x its lesion slices, spread over its subjects."""
    max_brain = df.groupby("subject")["brain_pixels"].transform("max")
    ok = (df["lesion_pixels"] == 0) & (df["brain_pixels"] > 0) & (df["brain_pixels"] >= min_brain_fraction * max_brain)
    if source == "near_lesion":
        les = df[df["lesion_pixels"] > 0].groupby("subject")["slice"].agg(["min", "max"])
        lo = df["subject"].map(les["min"]) - margin
        hi = df["subject"].map(les["max"]) + margin
        ok &= (df["slice"] >= lo) & (df["slice"] <= hi)  # NaN (no lesion) -> False
    cand = df[ok]
    n_lesion = df[df["lesion_pixels"] > 0].groupby("fold").size()
    parts = []
    for fold, fseq in zip(range(1, k + 1), seq.spawn(k)):
        rng = np.random.default_rng(fseq)
        target = int(round(ratio * int(n_lesion.get(fold, 0))))
        pool = cand[cand["fold"] == fold]
        if target > len(pool):
            log.warning("%s fold %d: only %d normal slices available for %d wanted", plane, fold, len(pool), target)
            target = len(pool)
        if target == 0:
            continue
        per_subject = pool.groupby("subject", sort=True).size()
        quota = pd.Series(_largest_remainder(per_subject.to_numpy(), target), index=per_subject.index)
        # Random rank within each subject; keep the first `quota` of each.
        key = rng.random(len(pool))
        ranked = pool.assign(_key=key).sort_values(["subject", "_key"], kind="stable")
        rank = ranked.groupby("subject").cumcount().to_numpy()
        take = ranked[rank < ranked["subject"].map(quota).to_numpy()]
        parts.append(take.drop(columns="_key"))
    if not parts:
        return df.iloc[:0].assign(kind=pd.Series(dtype=str), area_bin=pd.Series(dtype=str))
    out = pd.concat(parts)
    out["kind"] = "normal"
    out["area_bin"] = "normal"
    return out


# ------------------------------------------------------------------------------------------- stats
def _tests(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    if len(a) == 0 or len(b) == 0:
        return {"ks_stat": np.nan, "ks_p": np.nan, "mwu_stat": np.nan, "mwu_p": np.nan}
    ks = stats.ks_2samp(a, b)
    mw = stats.mannwhitneyu(a, b, alternative="two-sided")
    return {"ks_stat": float(ks.statistic), "ks_p": float(ks.pvalue), "mwu_stat": float(mw.statistic),
            "mwu_p": float(mw.pvalue)}


def fold_stats(
    subject_folds: pd.DataFrame, plane_folds: Mapping[str, pd.DataFrame], train: pd.DataFrame,
    labels_by_plane: Mapping[str, Sequence[str]], volume_order: Sequence[str], k: int,
) -> pd.DataFrame:
    """Balance table: per plane (and ``volume`` for subject lesion volume) and fold, per-bin counts and
    fractions vs the whole, the largest per-bin deviation, and KS / Mann-Whitney U tests of the fold
    against the union of the other folds (lesion area per slice; subject lesion volume)."""
    rows: list[dict[str, Any]] = []
    vol = train.set_index("subject")["lesion_voxels"].astype(float)
    sf = subject_folds.set_index("subject")["fold"]

    def block(plane: str, values: pd.Series, bins: pd.Series, labels: Sequence[str], extra: dict) -> None:
        whole = bins.value_counts().reindex(labels, fill_value=0)
        whole_frac = whole / max(len(bins), 1)
        rows.extend({"plane": plane, "fold": "all", "bin": lab, "count": int(whole[lab]),
                     "fraction": whole_frac[lab], "whole_fraction": whole_frac[lab], "deviation": 0.0}
                    for lab in labels)
        rows.append({"plane": plane, "fold": "all", "bin": "all", "count": len(bins), **extra.get("all", {})})
        for f in range(1, k + 1):
            inf = extra["fold_of"] == f
            cnt = bins[inf].value_counts().reindex(labels, fill_value=0)
            frac = cnt / max(int(inf.sum()), 1)
            dev = (frac - whole_frac).abs()
            rows.extend({"plane": plane, "fold": str(f), "bin": lab, "count": int(cnt[lab]),
                         "fraction": frac[lab], "whole_fraction": whole_frac[lab], "deviation": dev[lab]}
                        for lab in labels)
            rows.append({"plane": plane, "fold": str(f), "bin": "all", "count": int(inf.sum()),
                         "max_bin_deviation": float(dev.max()), **extra[f],
                         **_tests(values[inf].to_numpy(float), values[~inf].to_numpy(float))})

    subj = train["subject"].astype(str)
    fold_of = subj.map(sf).to_numpy()
    extra_v: dict[Any, Any] = {"fold_of": fold_of, "all": {"subjects": len(subj)}}
    for f in range(1, k + 1):
        extra_v[f] = {"subjects": int((fold_of == f).sum())}
    block("volume", subj.map(vol).reset_index(drop=True), train["volume_bin"].astype(str).reset_index(drop=True),
          list(volume_order), extra_v)

    for plane in PLANES:
        df = plane_folds[plane]
        les = df[df["kind"] == "lesion"].reset_index(drop=True)
        nrm = df[df["kind"] == "normal"]
        total = max(len(les), 1)
        extra: dict[Any, Any] = {"fold_of": les["fold"].to_numpy(), "all": {
            "subjects": int(df["subject"].nunique()), "lesion_slices": len(les), "normal_slices": len(nrm),
            "lesion_slice_share": 1.0}}
        for f in range(1, k + 1):
            n_les = int((les["fold"] == f).sum())
            extra[f] = {"subjects": int((sf == f).sum()), "lesion_slices": n_les,
                        "normal_slices": int((nrm["fold"] == f).sum()), "lesion_slice_share": n_les / total}
        block(plane, les["area_mm2"], les["area_bin"], labels_by_plane[plane], extra)
    out = pd.DataFrame(rows).reindex(columns=STATS_COLUMNS)
    for c in ("count", "subjects", "lesion_slices", "normal_slices"):
        out[c] = out[c].astype("Int64")
    return out


def balance_summary(stats_df: pd.DataFrame) -> pd.DataFrame:
    """Per plane (and ``volume``): largest per-bin deviation of any fold, min KS / MWU p-values."""
    s = stats_df[(stats_df["bin"] == "all") & (stats_df["fold"] != "all")]
    g = s.groupby("plane", sort=False)
    return pd.DataFrame({
        "max_bin_deviation": g["max_bin_deviation"].max(),
        "min_ks_p": g["ks_p"].min(),
        "min_mwu_p": g["mwu_p"].min(),
        "lesion_slice_share_min": g["lesion_slice_share"].min(),
        "lesion_slice_share_max": g["lesion_slice_share"].max(),
    }).reset_index()


# ----------------------------------------------------------------------------------------- figures
def plot_balance(stats_df: pd.DataFrame, k: int, path: Path) -> Path:
    """``fold_balance.png``: one panel per plane, per-fold fraction of lesion slices per area bin vs whole."""
    from raxnet.plotting import plt

    fig, axes = plt.subplots(1, len(PLANES), figsize=(5.2 * len(PLANES), 4.4))
    for ax, plane in zip(np.atleast_1d(axes), PLANES):
        _bars(ax, stats_df, plane, k)
        ax.set_xlabel("lesion area per slice (mm²)")
        ax.set_ylabel("fraction of the fold's lesion slices")
    fig.suptitle("Per-fold lesion-area distribution vs the whole train set (black: whole)")
    return save_figure(fig, path)


def plot_volume_balance(stats_df: pd.DataFrame, subject_folds: pd.DataFrame, train: pd.DataFrame,
                        k: int, path: Path, spacing: Mapping[str, Any] | None = None) -> Path:
    """``fold_volume_balance.png``: per-fold volume-bin fractions vs whole, and log volumes per fold.

    Volumes are shown in mm³ (``lesion_voxels`` × the voxel volume from ``spacing``: subject -> stage 01's
    ``spacing_mm``; 1 mm³ where unknown), the unit of the volume bins.
    """
    from raxnet.plotting import plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.4))
    _bars(ax0, stats_df, "volume", k)
    ax0.set_xlabel("lesion volume bin (mm³)")
    ax0.set_ylabel("fraction of the fold's subjects")
    m = train[["subject", "lesion_voxels"]].astype({"subject": str}).merge(subject_folds, on="subject")
    voxel = m["subject"].map(lambda s: voxel_volume_mm3((spacing or {}).get(s))).to_numpy(float)
    m["mm3"] = m["lesion_voxels"].to_numpy(float) * voxel
    data = [np.log10(np.maximum(m.loc[m["fold"] == f, "mm3"].to_numpy(float), 1)) for f in range(1, k + 1)]
    ax1.boxplot(data, showfliers=False)
    rng = np.random.default_rng(0)  # jitter only
    for f, d in enumerate(data, start=1):
        ax1.scatter(f + rng.uniform(-0.12, 0.12, len(d)), d, s=5, alpha=0.5, color="k")
    t = stats_df[(stats_df["plane"] == "volume") & (stats_df["bin"] == "all") & (stats_df["fold"] != "all")]
    ax1.set_xticks(range(1, k + 1), [f"fold {f}\nKS p={p:.2f}\nMWU p={q:.2f}"
                                     for f, p, q in zip(t["fold"], t["ks_p"], t["mwu_p"])])
    ax1.set_ylabel("log10 lesion volume (mm³)")
    ax1.set_xlabel("fold (tests: fold vs the other folds)")
    ax1.set_title("Subject lesion volume per fold")
    fig.suptitle("Per-fold subject lesion-volume balance")
    return save_figure(fig, path)


def _bars(ax: Any, stats_df: pd.DataFrame, plane: str, k: int) -> None:
    s = stats_df[(stats_df["plane"] == plane) & (stats_df["bin"] != "all")]
    labels = s.loc[s["fold"] == "all", "bin"].tolist()
    whole = s.loc[s["fold"] == "all", "fraction"].to_numpy(float)
    x = np.arange(len(labels))
    w = 0.8 / k
    for f in range(1, k + 1):
        fr = s.loc[s["fold"] == str(f)].set_index("bin").reindex(labels)["fraction"].to_numpy(float)
        ax.bar(x - 0.4 + w * (f - 0.5), fr, w, label=f"fold {f}")
    ax.scatter(x, whole, marker="_", s=600, color="k", zorder=3, label="whole")
    dev = s["deviation"].max()
    ax.set_title(f"{plane}: max |fold - whole| = {dev:.3f}")
    ax.set_xticks(x, labels, rotation=25, ha="right")
    ax.legend(fontsize=7, ncol=2)


# --------------------------------------------------------------------------------------------- stage
def read_inputs(work: Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], dict[str, Any] | None, dict[str, str]]:
    """Stage 02's split and stage 01's slice tables (and spacing), checked against each other:
    ``(split, {plane: slices}, spacing or None, sources)``; StageInputError names a bad file."""
    from raxnet.tables import SLICES, SPLIT, SUBJECTS, check_slices_complete, check_subjects_agree, read_table

    split_path = stage_dir(work, "split") / "split.csv"
    split = read_table(split_path, SPLIT, columns=_SPLIT_REQUIRED)
    ds = stage_dir(work, "dataset")
    subjects_csv = ds / "subjects.csv"
    subjects = read_table(subjects_csv, SUBJECTS, columns=["subject"]) if subjects_csv.is_file() else None
    if subjects is not None:
        check_subjects_agree(split["subject"], split_path, SPLIT, subjects["subject"], subjects_csv)
    slices, sources = {}, {"split": str(split_path)}
    for plane in PLANES:
        p = ds / f"slices_{plane}.csv"
        slices[plane] = read_table(p, SLICES, columns=_SLICE_REQUIRED)
        if subjects is not None:
            check_slices_complete(slices[plane], p, plane, subjects, subjects_csv)
        sources[plane] = str(p)
    spacing = None
    if subjects is not None and "spacing_mm" in subjects.columns:
        spacing = dict(zip(subjects["subject"], subjects["spacing_mm"]))
    return split, slices, spacing, sources


@stage_run("folds")
def run(cfg: dict[str, Any], run_cfg: dict[str, Any]) -> dict[str, Any]:
    """Stage 04: read ``02_data_splitting/split.csv`` and ``01_dataset/slices_*.csv``; write
    ``04_cross_validation/`` (subject_folds.csv, <plane>_folds.csv, fold_stats.csv, figures)."""
    rec = record.begin("folds", cfg, run_cfg)
    cfg, run_cfg = rec.cfg, rec.run
    opts = section(cfg, "folds", DEFAULTS)
    work = Path(run_cfg["work_dir"])
    split, slices, spacing, sources = read_inputs(work)
    subject_folds, plane_folds, stats_df = make_folds(
        split, slices, int(opts["n_folds"]), int(run_cfg["seed"]),
        normal_ratio=float(opts["normal_ratio"]), area_bin_edges=opts["area_bin_edges"],
        normal_min_brain_fraction=float(opts["normal_min_brain_fraction"]), normal_source=opts["normal_source"],
        near_lesion_margin=int(opts["near_lesion_margin"]), search_restarts=int(opts["search_restarts"]),
        search_swaps=int(opts["search_swaps"]), spacing=spacing, sources=sources,
    )
    out = stage_dir(work, "folds", create=True)
    k = int(opts["n_folds"])
    save_csv(subject_folds, out / "subject_folds.csv")
    for plane, df in plane_folds.items():
        save_csv(df, out / f"{plane}_folds.csv")
    save_csv(stats_df, out / "fold_stats.csv")
    rec.finish([out / "subject_folds.csv", out / "fold_stats.csv", *(out / f"{p}_folds.csv" for p in plane_folds)])
    train = split[split["set"] == "train"]
    figs = [plot_balance(stats_df, k, out / "fold_balance.png"),
            plot_volume_balance(stats_df, subject_folds, train, k, out / "fold_volume_balance.png", spacing)]
    summary = balance_summary(stats_df)
    for r in summary.itertuples():
        log.info("%-8s max per-bin deviation %.4f, min KS p %.3g, min MWU p %.3g", r.plane,
                 r.max_bin_deviation, r.min_ks_p, r.min_mwu_p)
    return {
        "subject_folds_csv": str(out / "subject_folds.csv"),
        **{f"{p}_folds_csv": str(out / f"{p}_folds.csv") for p in PLANES},
        "stats_csv": str(out / "fold_stats.csv"), "figures": [str(f) for f in figs],
        "n_subjects": len(subject_folds), "k": k,
        "n_slices": {p: {"lesion": int((d["kind"] == "lesion").sum()), "normal": int((d["kind"] == "normal").sum())}
                     for p, d in plane_folds.items()},
        "balance": summary.to_dict(orient="records"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """CLI of stage 04 (``04_cross_validation/make_folds.py``)."""
    parser = stage_parser(
        "Stage 04: k subject-level folds of the train subjects, stratified by lesion volume and per-slice\n"
        "lesion area in all three planes, plus the lesion and sampled normal slices of each fold.\n"
        "Reads <work>/02_data_splitting/split.csv and <work>/01_dataset/slices_*.csv; writes\n"
        "<work>/04_cross_validation/{subject_folds,<plane>_folds,fold_stats}.csv and figures."
    )
    parser.add_argument("--folds", type=int, help="number of folds k (default 5)")
    parser.add_argument("--normal-ratio", type=float, help="normal slices per lesion slice, per fold (default 1.0)")
    args = parser.parse_args(argv)
    cfg, run_cfg = resolve(args)
    s = run(with_flags(cfg, "folds", n_folds=args.folds, normal_ratio=args.normal_ratio), run_cfg)
    print(f"{s['n_subjects']} subjects in {s['k']} folds -> {s['subject_folds_csv']}")
    for r in s["balance"]:
        print(f"  {r['plane']:<8} max per-bin deviation {r['max_bin_deviation']:.4f}  "
              f"min KS p {r['min_ks_p']:.3g}  min MWU p {r['min_mwu_p']:.3g}")
    return 0
