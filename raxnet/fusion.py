"""Stage 08: three-plane fusion of the 2D plane models into 3D masks, and honest 3D evaluation.

Every hold-out subject of ``02_data_splitting/split.csv`` is predicted by one model per plane (the fold
with the lowest *inner-validation* loss in its ``run.json`` — never chosen by a reported metric), or by
the mean of all folds per plane (``ensemble``), optionally with left-right flip TTA. The three
probability volumes are fused several ways and all are scored side by side:

``axial``, ``sagittal``, ``coronal``
    one plane alone, probability ``>= threshold``.
``mean``
    mean of the three probabilities ``>= threshold`` (the original RAX-Net fusion).
``vote``
    majority vote of the three thresholded planes (at least 2 of 3).
``weighted``
    weighted mean probability ``>= threshold``; weights are each plane's mean cross-validated 3D Dice
    read from ``07_train/<model>/<plane>/fold_<k>/metrics.csv`` (see :func:`plane_weights`), normalised
    to sum 1; equal weights (logged) when those are unavailable.
``<fused>_clean``
    with ``min_size > 0``: the fused methods (mean, vote, weighted) again after removing connected
    components smaller than ``min_size`` voxels (``connectivity`` neighbourhood). Single planes are
    never cleaned.

``oof`` adds out-of-fold fusion on the train subjects: a subject of fold ``k`` is predicted by the
three ``fold_<k>`` models, which never saw it (folds without all three models are skipped, logged, and
listed in ``errors.csv``). Caveat: the ``weighted`` weights come from those same out-of-fold scores, so
on the train set ``weighted`` is very slightly optimistic; on the hold-out it is not.

``evaluate_only`` scores existing masks (``<subject>_<method>.nii.gz`` or ``<subject>.nii.gz``) instead,
writing the same tables under ``08_fusion/evaluate_<folder name>/``.

A subject whose input is missing or corrupt appears in ``subject_metrics.csv`` with its error and NaN
metrics, so every hold-out subject is accounted for. Metric semantics: :mod:`raxnet.metrics`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from raxnet import metrics as M
from raxnet.cli_common import resolve, stage_parser
from raxnet.config import override, section, stage_dir
from raxnet.errors import ConfigError, InputError, StageInputError
from raxnet.io import check_same_grid, read_mask, read_volume, save_csv, save_figure, save_json, save_nifti
from raxnet.log import get_logger
from raxnet.planes import PLANES, slice_shape

log = get_logger(__name__)

FUSED_METHODS: tuple[str, ...] = ("mean", "vote", "weighted")
ALL_METHODS: tuple[str, ...] = tuple(PLANES) + FUSED_METHODS

DEFAULTS: dict[str, Any] = {
    "model": "raxnet",  # run folder under 07_train/ (stage 07's run name: <model> or <model>-<loss>)
    "ensemble": False,  # mean of all folds per plane instead of the fold with the lowest inner-val loss
    "tta": False,  # left-right flip test-time augmentation (axial, coronal)
    "threshold": 0.5,  # probability >= threshold = lesion (planes, mean, weighted; per plane for vote)
    "min_size": 0,  # > 0: add <fused>_clean variants without components smaller than this (voxels)
    "connectivity": 6,  # 3D connectivity for lesion F1, lesion counts, HD95 surfaces, cleaning (6/18/26)
    "batch_size": 16,  # slices per prediction batch
    "methods": list(ALL_METHODS),  # scored side by side: axial, sagittal, coronal, mean, vote, weighted
    "oof": False,  # also fuse the train subjects out-of-fold (fold_<k> models for fold-k subjects)
    "save_probabilities": False,  # write probabilities/<subject>_<plane>.nii.gz (float32)
    "qc": True,  # write qc/<subject>_qc.png overlays
    "qc_method": "mean",  # which method's mask the QC overlay shows
    "evaluate_only": "",  # folder of existing masks to score instead of predicting ("" = off)
}


#: Columns of ``subject_metrics.csv`` (the first 13 are the stage contract; the rest are extras).
METRIC_COLUMNS: tuple[str, ...] = (
    "subject",
    "set",
    "method",
    "dice",
    "iou",
    "precision",
    "recall",
    "hd95_mm",
    "lesion_f1",
    "lesion_count_diff",
    "volume_diff_voxels",
    "lesion_voxels",
    "error",
    "volume_diff_mm3",
    "pred_voxels",
    "volume_bin",
)

#: Metrics summarised in ``summary.csv`` (mean, sd, median over subjects without error).
SUMMARY_METRICS: tuple[str, ...] = (
    "dice",
    "iou",
    "precision",
    "recall",
    "hd95_mm",
    "lesion_f1",
    "lesion_count_diff",
    "volume_diff_voxels",
    "volume_diff_mm3",
)


# --------------------------------------------------------------------------------------------------
# Pure fusion functions
# --------------------------------------------------------------------------------------------------


def _stack(probs: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> tuple[np.ndarray, list[Any]]:
    keys = list(probs) if isinstance(probs, Mapping) else list(range(len(probs)))
    if not keys:
        raise ValueError("no probability volumes to fuse")
    arrays = [np.asarray(probs[k]) for k in keys]  # type: ignore[index]
    # keep float64 input exact (a float32 cast can move 0.5 just below the threshold); ints -> float32
    dtype = np.result_type(np.float32, *arrays)
    arrays = [a.astype(dtype, copy=False) for a in arrays]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"probability volumes differ in shape: {[a.shape for a in arrays]}")
    return np.stack(arrays), keys


def fuse_mean(probs: Mapping[str, np.ndarray] | Sequence[np.ndarray], threshold: float = 0.5) -> np.ndarray:
    """uint8 mask where the mean probability of the planes is ``>= threshold``."""
    stack, _ = _stack(probs)
    # float64 so that e.g. (0.6 + 0.6 + 0.3) / 3 is not pushed below 0.5 by float32 rounding.
    return (stack.mean(axis=0, dtype=np.float64) >= threshold).astype(np.uint8)


def fuse_vote(probs: Mapping[str, np.ndarray] | Sequence[np.ndarray], threshold: float = 0.5) -> np.ndarray:
    """uint8 majority vote: more than half of the planes have probability ``>= threshold`` (2 of 3)."""
    stack, _ = _stack(probs)
    votes = (stack >= threshold).sum(axis=0)
    return (2 * votes > stack.shape[0]).astype(np.uint8)


def fuse_weighted(
    probs: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    weights: Mapping[str, float] | Sequence[float],
    threshold: float = 0.5,
) -> np.ndarray:
    """uint8 mask where the weighted mean probability is ``>= threshold``.

    ``weights`` are aligned with ``probs`` (by key for mappings, by position otherwise), must be
    non-negative with a positive sum, and are normalised here.
    """
    stack, keys = _stack(probs)
    if isinstance(weights, Mapping):
        if isinstance(probs, Mapping):
            missing = [k for k in keys if k not in weights]
            if missing:
                raise ValueError(f"no weight for {missing}")
            w = np.array([float(weights[k]) for k in keys])
        else:
            raise ValueError("weights given by name need probabilities given by name")
    else:
        w = np.asarray(list(weights), dtype=np.float64)
    if w.shape != (stack.shape[0],):
        raise ValueError(f"{w.size} weights for {stack.shape[0]} probability volumes")
    if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero, got {w.tolist()}")
    w = w / w.sum()
    fused = np.tensordot(w, stack.astype(np.float64), axes=1)
    return (fused >= threshold).astype(np.uint8)


def remove_small_components(mask: np.ndarray, min_size: int, connectivity: int = M.DEFAULT_CONNECTIVITY) -> np.ndarray:
    """uint8 copy of ``mask`` without connected components of fewer than ``min_size`` voxels."""
    m = np.asarray(mask) != 0
    if min_size <= 1 or not m.any():
        return m.astype(np.uint8)
    labels, n = M.label(m, connectivity)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels].astype(np.uint8)


def method_names(methods: Iterable[str], min_size: int) -> list[str]:
    """Validated method list, followed by ``<fused>_clean`` variants when ``min_size > 0``."""
    out: list[str] = []
    for m in methods:
        if m not in ALL_METHODS:
            raise ConfigError(f"unknown fusion method {m!r}; expected some of {', '.join(ALL_METHODS)}")
        if m not in out:
            out.append(m)
    if not out:
        raise ConfigError("fusion.methods is empty")
    if min_size > 0:
        out += [f"{m}_clean" for m in list(out) if m in FUSED_METHODS]
    return out


def fuse_all(
    probs: Mapping[str, np.ndarray],
    methods: Sequence[str],
    *,
    threshold: float = 0.5,
    weights: Mapping[str, float] | None = None,
    min_size: int = 0,
    connectivity: int = M.DEFAULT_CONNECTIVITY,
) -> dict[str, np.ndarray]:
    """Every requested mask (names from :func:`method_names`) from per-plane probability volumes."""
    out: dict[str, np.ndarray] = {}
    planes = {p: probs[p] for p in PLANES if p in probs}
    for m in methods:
        base = m[: -len("_clean")] if m.endswith("_clean") else m
        if base in out:
            mask = out[base]
        elif base in PLANES:
            mask = (np.asarray(probs[base]) >= threshold).astype(np.uint8)
        elif base == "mean":
            mask = fuse_mean(planes, threshold)
        elif base == "vote":
            mask = fuse_vote(planes, threshold)
        elif base == "weighted":
            mask = fuse_weighted(planes, weights or {p: 1.0 for p in planes}, threshold)
        else:
            raise ConfigError(f"unknown fusion method {m!r}")
        if m.endswith("_clean"):
            mask = remove_small_components(mask, min_size, connectivity)
        out[m] = mask
    return out


# --------------------------------------------------------------------------------------------------
# Trained plane models (stage 07 outputs)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoldModel:
    """One trained plane model: ``07_train/<model>/<plane>/fold_<fold>/model.keras``."""

    plane: str
    fold: int
    path: Path
    best_val_loss: float  # NaN when run.json is missing or lacks it


_FOLD_RE = re.compile(r"^fold_(\d+)$")


def find_plane_models(train_dir: Path, plane: str) -> list[FoldModel]:
    """All ``fold_<k>/model.keras`` of one plane, sorted by fold, with their inner-validation loss."""
    found = []
    plane_dir = Path(train_dir) / plane
    if not plane_dir.is_dir():
        return []
    for d in sorted(plane_dir.iterdir()):
        m = _FOLD_RE.match(d.name)
        if not m or not (d / "model.keras").is_file():
            continue
        loss = float("nan")
        run_json = d / "run.json"
        if run_json.is_file():
            try:
                value = json.loads(run_json.read_text()).get("best_val_loss")
                loss = float(value) if value is not None else float("nan")
            except (ValueError, TypeError, json.JSONDecodeError) as exc:
                log.warning("%s: unreadable (%s); fold not eligible for best-fold selection", run_json, exc)
        found.append(FoldModel(plane, int(m.group(1)), d / "model.keras", loss))
    return sorted(found, key=lambda f: f.fold)


def select_models(train_dir: Path, planes: Sequence[str], ensemble: bool) -> dict[str, list[FoldModel]]:
    """Models per plane: all folds (``ensemble``) or the fold with the lowest inner-validation loss.

    The choice uses only ``run.json``'s ``best_val_loss`` (the inner validation split of training),
    never the outer-fold metrics that are reported. Ties go to the lower fold number.
    """
    chosen: dict[str, list[FoldModel]] = {}
    for plane in planes:
        models = find_plane_models(train_dir, plane)
        if not models:
            raise StageInputError(f"{Path(train_dir) / plane}: no fold_<k>/model.keras found (run stage 07)")
        if ensemble:
            chosen[plane] = models
            continue
        eligible = [m for m in models if math.isfinite(m.best_val_loss)]
        if not eligible:
            raise StageInputError(
                f"{Path(train_dir) / plane}: no fold has a finite best_val_loss in run.json; "
                "cannot pick a model (use --ensemble to average all folds)"
            )
        chosen[plane] = [min(eligible, key=lambda m: (m.best_val_loss, m.fold))]
    return chosen


def read_fold_dice(path: Path) -> float | None:
    """Cross-validated 3D Dice of one fold from its ``metrics.csv``; None if absent or unusable.

    Accepted layouts, first match wins: a column ``dice_3d_mean`` (mean of its values); a column
    ``dice_3d`` (per-subject rows, averaged); a column ``dice`` together with a ``subject`` column
    (per-subject rows). Non-finite values are ignored.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path)
    except Exception as exc:  # empty or malformed CSV
        log.warning("%s: unreadable (%s)", path, exc)
        return None
    for col in ("dice_3d_mean", "dice_3d"):
        if col in df.columns:
            break
    else:
        col = "dice" if {"dice", "subject"} <= set(df.columns) else None
    if col is None:
        return None
    values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None


