"""Where trained plane models live, and which of them are used (stage 07 writes; 08, export, predict read).

Layout (the one place that knows it)::

    <work>/07_train/<run name>/<plane>/fold_<k>/model.keras, run.json, metrics.csv, ...

The run name is the model name for the default loss and ``<model>-<loss>`` otherwise (:func:`run_name`);
``fold_<k>`` is the model trained with outer fold ``k`` held out. Model choice never looks at a reported
metric: a plane's single model is the fold with the lowest *inner-validation* loss (``run.json``'s
``best_val_loss``), or all folds are averaged (:func:`select_models`).

Also the shared readers of the earlier stages' tables that these choices depend on:
``04_cross_validation/subject_folds.csv`` (:func:`read_subject_folds`) and the rule that turns a path in
``01_dataset/subjects.csv`` into a file (:func:`resolve_data_path`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from raxnet.config import stage_dir
from raxnet.errors import StageInputError
from raxnet.log import get_logger
from raxnet.planes import PLANES

log = get_logger(__name__)

#: The loss whose runs live in ``<model>/`` (other losses: ``<model>-<loss>/``).
DEFAULT_LOSS = "tversky_focal"
_FOLD_DIR = re.compile(r"^fold_(\d+)$")


# ------------------------------------------------------------------------------------------ layout


def run_name(model_name: str, loss_name: str = DEFAULT_LOSS) -> str:
    """Folder name of a (model, loss) run: ``model`` for the default loss, else ``model-loss``."""
    return model_name if loss_name == DEFAULT_LOSS else f"{model_name}-{loss_name}"


def train_dir(work_dir: str | Path, name: str) -> Path:
    """``<work>/07_train/<run name>``."""
    return stage_dir(work_dir, "train") / name


def fold_dir(run_folder: str | Path, plane: str, fold: int) -> Path:
    """``<run folder>/<plane>/fold_<k>``."""
    return Path(run_folder) / plane / f"fold_{int(fold)}"


def run_dir(work_dir: str | Path, model_name: str, loss_name: str, plane: str, fold: int) -> Path:
    """``<work>/07_train/<run name>/<plane>/fold_<k>``."""
    return fold_dir(train_dir(work_dir, run_name(model_name, loss_name)), plane, fold)


def model_path(work_dir: str | Path, model_name: str, plane: str, fold: int, loss_name: str = DEFAULT_LOSS) -> Path:
    """Path of the trained plane model that later stages load."""
    return run_dir(work_dir, model_name, loss_name, plane, fold) / "model.keras"


# ------------------------------------------------------------------------------------ fold models


@dataclass(frozen=True)
class FoldModel:
    """One trained plane model: ``<run folder>/<plane>/fold_<fold>/model.keras``."""

    plane: str
    fold: int
    path: Path
    best_val_loss: float  # NaN when run.json is missing or lacks it

    @property
    def folder(self) -> Path:
        return self.path.parent

    def run_info(self) -> dict[str, Any]:
        """The fold's ``run.json`` ({} when absent)."""
        path = self.folder / "run.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def check_file(self, work: Path, info: dict[str, Any] | None = None) -> None:
        """StageInputError if ``model.keras`` is not the file stage 07 wrote (``run.json``'s ``model_sha256``;
        not checked without one, e.g. runs from before it was recorded or models made by hand)."""
        from raxnet.record import sha256_file

        wrote = (self.run_info() if info is None else info).get("model_sha256")
        if wrote is not None and sha256_file(self.path) != wrote:
            raise StageInputError(
                f"{self.path}: not the model stage 07 wrote (SHA-256 differs from its run.json: replaced or "
                f"copied from another run); re-train it: 07_train/train.py --work-dir {work} --plane {self.plane} "
                f"--fold {self.fold} --force")


