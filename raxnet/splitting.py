"""Stage 02 — seeded, stratified train / hold-out split of the subjects.

The hold-out set (default 20 %) is kept for the final 3D fusion evaluation and is never used for
training or model selection; stage 04 builds its cross-validation folds from the ``train`` subjects only.

Stratification is by lesion-volume bin (edges in mm³, right-closed, the last bin open-ended; the first
bin also holds volume 0). On the 1 mm ATLAS grid a voxel is 1 mm³, so the edges are voxel counts; on a
2 mm grid a voxel is 8 mm³ and the subject's ``lesion_volume_mm3`` is compared instead, so the same
edges keep their meaning. Strata with fewer than ``min_stratum_size`` subjects are merged with the
neighbouring volume bin that has fewer subjects (and, with site balancing, sparse sites within a volume
stratum are pooled), so small data sets never fail to split. The split itself is scikit-learn's
``train_test_split`` with ``random_state=seed``: the same seed and input give a byte-identical CSV.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.model_selection import train_test_split

from raxnet import record
from raxnet.cli_common import resolve, stage_parser
from raxnet.config import section, stage_dir, with_flags
from raxnet.errors import ConfigError, StageInputError
from raxnet.io import save_csv, save_figure
from raxnet.log import get_logger
from raxnet.stage import stage_run

log = get_logger(__name__)

DEFAULTS: dict[str, Any] = {
    # fraction of subjects kept out for the final fusion evaluation
    "holdout_fraction": 0.2,
    # lesion-volume bin edges in mm^3 (= voxels at 1 mm), right-closed; the last bin is open-ended
    "volume_bin_edges": [0, 5000, 30000, 60000, 100000, 200000],
    # stratify on volume bin x site (sparse sites pooled) instead of volume bin only
    "stratify_site": False,
    # strata smaller than this are merged with a neighbour (>= 2; 5 gives >= 1 expected hold-out at 20 %)
    "min_stratum_size": 5,
}

SPLIT_COLUMNS = ["subject", "site", "lesion_voxels", "volume_bin", "set"]
_REQUIRED = ("subject", "site", "lesion_voxels")


# ---------------------------------------------------------------------------------------------- bins
def bin_labels(edges: Sequence[float]) -> list[str]:
    """Labels of the right-closed bins defined by ``edges`` (last bin open): ``['(0, 5000]', ...]``."""
    e = [_fmt(x) for x in edges]
    return [f"({a}, {b}]" for a, b in zip(e[:-1], e[1:])] + [f"({e[-1]}, inf)"]


def assign_bins(values: np.ndarray | pd.Series, edges: Sequence[float]) -> np.ndarray:
    """Index of the right-closed bin of each value: bin i is (edges[i], edges[i+1]], the last is open.

    Values equal to ``edges[0]`` (e.g. an empty mask, volume 0) go to the first bin; values below it
    raise ValueError.
    """
    edges = check_edges(edges)
    v = np.asarray(values, dtype=float)
    if np.any(v < edges[0]) or not np.isfinite(v).all():
        raise ValueError(f"values outside [{edges[0]}, inf): {v[(v < edges[0]) | ~np.isfinite(v)][:5]}")
    # side='left' on the upper edges makes each bin right-closed: v == edges[i+1] stays in bin i.
    return np.searchsorted(np.asarray(edges[1:], dtype=float), v, side="left")


def check_edges(edges: Sequence[float], name: str = "bin edges") -> list[float]:
    """Validate strictly increasing, finite edges (at least one)."""
    try:
        e = [float(x) for x in edges]
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a list of numbers, got {edges!r}") from None
    if not e or not all(math.isfinite(x) for x in e) or any(b <= a for a, b in zip(e[:-1], e[1:])):
        raise ConfigError(f"{name} must be finite and strictly increasing, got {list(edges)}")
    return e


def _fmt(x: float) -> str:
    return f"{int(x)}" if float(x).is_integer() else f"{x:g}"


# ------------------------------------------------------------------------------------------- volumes
def voxel_volume_mm3(spacing: Any) -> float:
    """Voxel volume from a ``spacing_mm`` cell: ``1``, ``"2.0"``, ``"1x1x1"``, ``"(1.0, 1.0, 1.0)"``."""
    return float(np.prod(parse_spacing(spacing)))


def parse_spacing(spacing: Any) -> tuple[float, float, float]:
    """``spacing_mm`` cell -> (sx, sy, sz) in mm (one number means isotropic; empty/NaN means 1 mm)."""
    if spacing is None or (isinstance(spacing, float) and math.isnan(spacing)):
        return (1.0, 1.0, 1.0)
    if isinstance(spacing, (int, float, np.integer, np.floating)):
        s = float(spacing)
        return (s, s, s)
    nums = [float(x) for x in re.findall(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", str(spacing))]
    if len(nums) == 1:
        nums = nums * 3
    if len(nums) != 3 or any(n <= 0 for n in nums):
        raise ValueError(f"cannot parse voxel spacing {spacing!r}")
    return (nums[0], nums[1], nums[2])


def lesion_volume_mm3(df: pd.DataFrame, source: str = "subjects.csv") -> np.ndarray:
    """Lesion volume in mm³: ``lesion_volume_mm3`` if present, else ``lesion_voxels`` x voxel volume
    (from ``spacing_mm`` if present, else 1 mm³)."""
    if "lesion_volume_mm3" in df.columns and df["lesion_volume_mm3"].notna().all():
        vol = pd.to_numeric(df["lesion_volume_mm3"], errors="coerce").to_numpy(float)
    else:
        vox = pd.to_numeric(df["lesion_voxels"], errors="coerce").to_numpy(float)
        if "spacing_mm" in df.columns:
            try:
                vv = np.array([voxel_volume_mm3(s) for s in df["spacing_mm"]], dtype=float)
            except ValueError as exc:
                raise StageInputError(f"{source}: {exc}") from None
        else:
            vv = np.ones(len(df))
        vol = vox * vv
    bad = ~np.isfinite(vol) | (vol < 0)
    if bad.any():
        names = ", ".join(df.loc[bad, "subject"].astype(str).head(5))
        raise StageInputError(f"{source}: missing or negative lesion volume for {int(bad.sum())} subject(s): {names}")
    return vol


# ------------------------------------------------------------------------------------------ strata
def merge_sparse_bins(counts: Sequence[int], min_size: int) -> list[int]:
    """Group ordered bins so every group has >= ``min_size`` members: returns a group id per bin.

    Repeatedly merges the smallest under-filled group with its smaller neighbour (ties: the lower one),
    so neighbouring volumes are pooled; a single remaining group is returned even if still small.
    Bins with zero members are kept in the group of a neighbour (they never matter for splitting).
    """
    groups = [[i] for i in range(len(counts))]
    size = [int(c) for c in counts]
    while len(groups) > 1:
        small = [g for g in range(len(groups)) if size[g] < min_size]
        if not small:
            break
        g = min(small, key=lambda j: (size[j], j))
        if g == 0:
            n = 1
        elif g == len(groups) - 1:
            n = g - 1
        else:
            n = g - 1 if size[g - 1] <= size[g + 1] else g + 1
        a, b = min(g, n), max(g, n)
        groups[a] = groups[a] + groups[b]
        size[a] += size[b]
        del groups[b], size[b]
    out = [0] * len(counts)
    for gid, members in enumerate(groups):
        for i in members:
            out[i] = gid
    return out


def make_strata(bins: np.ndarray, labels: Sequence[str], sites: Sequence[str] | None, min_size: int) -> np.ndarray:
    """Stratum label per subject: the (merged) volume bin, optionally x site with sparse sites pooled."""
    bins = np.asarray(bins)
    counts = np.bincount(bins, minlength=len(labels))
    group = merge_sparse_bins(counts, min_size)
    names = {}
    for gid in set(group):
        members = [labels[i] for i in range(len(labels)) if group[i] == gid and counts[i] > 0]
        names[gid] = "+".join(members) if members else labels[0]
    vol_stratum = np.array([names[group[b]] for b in bins], dtype=object)
    if sites is None:
        return vol_stratum
    sites = np.asarray(sites, dtype=object)
    strata = vol_stratum.copy()
    for vs in pd.unique(vol_stratum):
        idx = np.flatnonzero(vol_stratum == vs)
        site_counts = pd.Series(sites[idx]).value_counts()
        big = sorted(s for s, c in site_counts.items() if c >= min_size)
        pooled = [i for i in idx if sites[i] not in big]
        for i in idx:
            strata[i] = f"{vs}|{sites[i]}" if sites[i] in big else f"{vs}|other-sites"
        if pooled and len(pooled) < min_size:
            if big:  # too few to form a stratum of their own: join the smallest large site
                target = min(big, key=lambda s: (site_counts[s], s))
                for i in pooled:
                    strata[i] = f"{vs}|{target}"
            else:
                for i in pooled:
                    strata[i] = vs
    return strata


# ------------------------------------------------------------------------------------------- split
def split_subjects(
    subjects_df: pd.DataFrame,
    holdout_fraction: float = 0.2,
    bin_edges: Sequence[float] = tuple(DEFAULTS["volume_bin_edges"]),
    seed: int = 42,
    stratify_site: bool = False,
    min_stratum_size: int = 5,
    source: str = "subjects.csv",
) -> pd.DataFrame:
    """Stratified, seeded train / hold-out split.

    Returns one row per subject, sorted by subject, with columns ``subject, site, lesion_voxels,
    volume_bin, set`` (``set`` is ``train`` or ``holdout``) plus the ``stratum`` actually used and the
    ``lesion_volume_mm3`` the bins were taken from (the caller writes only :data:`SPLIT_COLUMNS`).
    """
    missing = [c for c in _REQUIRED if c not in subjects_df.columns]
    if missing:
        raise StageInputError(f"{source}: missing column(s) {', '.join(missing)}")
    if not 0.0 < float(holdout_fraction) < 1.0:
        raise ConfigError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    df = subjects_df.copy()
    df["subject"] = df["subject"].astype(str)
    dup = df["subject"][df["subject"].duplicated()]
    if len(dup):
        raise StageInputError(f"{source}: duplicate subject(s) {', '.join(dup.head(5))}")
    if len(df) < 2:
        raise StageInputError(f"{source}: need at least 2 subjects to split, got {len(df)}")
    df["site"] = df["site"].fillna("unknown").astype(str)
    vox = pd.to_numeric(df["lesion_voxels"], errors="coerce")
    if vox.isna().any() or (vox < 0).any():
        bad = df.loc[vox.isna() | (vox < 0), "subject"].head(5)
        raise StageInputError(f"{source}: invalid lesion_voxels for subject(s) {', '.join(bad)}")
    df["lesion_voxels"] = vox.astype(np.int64)
    edges = check_edges(bin_edges, "volume_bin_edges")
    # Sorting first makes the result independent of the input row order.
    df = df.sort_values("subject", kind="stable").reset_index(drop=True)
    volume = lesion_volume_mm3(df, source)
    if np.any(volume < edges[0]):
        raise ConfigError(f"volume_bin_edges start at {edges[0]} but some lesion volumes are smaller")
    labels = bin_labels(edges)
    bins = assign_bins(volume, edges)
    df["volume_bin"] = [labels[b] for b in bins]
    df["lesion_volume_mm3"] = volume
    min_size = max(2, int(min_stratum_size))
    df["stratum"] = make_strata(bins, labels, df["site"].to_numpy() if stratify_site else None, min_size)
    n_strata = df["stratum"].nunique()
    n_hold = math.ceil(holdout_fraction * len(df))
    if n_strata > min(n_hold, len(df) - n_hold):
        # Too many strata for the hold-out size (tiny data): stratify on merged volume bins only,
        # and fall back to a plain seeded shuffle if even that cannot be honoured.
        df["stratum"] = make_strata(bins, labels, None, max(min_size, math.ceil(1 / holdout_fraction)))
        if df["stratum"].nunique() > min(n_hold, len(df) - n_hold):
            df["stratum"] = "all"
        log.warning("too few subjects for %d strata; using %d", n_strata, df["stratum"].nunique())
    _, hold_idx = train_test_split(
        np.arange(len(df)), test_size=n_hold, random_state=int(seed), shuffle=True,
        stratify=df["stratum"].to_numpy() if df["stratum"].nunique() > 1 else None,
    )
    df["set"] = "train"
    df.loc[np.sort(hold_idx), "set"] = "holdout"
    return df[SPLIT_COLUMNS + ["stratum", "lesion_volume_mm3"]]


def _set_volumes(split_df: pd.DataFrame, set_name: str) -> np.ndarray:
    """Lesion volumes (mm³; ``lesion_voxels`` when the frame has no ``lesion_volume_mm3``) of one set."""
    col = "lesion_volume_mm3" if "lesion_volume_mm3" in split_df.columns else "lesion_voxels"
    return split_df.loc[split_df["set"] == set_name, col].to_numpy(float)


def split_stats(split_df: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """Two-sample tests of lesion volume (train vs hold-out) and per-bin counts / fractions per set.

    Rows with ``row = 'test'`` hold a test's statistic and p-value; rows with ``row = 'bin'`` hold the
    counts and fractions of one volume bin (``name`` = bin label, ``all`` = totals); rows with
    ``row = 'stratum'`` the same for each stratum actually used (after merging sparse ones).
    """
    tr, ho = _set_volumes(split_df, "train"), _set_volumes(split_df, "holdout")
    rows: list[dict[str, Any]] = []
    ks = stats.ks_2samp(tr, ho)
    mw = stats.mannwhitneyu(tr, ho, alternative="two-sided")
    rows.append({"row": "test", "name": "kolmogorov_smirnov", "statistic": ks.statistic, "p_value": ks.pvalue})
    rows.append({"row": "test", "name": "mann_whitney_u", "statistic": mw.statistic, "p_value": mw.pvalue})
    n_tr, n_ho = max(len(tr), 1), max(len(ho), 1)
    for label in list(labels) + ["all"]:
        sel = split_df if label == "all" else split_df[split_df["volume_bin"] == label]
        c_tr = int((sel["set"] == "train").sum())
        c_ho = int((sel["set"] == "holdout").sum())
        rows.append({
            "row": "bin", "name": label, "train_count": c_tr, "holdout_count": c_ho,
            "train_fraction": c_tr / n_tr, "holdout_fraction": c_ho / n_ho,
            "holdout_share": c_ho / (c_tr + c_ho) if c_tr + c_ho else np.nan,
        })
    if "stratum" in split_df.columns:  # the strata actually used, after merging sparse ones
        for name, g in split_df.groupby("stratum", sort=True):
            c_tr, c_ho = int((g["set"] == "train").sum()), int((g["set"] == "holdout").sum())
            rows.append({"row": "stratum", "name": name, "train_count": c_tr, "holdout_count": c_ho,
                         "train_fraction": c_tr / n_tr, "holdout_fraction": c_ho / n_ho,
                         "holdout_share": c_ho / (c_tr + c_ho)})
    cols = ["row", "name", "statistic", "p_value", "train_count", "holdout_count",
            "train_fraction", "holdout_fraction", "holdout_share"]
    out = pd.DataFrame(rows).reindex(columns=cols)
    for c in ("train_count", "holdout_count"):
        out[c] = out[c].astype("Int64")
    return out


def plot_split(split_df: pd.DataFrame, stats_df: pd.DataFrame, labels: Sequence[str], path: Path) -> Path:
    """``split_distribution.png``: per-bin counts (bars) and log-volume violins + strip, with the tests."""
    from raxnet.plotting import plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.4, 1]})
    bins = stats_df[(stats_df["row"] == "bin") & (stats_df["name"] != "all")]
    x = np.arange(len(bins))
    w = 0.4
    for off, s, colour in ((-w / 2, "train", "tab:blue"), (w / 2, "holdout", "tab:orange")):
        counts = bins[f"{s}_count"].astype(int).to_numpy()
        bars = ax0.bar(x + off, counts, w, label=f"{s} (n={int((split_df['set'] == s).sum())})", color=colour)
        for rect, frac in zip(bars, bins[f"{s}_fraction"]):
            ax0.annotate(f"{100 * frac:.0f}%", (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                         ha="center", va="bottom", fontsize=7)
    ax0.set_xticks(x, list(labels), rotation=25, ha="right")
    ax0.set_xlabel("lesion volume bin (mm³)")
    ax0.set_ylabel("subjects")
    ax0.set_title("Subjects per lesion-volume bin")
    ax0.legend()

    data, names = [], []
    for s in ("train", "holdout"):
        v = _set_volumes(split_df, s)
        data.append(np.log10(np.maximum(v, 1.0)))
        names.append(s)
    nonempty = [i for i, d in enumerate(data) if len(d) > 1]
    if nonempty:
        parts = ax1.violinplot([data[i] for i in nonempty], positions=[i + 1 for i in nonempty], showmedians=True)
        for body in parts["bodies"]:
            body.set_alpha(0.35)
    rng = np.random.default_rng(0)  # jitter only; not part of any result
    for i, d in enumerate(data):
        ax1.scatter(i + 1 + rng.uniform(-0.08, 0.08, len(d)), d, s=6, alpha=0.6, color="k")
    ax1.set_xticks([1, 2], names)
    mm3 = "lesion_volume_mm3" in split_df.columns
    ax1.set_ylabel(f"log10 lesion volume ({'mm³' if mm3 else 'voxels'})")
    ax1.set_xlabel("set")
    t = stats_df[stats_df["row"] == "test"].set_index("name")
    ax1.set_title("Lesion volume per set (log scale)")
    ax1.text(
        0.5, 0.02, f"KS D={t.loc['kolmogorov_smirnov', 'statistic']:.3f}, p={t.loc['kolmogorov_smirnov', 'p_value']:.3g}\n"
        f"Mann-Whitney U={t.loc['mann_whitney_u', 'statistic']:.0f}, p={t.loc['mann_whitney_u', 'p_value']:.3g}",
        transform=ax1.transAxes, ha="center", va="bottom", fontsize=8,
        bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85},
    )
    fig.suptitle("Train / hold-out split: lesion-volume distribution")
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------- stage
def read_subjects(path: Path) -> pd.DataFrame:
    """Read and check stage 01's ``subjects.csv``; a missing file, column or bad value raises
    StageInputError naming it."""
    from raxnet.tables import SUBJECTS, read_table

    return read_table(path, SUBJECTS, columns=_REQUIRED)


@stage_run("split")
def run(cfg: dict[str, Any], run_cfg: dict[str, Any]) -> dict[str, Any]:
    """Stage 02: read ``01_dataset/subjects.csv``, write ``02_data_splitting/`` (split, stats, figure)."""
    rec = record.begin("split", cfg, run_cfg)
    cfg, run_cfg = rec.cfg, rec.run
    opts = section(cfg, "split", DEFAULTS)
    work = Path(run_cfg["work_dir"])
    src = stage_dir(work, "dataset") / "subjects.csv"
    subjects = read_subjects(src)
    edges = check_edges(opts["volume_bin_edges"], "split.volume_bin_edges")
    split = split_subjects(
        subjects, opts["holdout_fraction"], edges, int(run_cfg["seed"]), bool(opts["stratify_site"]),
        int(opts["min_stratum_size"]), source=str(src),
    )
    out = stage_dir(work, "split", create=True)
    labels = bin_labels(edges)
    st = split_stats(split, labels)
    save_csv(split[SPLIT_COLUMNS], out / "split.csv")
    save_csv(st, out / "split_stats.csv")
    fig = plot_split(split, st, labels, out / "split_distribution.png")
    rec.finish([out / "split.csv", out / "split_stats.csv"])
    n_train = int((split["set"] == "train").sum())
    n_hold = len(split) - n_train
    t = st[st["row"] == "test"].set_index("name")["p_value"]
    log.info("split %d subjects: %d train, %d hold-out (%d strata); KS p=%.3g, MWU p=%.3g",
             len(split), n_train, n_hold, split["stratum"].nunique(), t["kolmogorov_smirnov"], t["mann_whitney_u"])
    return {
        "split_csv": str(out / "split.csv"), "stats_csv": str(out / "split_stats.csv"), "figure": str(fig),
        "n_train": n_train, "n_holdout": n_hold, "n_strata": int(split["stratum"].nunique()),
        "ks_p": float(t["kolmogorov_smirnov"]), "mwu_p": float(t["mann_whitney_u"]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """CLI of stage 02 (``02_data_splitting/split_subjects.py``)."""
    parser = stage_parser(
        "Stage 02: seeded train / hold-out split stratified by lesion-volume bin (optionally x site).\n"
        "Reads <work>/01_dataset/subjects.csv; writes <work>/02_data_splitting/split.csv, split_stats.csv\n"
        "and split_distribution.png."
    )
    parser.add_argument("--holdout-fraction", type=float, help="fraction of subjects held out (default 0.2)")
    parser.add_argument("--stratify-site", action=argparse.BooleanOptionalAction, default=None,
                        help="also balance acquisition sites (strata = volume bin x site, sparse ones merged)")
    args = parser.parse_args(argv)
    cfg, run_cfg = resolve(args)
    cfg = with_flags(cfg, "split", holdout_fraction=args.holdout_fraction, stratify_site=args.stratify_site)
    summary = run(cfg, run_cfg)
    print(f"{summary['n_train']} train / {summary['n_holdout']} hold-out -> {summary['split_csv']}")
    return 0