def plane_weights(train_dir: Path, planes: Sequence[str] = PLANES) -> tuple[dict[str, float], str]:
    """Normalised fusion weights per plane from cross-validation, and where they came from.

    Each plane's weight is the mean over its folds of :func:`read_fold_dice`. If any plane has no
    usable value, or all are zero, the weights are equal (``source`` says so).
    """
    raw: dict[str, float] = {}
    for plane in planes:
        values = [read_fold_dice(Path(train_dir) / plane / f"fold_{m.fold}" / "metrics.csv")
                  for m in find_plane_models(train_dir, plane)]
        values = [v for v in values if v is not None]
        if values:
            raw[plane] = float(np.mean(values))
    if len(raw) == len(planes) and sum(raw.values()) > 0:
        total = sum(raw.values())
        return {p: raw[p] / total for p in planes}, "cross-validation 3D Dice (metrics.csv)"
    missing = [p for p in planes if p not in raw]
    reason = f"no usable metrics.csv for {', '.join(missing)}" if missing else "all cross-validation Dice are 0"
    log.warning("weighted fusion: %s; using equal weights", reason)
    return {p: 1.0 / len(planes) for p in planes}, f"equal ({reason})"


class ModelCache:
    """Loads each ``.keras`` file once (TensorFlow graph building is the slow part)."""

    def __init__(self) -> None:
        self._models: dict[Path, Any] = {}

    def get(self, path: Path) -> Any:
        if path not in self._models:
            from raxnet.inference import load_model

            log.info("loading %s", path)
            try:
                self._models[path] = load_model(path)
            except Exception as exc:  # Keras raises many types for a truncated or foreign file
                raise StageInputError(f"{path}: cannot load model ({type(exc).__name__}: {exc})") from None
        return self._models[path]

    def keep_only(self, paths: Iterable[Path]) -> None:
        keep = set(paths)
        for p in list(self._models):
            if p not in keep:
                del self._models[p]