def find_plane_models(run_folder: Path, plane: str) -> list[FoldModel]:
    """All ``fold_<k>/model.keras`` of one plane, sorted by fold, with their inner-validation loss."""
    plane_dir = Path(run_folder) / plane
    if not plane_dir.is_dir():
        return []
    found = []
    for d in plane_dir.iterdir():
        m = _FOLD_DIR.match(d.name)
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


def fold_models(run_folder: Path, planes: Sequence[str]) -> dict[str, dict[int, FoldModel]]:
    """``{plane: {fold: FoldModel}}`` of every trained fold (for out-of-fold prediction)."""
    return {p: {m.fold: m for m in find_plane_models(run_folder, p)} for p in planes}


def select_models(run_folder: Path, planes: Sequence[str], ensemble: bool) -> dict[str, list[FoldModel]]:
    """Models per plane: all folds (``ensemble``) or the fold with the lowest inner-validation loss.

    The choice uses only ``run.json``'s ``best_val_loss`` (the inner validation split of training),
    never the outer-fold metrics that are reported. Ties go to the lower fold number.
    """
    chosen: dict[str, list[FoldModel]] = {}
    for plane in planes:
        models = find_plane_models(run_folder, plane)
        if not models:
            raise StageInputError(f"{Path(run_folder) / plane}: no fold_<k>/model.keras found (run stage 07)")
        if ensemble:
            chosen[plane] = models
            continue
        eligible = [m for m in models if math.isfinite(m.best_val_loss)]
        if not eligible:
            raise StageInputError(
                f"{Path(run_folder) / plane}: no fold has a finite best_val_loss in run.json; "
                "cannot pick a model (use --ensemble to average all folds)"
            )
        chosen[plane] = [min(eligible, key=lambda m: (m.best_val_loss, m.fold))]
    return chosen


def read_fold_dice(path: Path) -> float | None:
    """Outer-fold 3D Dice of one fold: the ``dice_3d_mean`` of the ``metrics.csv`` stage 07 writes.

    None when the file is absent, unreadable or has no finite ``dice_3d_mean``.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path)
    except Exception as exc:  # empty or malformed CSV
        log.warning("%s: unreadable (%s)", path, exc)
        return None
    if "dice_3d_mean" not in df.columns:
        return None
    values = pd.to_numeric(df["dice_3d_mean"], errors="coerce").to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None


def plane_weights(run_folder: Path, planes: Sequence[str] = PLANES) -> tuple[dict[str, float], str]:
    """Normalised fusion weights per plane from cross-validation, and where they came from.

    Each plane's weight is the mean over its folds of :func:`read_fold_dice`. If any plane has no
    usable value, or all are zero, the weights are equal (``source`` says so).
    """
    raw: dict[str, float] = {}
    for plane in planes:
        values = [read_fold_dice(m.folder / "metrics.csv") for m in find_plane_models(run_folder, plane)]
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


# ------------------------------------------------------------------------- earlier stages' tables


def read_subject_folds(work_dir: str | Path) -> pd.DataFrame:
    """Stage-04 ``subject_folds.csv`` (``subject`` as text, ``fold`` as int >= 1), checked by
    :data:`raxnet.tables.SUBJECT_FOLDS`; StageInputError when missing, malformed or empty."""
    from raxnet.tables import SUBJECT_FOLDS, read_table

    return read_table(stage_dir(work_dir, "folds") / "subject_folds.csv", SUBJECT_FOLDS)


def resolve_data_path(value: Any, data_root: str | Path) -> Path | None:
    """The file a ``subjects.csv`` path names; None for an empty cell.

    Absolute paths are used as they are. A relative path is taken under ``data_root`` when that file
    exists, else relative to the working directory when that exists, else under ``data_root`` (so a
    missing file is reported where it was expected).
    """
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value) == "":
        return None
    p = Path(str(value))
    if p.is_absolute():
        return p
    under_root = Path(data_root) / p
    if under_root.exists() or not p.exists():
        return under_root
    return p
