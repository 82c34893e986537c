"""Stage-08 evaluation: who is scored, per-subject metric rows, summaries, tables and figures.

Reads the subjects to score from stages 01, 02 and 04 (:func:`load_subjects`), their ground truth
(:func:`load_truth`), existing prediction files (:func:`find_predictions`), builds one row per subject
and method with the columns of :data:`SUBJECT_METRIC_COLUMNS` (the one owner of ``subject_metrics.csv``'s
columns; the values come from :func:`raxnet.metrics.evaluate`), summarises them (:func:`summarise`) and
writes ``subject_metrics.csv``, ``summary.csv``, ``errors.csv`` and the figures (:func:`write_results`).
A subject whose input is missing or corrupt keeps its rows, with its error and NaN metrics.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from raxnet.config import stage_dir
from raxnet.errors import InputError
from raxnet.io import check_same_grid, read_mask, read_t1, save_csv, save_figure
from raxnet.metrics import METRIC_KEYS
from raxnet.log import get_logger
from raxnet.runs import read_subject_folds, resolve_data_path

log = get_logger(__name__)

#: Entries of :func:`raxnet.metrics.evaluate` that are sizes (voxels, lesion counts), not scores.
SIZE_KEYS: tuple[str, ...] = ("lesion_voxels", "pred_voxels", "truth_lesions", "pred_lesions")

#: Metrics summarised in ``summary.csv`` (mean, sd, median over subjects without error).
SUMMARY_METRICS: tuple[str, ...] = tuple(k for k in METRIC_KEYS if k not in SIZE_KEYS)

#: Set names in stage 08's outputs, in the order rows and tables list them, and how they are printed.
SET_ORDER: dict[str, int] = {"holdout": 0, "oof": 1, "all": 2}
SET_TITLES: dict[str, str] = {"holdout": "hold-out", "oof": "out-of-fold (train subjects)", "all": "all subjects"}

#: Columns of ``subject_metrics.csv`` (the first 13 are the stage contract; the rest are extras).
SUBJECT_METRIC_COLUMNS: tuple[str, ...] = (
    "subject", "set", "method", *SUMMARY_METRICS[:8], "lesion_voxels", "error",  # the contract
    *SUMMARY_METRICS[8:], "pred_voxels", "volume_bin", "truth_lesions", "pred_lesions", "plane_agreement",
)


@dataclass
class Subject:
    """One subject to score: its set, files, lesion size and outer fold.

    ``set``: ``holdout``; ``oof`` for a train subject scored out of fold (by the models of the fold that
    held it out, so it was never trained on); ``all`` when there is no split (evaluate-only).
    """

    subject: str
    set: str
    t1_path: Path | None
    mask_path: Path | None
    lesion_voxels: float
    volume_bin: str
    fold: int | None = None


def load_subjects(work: Path, data_root: Path, *, oof: bool, need_split: bool = True) -> list[Subject]:
    """Hold-out subjects (and, with ``oof``, train subjects with their fold, set ``oof``) in split.csv order.

    Without ``need_split`` and no split.csv, every subject of subjects.csv is returned with set "all".
    """
    from raxnet.tables import SPLIT, SUBJECT_FOLDS, SUBJECTS, check_subjects_agree, read_table

    subjects_path = stage_dir(work, "dataset") / "subjects.csv"
    subjects = read_table(subjects_path, SUBJECTS, columns=["subject", "t1_path", "mask_path"])
    subjects = subjects.set_index("subject")
    split_path = stage_dir(work, "split") / "split.csv"
    if split_path.is_file() or need_split:
        # A hold-out subject missing from subjects.csv is not refused here: it becomes a failed row.
        split = read_table(split_path, SPLIT, columns=["subject", "set"])
    else:
        split = pd.DataFrame({"subject": subjects.index, "set": "all"})
    sets = ["holdout"] + (["train"] if oof else [])
    if "all" in set(split["set"]):
        sets = ["all"]
    split = split[split["set"].isin(sets)]
    folds: dict[str, int] = {}
    if oof and (split["set"] == "train").any():
        f = read_subject_folds(work)
        check_subjects_agree(f["subject"], stage_dir(work, "folds") / "subject_folds.csv", SUBJECT_FOLDS,
                             split.loc[split["set"] == "train", "subject"], split_path, "train subjects")
        folds = dict(zip(f["subject"], f["fold"]))
    out = []
    for _, row in split.iterrows():
        name = str(row["subject"])
        info = subjects.loc[name] if name in subjects.index else None
        lesion = row.get("lesion_voxels", np.nan)
        if info is not None and not pd.notna(lesion):
            lesion = info.get("lesion_voxels", np.nan)
        out.append(
            Subject(
                subject=name,
                set="oof" if str(row["set"]) == "train" else str(row["set"]),
                t1_path=resolve_data_path(info["t1_path"], data_root) if info is not None else None,
                mask_path=resolve_data_path(info["mask_path"], data_root) if info is not None else None,
                lesion_voxels=float(lesion) if pd.notna(lesion) else float("nan"),
                volume_bin=str(row["volume_bin"]) if "volume_bin" in row and pd.notna(row["volume_bin"]) else "",
                fold=folds.get(name),
            )
        )
    return out


def load_truth(s: Subject) -> tuple[np.ndarray, np.ndarray, Any]:
    """T1 volume, truth mask and the T1 image (header); InputError on any problem."""
    if s.t1_path is None:
        raise InputError(f"{s.subject}: not listed in 01_dataset/subjects.csv (or no T1 path)")
    if s.mask_path is None:
        raise InputError(f"{s.subject}: no ground-truth mask listed in 01_dataset/subjects.csv")
    t1, img = read_t1(s.t1_path)
    truth, mask_img = read_mask(s.mask_path)
    check_same_grid(img, mask_img, s.t1_path, s.mask_path)
    return t1, truth, img


def subject_row(s: Subject, method: str, result: Mapping[str, Any] | None, error: str = "") -> dict[str, Any]:
    """One ``subject_metrics.csv`` row: ``result`` from :func:`raxnet.metrics.evaluate`, or NaN and ``error``."""
    row: dict[str, Any] = {"subject": s.subject, "set": s.set, "method": method}
    for key in SUBJECT_METRIC_COLUMNS[3:]:
        row[key] = np.nan
    row["lesion_voxels"] = s.lesion_voxels
    row["volume_bin"] = s.volume_bin
    if result is not None:
        for key, value in result.items():
            if key in row:
                row[key] = value
    row["error"] = error
    return row


def record_failure(s: Subject, exc: Exception, methods: Sequence[str], rows: list[dict[str, Any]],
                   errors: list[dict[str, str]]) -> None:
    """Log a subject's error, list it in ``errors`` and give each of ``methods`` an error row."""
    log.error("%s: %s", s.subject, exc)
    errors.append({"subject": s.subject, "set": s.set, "error": str(exc)})
    rows += [subject_row(s, m, None, str(exc)) for m in methods]