def predict_probabilities(
    t1: np.ndarray,
    models: Mapping[str, Sequence[FoldModel]],
    cache: ModelCache,
    *,
    batch_size: int = 16,
    tta: bool = False,
    source: str = "volume",
) -> dict[str, np.ndarray]:
    """Probability volume per plane (mean over that plane's models) of one raw T1 volume."""
    from raxnet.inference import model_slice_shape, predict_plane
    from raxnet.intensity import normalise

    volume = normalise(t1)
    out: dict[str, np.ndarray] = {}
    for plane, fold_models in models.items():
        acc = np.zeros(volume.shape, dtype=np.float32)
        for fm in fold_models:
            model = cache.get(fm.path)
            need, have = slice_shape(volume.shape, plane), model_slice_shape(model)
            if need[0] > have[0] or need[1] > have[1]:
                raise InputError(
                    f"{source}: {plane} slices {need} are larger than the input {have} of {fm.path}"
                )
            acc += predict_plane(model, volume, plane, batch_size=batch_size, flip_tta=tta)
        out[plane] = acc / len(fold_models)
    return out


# --------------------------------------------------------------------------------------------------
# Inputs from stages 01, 02, 04
# --------------------------------------------------------------------------------------------------


def _read_table(path: Path, required: Sequence[str], stage: str) -> pd.DataFrame:
    if not path.is_file():
        raise StageInputError(f"{path}: not found (run stage {stage} first)")
    try:
        df = pd.read_csv(path, dtype={"subject": str})
    except Exception as exc:
        raise StageInputError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise StageInputError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def _resolve_path(value: Any, data_root: Path) -> Path | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value) == "":
        return None
    p = Path(str(value))
    if p.is_absolute() or p.exists():
        return p
    return Path(data_root) / p


@dataclass
class Subject:
    subject: str
    set: str
    t1_path: Path | None
    mask_path: Path | None
    lesion_voxels: float
    volume_bin: str
    fold: int | None = None


def load_subjects(work: Path, data_root: Path, *, oof: bool, need_split: bool = True) -> list[Subject]:
    """Hold-out subjects (and, with ``oof``, train subjects with their fold) in split.csv order.

    Without ``need_split`` and no split.csv, every subject of subjects.csv is returned with set "all".
    """
    subjects = _read_table(stage_dir(work, "dataset") / "subjects.csv", ["subject", "t1_path", "mask_path"], "01")
    subjects = subjects.drop_duplicates("subject").set_index("subject")
    split_path = stage_dir(work, "split") / "split.csv"
    if split_path.is_file() or need_split:
        split = _read_table(split_path, ["subject", "set"], "02")
    else:
        split = pd.DataFrame({"subject": subjects.index, "set": "all"})
    sets = ["holdout"] + (["train"] if oof else [])
    if "all" in set(split["set"]):
        sets = ["all"]
    split = split[split["set"].isin(sets)]
    folds: dict[str, int] = {}
    if oof and (split["set"] == "train").any():
        f = _read_table(stage_dir(work, "folds") / "subject_folds.csv", ["subject", "fold"], "04")
        folds = {str(s): int(k) for s, k in zip(f["subject"], f["fold"])}
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
                set=str(row["set"]),
                t1_path=_resolve_path(info["t1_path"], data_root) if info is not None else None,
                mask_path=_resolve_path(info["mask_path"], data_root) if info is not None else None,
                lesion_voxels=float(lesion) if pd.notna(lesion) else float("nan"),
                volume_bin=str(row["volume_bin"]) if "volume_bin" in row and pd.notna(row["volume_bin"]) else "",
                fold=folds.get(name),
            )
        )
    return out