def summarise(df: pd.DataFrame, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Per set and method: n, n_failed, mean/sd/median of each metric over subjects without error.

    ``hd95_mm`` statistics use finite values only; ``hd95_mm_n_undefined`` counts the successful
    subjects whose HD95 is undefined (exactly one of prediction / truth empty).
    """
    rows = []
    order = list(methods) if methods else list(dict.fromkeys(df["method"]))
    for set_name in dict.fromkeys(df["set"]):
        for method in order:
            g = df[(df["set"] == set_name) & (df["method"] == method)]
            if g.empty:
                continue
            ok = g[g["error"].fillna("").astype(str) == ""]
            row: dict[str, Any] = {"set": set_name, "method": method, "n": len(g), "n_failed": len(g) - len(ok)}
            for metric in SUMMARY_METRICS:
                v = pd.to_numeric(ok[metric], errors="coerce").to_numpy(dtype=float)
                finite = v[np.isfinite(v)]
                row[f"{metric}_mean"] = float(finite.mean()) if finite.size else np.nan
                row[f"{metric}_sd"] = float(finite.std(ddof=1)) if finite.size > 1 else np.nan
                row[f"{metric}_median"] = float(np.median(finite)) if finite.size else np.nan
                if metric == "hd95_mm":
                    row["hd95_mm_n_undefined"] = int(v.size - finite.size)
            rows.append(row)
    return pd.DataFrame(rows)


def format_table(summary: pd.DataFrame) -> str:
    """Compact text table: method x (Dice mean ± sd, median, lesion F1, HD95)."""
    lines = []
    for set_name, g in summary.groupby("set", sort=False):
        lines.append(f"[{SET_TITLES.get(set_name, set_name)}]")
        lines.append(f"{'method':<16}{'n':>5}{'fail':>6}{'Dice mean ± sd':>18}{'median':>9}{'lesF1':>8}{'HD95 mm':>10}{'HD95 undef':>12}")
        for _, r in g.iterrows():
            f = lambda x: "nan" if not np.isfinite(x) else f"{x:.3f}"  # noqa: E731
            sd = "" if not np.isfinite(r["dice_sd"]) else f" ± {r['dice_sd']:.3f}"
            hd = "nan" if not np.isfinite(r["hd95_mm_mean"]) else f"{r['hd95_mm_mean']:.1f}"
            lines.append(
                f"{r['method']:<16}{r['n']:>5}{r['n_failed']:>6}{f(r['dice_mean']) + sd:>18}"
                f"{f(r['dice_median']):>9}{f(r['lesion_f1_mean']):>8}{hd:>10}{r['hd95_mm_n_undefined']:>12}"
            )
    return "\n".join(lines)


def volume_bins(df: pd.DataFrame) -> pd.Series:
    """Volume bin per row: split.csv's ``volume_bin`` if present, else lesion-volume quartiles."""
    bins = df["volume_bin"].fillna("").astype(str)
    if (bins != "").all():
        return bins
    vox = pd.to_numeric(df["lesion_voxels"], errors="coerce")
    subj = df.assign(v=vox).drop_duplicates("subject").set_index("subject")["v"].dropna()
    if subj.empty:
        return pd.Series(["all"] * len(df), index=df.index)
    q = pd.qcut(subj, q=min(4, subj.nunique()), duplicates="drop")
    labels = {s: f"{int(iv.left) + 1}-{int(iv.right)} vox" for s, iv in q.items()}
    return df["subject"].map(labels).fillna("unknown")


def plot_dice_boxplot(df: pd.DataFrame, methods: Sequence[str], path: Path) -> Path:
    """Box plot of per-subject 3D Dice per method, one panel per set (failed subjects left out)."""
    from raxnet.plotting import plt

    sets = list(dict.fromkeys(df["set"]))
    fig, axes = plt.subplots(len(sets), 1, figsize=(max(6.0, 0.75 * len(methods) + 2.5), 4.6 * len(sets)),
                             squeeze=False)
    for ax, set_name in zip(axes[:, 0], sets):
        g = df[(df["set"] == set_name) & (df["error"].fillna("") == "")]
        data = [pd.to_numeric(g[g["method"] == m]["dice"], errors="coerce").dropna().to_numpy() for m in methods]
        ax.boxplot(data, showmeans=True, widths=0.6)
        ax.set_xticks(range(1, len(methods) + 1), list(methods), rotation=30, ha="right")
        n_subj = g["subject"].nunique()
        n_fail = df[(df["set"] == set_name)]["subject"].nunique() - n_subj
        ax.set_title(f"3D Dice per subject — {SET_TITLES.get(set_name, set_name)} "
                     f"(n={n_subj} scored, {n_fail} failed and not shown)")
        ax.set_xlabel("method")
        ax.set_ylabel("3D Dice")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_dice_by_volume_bin(df: pd.DataFrame, methods: Sequence[str], path: Path) -> Path:
    """Mean 3D Dice (± standard error) per lesion-volume bin, one line per method, one panel per set."""
    from raxnet.plotting import plt

    df = df.assign(_bin=volume_bins(df))
    # split.csv's bins are lesion volumes in mm³; the quartile fallback is in voxels and says so per label
    unit = "mm³" if (df["volume_bin"].fillna("").astype(str) != "").all() else "voxels"
    sets = list(dict.fromkeys(df["set"]))
    fig, axes = plt.subplots(len(sets), 1, figsize=(8.0, 4.8 * len(sets)), squeeze=False)
    for ax, set_name in zip(axes[:, 0], sets):
        g = df[(df["set"] == set_name) & (df["error"].fillna("") == "")]
        if g.empty:
            ax.set_title(f"{SET_TITLES.get(set_name, set_name)}: no subject scored")
            continue
        vox = pd.to_numeric(g["lesion_voxels"], errors="coerce")
        order = list(g.assign(v=vox).groupby("_bin")["v"].median().sort_values().index)
        x = np.arange(len(order))
        for i, m in enumerate(methods):
            gm = g[g["method"] == m]
            stats = gm.groupby("_bin")["dice"].agg(["mean", "std", "count"]).reindex(order)
            se = (stats["std"] / np.sqrt(stats["count"])).fillna(0.0)
            offset = (i - (len(methods) - 1) / 2) * min(0.04, 0.4 / len(methods))  # dodge overlapping points
            ax.errorbar(x + offset, stats["mean"], yerr=se, marker="o", capsize=3, label=m)
        counts = g.drop_duplicates("subject").groupby("_bin").size().reindex(order).fillna(0).astype(int)
        ax.set_xticks(x, [f"{b}\n(n={counts[b]})" for b in order])
        ax.set_xlabel(f"lesion-volume bin ({unit}), smallest → largest")
        ax.set_ylabel("mean 3D Dice (± s.e.)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"3D Dice by lesion volume — {SET_TITLES.get(set_name, set_name)}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return save_figure(fig, path)


_SEP = "_-."


def find_predictions(pred_dir: Path, subjects: Sequence[str]) -> dict[str, dict[str, Path]]:
    """``{subject: {method: path}}`` for ``<subject>.nii.gz`` (method "prediction") and
    ``<subject><sep><method>.nii.gz`` files (sep one of ``_ - .``) in ``pred_dir``.

    The longest matching subject name wins, so ``sub-1`` never claims ``sub-10_mean.nii.gz``.
    """
    by_len = sorted(subjects, key=len, reverse=True)
    found: dict[str, dict[str, Path]] = {s: {} for s in subjects}
    for path in sorted(Path(pred_dir).glob("*.nii*")):
        name = re.sub(r"\.nii(\.gz)?$", "", path.name)
        for s in by_len:
            if name == s:
                found[s]["prediction"] = path
                break
            if name.startswith(s) and name[len(s)] in _SEP:
                method = name[len(s) + 1 :] or "prediction"
                found[s][method] = path
                break
    return found




def qc_subject(out: Path, s: Subject, t1: np.ndarray, truth: np.ndarray, masks: Mapping[str, np.ndarray],
               results: Mapping[str, Mapping[str, Any]], spacing: Sequence[float], method: str) -> None:
    """``qc/<subject>_qc.png``: ``method``'s mask (or the first one) over the T1, with the truth."""
    from raxnet.qc import qc_overlay

    method = method if method in masks else next(iter(masks))
    title = f"{s.subject} ({s.set}) — {method}: Dice {results[method]['dice']:.3f}"
    qc_overlay(t1, masks[method], out / "qc" / f"{s.subject}_qc.png", truth=truth, title=title, spacing=spacing)


def write_results(out: Path, rows: list[dict[str, Any]], errors: list[dict[str, str]],
                  methods: Sequence[str], skipped: Sequence[Mapping[str, str]] = ()) -> dict[str, Any]:
    """Write ``subject_metrics.csv``, ``summary.csv``, ``errors.csv``, ``skipped.csv`` and the figures.

    ``errors`` are subjects that failed (bad input): they have error rows in ``subject_metrics.csv`` and count
    as failed. ``skipped`` are subjects that could not be scored by design (out of fold, but the fold's models
    were not trained): listed in ``skipped.csv`` (``subject, set, reason``) only, and neither scored nor failed.

    Rows are sorted hold-out first, then by subject, then by method as configured, so that re-runs give
    byte-identical CSVs whatever order the subjects were processed in. Returns the paths, the summary
    table (text and rows) and subject counts.
    """
    df = pd.DataFrame(rows, columns=list(SUBJECT_METRIC_COLUMNS))
    set_rank = df["set"].map(SET_ORDER).fillna(len(SET_ORDER))
    method_rank = df["method"].map({m: i for i, m in enumerate(methods)}).fillna(len(methods))
    df = df.assign(_s=set_rank, _m=method_rank).sort_values(["_s", "subject", "_m"], kind="stable")
    df = df.drop(columns=["_s", "_m"]).reset_index(drop=True)
    metrics_csv = save_csv(df, out / "subject_metrics.csv", float_format="%.6g")
    summary = summarise(df, methods)
    summary_csv = save_csv(summary, out / "summary.csv", float_format="%.6g")
    err_df = pd.DataFrame(errors, columns=["subject", "set", "error"]).drop_duplicates()
    save_csv(err_df, out / "errors.csv")
    skip_df = pd.DataFrame(list(skipped), columns=["subject", "set", "reason"]).drop_duplicates()
    save_csv(skip_df, out / "skipped.csv")
    figures = {}
    if df["error"].eq("").any():
        figures["dice_boxplot"] = str(plot_dice_boxplot(df, methods, out / "dice_boxplot.png"))
        figures["dice_by_volume_bin"] = str(plot_dice_by_volume_bin(df, methods, out / "dice_by_volume_bin.png"))
    n_failed = int(df.loc[df["error"] != "", "subject"].nunique())
    return {
        "out_dir": str(out),
        "subject_metrics": str(metrics_csv),
        "summary": str(summary_csv),
        "errors": str(out / "errors.csv"),
        "figures": figures,
        "table": format_table(summary),
        "summary_rows": summary.to_dict(orient="records"),
        "n_subjects": int(df["subject"].nunique()),
        "n_failed": n_failed,
        "n_skipped": int(skip_df["subject"].nunique()),
    }