def _load_truth(s: Subject) -> tuple[np.ndarray, np.ndarray, Any]:
    """T1 volume, truth mask and the T1 image (header); InputError on any problem."""
    if s.t1_path is None:
        raise InputError(f"{s.subject}: not listed in 01_dataset/subjects.csv (or no T1 path)")
    if s.mask_path is None:
        raise InputError(f"{s.subject}: no ground-truth mask listed in 01_dataset/subjects.csv")
    t1, img = read_volume(s.t1_path)
    truth, mask_img = read_mask(s.mask_path)
    check_same_grid(img, mask_img, s.t1_path, s.mask_path)
    return t1, truth, img


# --------------------------------------------------------------------------------------------------
# Scoring, tables and figures
# --------------------------------------------------------------------------------------------------


def _row(s: Subject, method: str, result: Mapping[str, Any] | None, error: str = "") -> dict[str, Any]:
    row: dict[str, Any] = {"subject": s.subject, "set": s.set, "method": method}
    for key in METRIC_COLUMNS[3:]:
        row[key] = np.nan
    row["lesion_voxels"] = s.lesion_voxels
    row["volume_bin"] = s.volume_bin
    if result is not None:
        for key, value in result.items():
            if key in row:
                row[key] = value
    row["error"] = error
    return row


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
        lines.append(f"[{set_name}]")
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


def _volume_bins(df: pd.DataFrame) -> pd.Series:
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
        ax.set_title(f"3D Dice per subject — {set_name} (n={n_subj} scored, {n_fail} failed and not shown)")
        ax.set_xlabel("method")
        ax.set_ylabel("3D Dice")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_dice_by_volume_bin(df: pd.DataFrame, methods: Sequence[str], path: Path) -> Path:
    """Mean 3D Dice (± standard error) per lesion-volume bin, one line per method, one panel per set."""
    from raxnet.plotting import plt

    df = df.assign(_bin=_volume_bins(df))
    sets = list(dict.fromkeys(df["set"]))
    fig, axes = plt.subplots(len(sets), 1, figsize=(8.0, 4.8 * len(sets)), squeeze=False)
    for ax, set_name in zip(axes[:, 0], sets):
        g = df[(df["set"] == set_name) & (df["error"].fillna("") == "")]
        if g.empty:
            ax.set_title(f"{set_name}: no subject scored")
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
        ax.set_xlabel("lesion-volume bin (smallest → largest)")
        ax.set_ylabel("mean 3D Dice (± s.e.)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"3D Dice by lesion volume — {set_name}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return save_figure(fig, path)


def _qc(cfg_f: Mapping[str, Any], out: Path, s: Subject, t1: np.ndarray, truth: np.ndarray,
        masks: Mapping[str, np.ndarray], results: Mapping[str, Mapping[str, Any]], spacing: Sequence[float]) -> None:
    from raxnet.qc import qc_overlay

    method = cfg_f["qc_method"] if cfg_f["qc_method"] in masks else next(iter(masks))
    title = f"{s.subject} ({s.set}) — {method}: Dice {results[method]['dice']:.3f}"
    qc_overlay(t1, masks[method], out / "qc" / f"{s.subject}_qc.png", truth=truth, title=title, spacing=spacing)


def _finish(cfg_f: Mapping[str, Any], out: Path, rows: list[dict[str, Any]], errors: list[dict[str, str]],
            methods: Sequence[str], extra: dict[str, Any]) -> dict[str, Any]:
    df = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    # Stable, documented row order (hold-out first, then subject, then method as configured) so that
    # re-runs give byte-identical CSVs whatever order the subjects were processed in.
    set_rank = df["set"].map({"holdout": 0, "train": 1}).fillna(2)
    method_rank = df["method"].map({m: i for i, m in enumerate(methods)}).fillna(len(methods))
    df = df.assign(_s=set_rank, _m=method_rank).sort_values(["_s", "subject", "_m"], kind="stable")
    df = df.drop(columns=["_s", "_m"]).reset_index(drop=True)
    metrics_csv = save_csv(df, out / "subject_metrics.csv", float_format="%.6g")
    summary = summarise(df, methods)
    summary_csv = save_csv(summary, out / "summary.csv", float_format="%.6g")
    err_df = pd.DataFrame(errors, columns=["subject", "set", "error"]).drop_duplicates()
    save_csv(err_df, out / "errors.csv")
    figures = {}
    if df["error"].eq("").any():
        figures["dice_boxplot"] = str(plot_dice_boxplot(df, methods, out / "dice_boxplot.png"))
        figures["dice_by_volume_bin"] = str(plot_dice_by_volume_bin(df, methods, out / "dice_by_volume_bin.png"))
    table = format_table(summary)
    print(table)
    n_failed = int(df.loc[df["error"] != "", "subject"].nunique())
    log.info("08_fusion: %d subject(s) scored, %d failed -> %s", df["subject"].nunique() - n_failed, n_failed, out)
    return {
        "out_dir": str(out),
        "subject_metrics": str(metrics_csv),
        "summary": str(summary_csv),
        "errors": str(out / "errors.csv"),
        "figures": figures,
        "table": table,
        "summary_rows": summary.to_dict(orient="records"),
        "n_subjects": int(df["subject"].nunique()),
        "n_failed": n_failed,
        **extra,
    }


# --------------------------------------------------------------------------------------------------
# Stage entry points
# --------------------------------------------------------------------------------------------------


def _settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    f = section(cfg, "fusion", DEFAULTS)
    if not 0.0 < float(f["threshold"]) < 1.0:
        raise ConfigError(f"fusion.threshold must be in (0, 1), got {f['threshold']}")
    if f["connectivity"] not in (6, 18, 26):
        raise ConfigError(f"fusion.connectivity must be 6, 18 or 26, got {f['connectivity']}")
    if int(f["min_size"]) < 0 or int(f["batch_size"]) < 1:
        raise ConfigError("fusion.min_size must be >= 0 and fusion.batch_size >= 1")
    if isinstance(f["methods"], str):
        f["methods"] = [m.strip() for m in f["methods"].split(",") if m.strip()]
    return f


def run(cfg: Mapping[str, Any], run: Mapping[str, Any]) -> dict[str, Any]:
    """Fuse, write masks and score every hold-out (and, with ``oof``, train) subject; see module doc."""
    f = _settings(cfg)
    if f["evaluate_only"]:
        return evaluate_only(cfg, run, f["evaluate_only"])
    work, data_root = Path(run["work_dir"]), Path(run["data_root"])
    out = stage_dir(work, "fusion", create=True)
    methods = method_names(f["methods"], int(f["min_size"]))
    train_dir = stage_dir(work, "train") / f["model"]
    # fused methods need all three planes; otherwise only the planes asked for are predicted
    needed = list(PLANES) if any(m in FUSED_METHODS for m in methods) else [p for p in PLANES if p in methods]
    holdout_models = select_models(train_dir, needed, bool(f["ensemble"]))
    weights, weight_source = plane_weights(train_dir, needed) if "weighted" in methods else ({}, "unused")
    if weights:
        log.info("weighted fusion weights (%s): %s", weight_source,
                 ", ".join(f"{p} {w:.3f}" for p, w in weights.items()))
    subjects = load_subjects(work, data_root, oof=bool(f["oof"]))
    if not any(s.set == "holdout" for s in subjects):
        raise StageInputError(f"{stage_dir(work, 'split') / 'split.csv'}: no hold-out subject")

    # Out-of-fold: the fold_<k> models of all needed planes must exist.
    all_models = {p: {m.fold: m for m in find_plane_models(train_dir, p)} for p in needed}
    skipped_folds: dict[int, str] = {}
    rows: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    todo: list[tuple[Subject, dict[str, list[FoldModel]]]] = []
    for s in subjects:
        if s.set == "holdout":
            todo.append((s, holdout_models))
            continue
        if s.fold is None:
            log.warning("%s: train subject without a fold in subject_folds.csv; skipped", s.subject)
            errors.append({"subject": s.subject, "set": s.set, "error": "no fold in subject_folds.csv"})
            continue
        missing = [p for p in needed if s.fold not in all_models[p]]
        if missing:
            why = f"fold_{s.fold} model missing for {', '.join(missing)}"
            if s.fold not in skipped_folds:
                log.warning("out-of-fold: %s; its subjects are skipped", why)
            skipped_folds[s.fold] = why
            errors.append({"subject": s.subject, "set": s.set, "error": why})
            continue
        todo.append((s, {p: [all_models[p][s.fold]] for p in needed}))

    # hold-out first, then out-of-fold subjects grouped by fold, so each fold's models load once
    todo.sort(key=lambda item: (item[0].set != "holdout", item[0].fold or 0))
    cache = ModelCache()
    for s, models in tqdm(todo, desc="08 fusion", unit="subject"):
        cache.keep_only(m.path for ms in models.values() for m in ms)  # frees the previous fold's models
        try:
            t1, truth, img = _load_truth(s)
            spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
            probs = predict_probabilities(t1, models, cache, batch_size=int(f["batch_size"]),
                                          tta=bool(f["tta"]), source=str(s.t1_path))
        except InputError as exc:
            log.error("%s: %s", s.subject, exc)
            errors.append({"subject": s.subject, "set": s.set, "error": str(exc)})
            rows += [_row(s, m, None, str(exc)) for m in methods]
            continue
        s.lesion_voxels = float(truth.sum())
        masks = fuse_all(probs, methods, threshold=float(f["threshold"]), weights=weights,
                         min_size=int(f["min_size"]), connectivity=int(f["connectivity"]))
        results = {}
        for m, mask in masks.items():
            save_nifti(mask, img, out / "masks" / f"{s.subject}_{m}.nii.gz", dtype=np.uint8)
            results[m] = M.evaluate(mask, truth, spacing=spacing, connectivity=int(f["connectivity"]))
            rows.append(_row(s, m, results[m]))
        if f["save_probabilities"]:
            for p, prob in probs.items():
                save_nifti(prob, img, out / "probabilities" / f"{s.subject}_{p}.nii.gz", dtype=np.float32)
        if f["qc"]:
            _qc(f, out, s, t1, truth, masks, results, spacing)

    used = {p: [m.fold for m in ms] for p, ms in holdout_models.items()}
    info = {
        "model": f["model"],
        "selection": "ensemble of all folds" if f["ensemble"] else "lowest inner-validation loss (run.json best_val_loss)",
        "holdout_folds": used,
        "holdout_best_val_loss": {p: [m.best_val_loss for m in ms] for p, ms in holdout_models.items()},
        "tta": bool(f["tta"]),
        "threshold": float(f["threshold"]),
        "min_size": int(f["min_size"]),
        "connectivity": int(f["connectivity"]),
        "methods": methods,
        "weights": weights,
        "weight_source": weight_source,
        "oof": bool(f["oof"]),
        "oof_skipped_folds": {str(k): v for k, v in sorted(skipped_folds.items())},
    }
    save_json(info, out / "fusion.json")
    return _finish(f, out, rows, errors, methods, {"selected_folds": used, "weights": weights,
                                                    "weight_source": weight_source,
                                                    "oof_skipped_folds": sorted(skipped_folds)})


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


def evaluate_only(cfg: Mapping[str, Any], run: Mapping[str, Any], pred_dir: str | Path) -> dict[str, Any]:
    """Score existing masks in ``pred_dir`` against the ground truth of subjects.csv.

    Writes the same files as :func:`run` (subject_metrics.csv, summary.csv, errors.csv, figures, qc/)
    under ``<work>/08_fusion/evaluate_<name of pred_dir>/``.

    Subjects are split.csv's hold-out (plus train with ``oof``), or all of subjects.csv (set "all") if
    there is no split.csv. A missing, corrupt, non-binary or wrong-grid prediction is an error row for
    that subject and method.
    """
    f = _settings(cfg)
    work, data_root = Path(run["work_dir"]), Path(run["data_root"])
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise InputError(f"{pred_dir}: prediction directory not found")
    # A sub-folder, so scoring other masks never overwrites the stage's own fusion results.
    out = stage_dir(work, "fusion", create=True) / f"evaluate_{pred_dir.resolve().name}"
    subjects = load_subjects(work, data_root, oof=bool(f["oof"]), need_split=False)
    preds = find_predictions(pred_dir, [s.subject for s in subjects])
    found = {m for d in preds.values() for m in d}
    known = [m for m in list(ALL_METHODS) + [x + "_clean" for x in FUSED_METHODS] if m in found]
    methods = known + sorted(found - set(known))
    if not methods:
        log.warning("%s: no <subject>*.nii.gz prediction for any of %d subjects", pred_dir, len(subjects))
        methods = ["prediction"]
    rows: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    for s in tqdm(subjects, desc="08 evaluate", unit="subject"):
        try:
            t1, truth, img = _load_truth(s)
        except InputError as exc:
            log.error("%s: %s", s.subject, exc)
            errors.append({"subject": s.subject, "set": s.set, "error": str(exc)})
            rows += [_row(s, m, None, str(exc)) for m in methods]
            continue
        s.lesion_voxels = float(truth.sum())
        spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
        masks, results = {}, {}
        for m in methods:
            path = preds[s.subject].get(m)
            try:
                if path is None:
                    raise InputError(f"{pred_dir}/{s.subject}_{m}.nii.gz: prediction not found")
                pred, pred_img = read_mask(path)
                check_same_grid(img, pred_img, s.mask_path, path)
            except InputError as exc:
                log.error("%s: %s", s.subject, exc)
                errors.append({"subject": s.subject, "set": s.set, "error": str(exc)})
                rows.append(_row(s, m, None, str(exc)))
                continue
            masks[m] = pred
            results[m] = M.evaluate(pred, truth, spacing=spacing, connectivity=int(f["connectivity"]))
            rows.append(_row(s, m, results[m]))
        if f["qc"] and masks:
            _qc(f, out, s, t1, truth, masks, results, spacing)
    save_json({"evaluate_only": str(pred_dir), "methods": methods, "connectivity": int(f["connectivity"])},
              out / "fusion.json")
    return _finish(f, out, rows, errors, methods, {"methods": methods})


def main(argv: Sequence[str] | None = None) -> int:
    """``python 08_fusion/fuse.py``: argparse -> :func:`run`."""
    parser = stage_parser(
        description="Stage 08 — fuse the three plane models into 3D masks and score every hold-out subject "
        "(3D Dice, IoU, precision, recall, HD95, lesion-wise F1, volume and lesion-count differences).",
        data_root=True,
    )
    parser.add_argument("--model", help="model name under 07_train/ (default raxnet)")
    parser.add_argument("--ensemble", action="store_true", default=None,
                        help="average all folds per plane instead of the best inner-validation fold")
    parser.add_argument("--tta", action="store_true", default=None, help="left-right flip test-time augmentation")
    parser.add_argument("--threshold", type=float, help="probability threshold (default 0.5)")
    parser.add_argument("--min-size", type=int, help="add <fused>_clean variants without components < N voxels")
    parser.add_argument("--connectivity", type=int, choices=(6, 18, 26), help="3D connectivity (default 6)")
    parser.add_argument("--methods", help=f"comma-separated subset of {','.join(ALL_METHODS)}")
    parser.add_argument("--batch-size", type=int, help="slices per prediction batch")
    parser.add_argument("--oof", action="store_true", default=None,
                        help="also fuse the train subjects out-of-fold (fold_<k> models for fold k)")
    parser.add_argument("--save-probabilities", action="store_true", default=None,
                        help="write probabilities/<subject>_<plane>.nii.gz (float32)")
    parser.add_argument("--no-qc", dest="qc", action="store_false", default=None, help="skip the QC overlays")
    parser.add_argument("--evaluate-only", metavar="PRED_DIR",
                        help="score existing <subject>_<method>.nii.gz masks instead of predicting")
    args = parser.parse_args(argv)
    cfg, run_cfg = resolve(args)
    fusion = section(cfg, "fusion", DEFAULTS)
    override(fusion, **dict(model=args.model, ensemble=args.ensemble, tta=args.tta, threshold=args.threshold,
                 min_size=args.min_size, connectivity=args.connectivity, batch_size=args.batch_size,
                 oof=args.oof, save_probabilities=args.save_probabilities, qc=args.qc,
                 evaluate_only=args.evaluate_only,
                 methods=[m.strip() for m in args.methods.split(",")] if args.methods else None))
    run({**cfg, "fusion": fusion}, run_cfg)
    return 0
